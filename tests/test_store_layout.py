"""Where the registry file's tables live: the registry declares its own (huref.registry.schema),
the scan its caches (huref.scan.store), in one SQLite file whose schema 1 is unchanged.

``EARLIER_SCHEMA`` is the registry file as huref wrote it when the registry declared every table
(the ``sqlite_master`` text of a registry holding bases and a cached scan): a file written then
must open without a write and keep its bases and caches, and a file written now must end with
the same tables.
"""

from __future__ import annotations

import ast
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import huref
from huref.registry.schema import REGISTRY_TABLES, blob_named
from huref.registry.store import DB_NAME, Base, Store
from huref.scan import cache
from huref.scan.store import SCAN_TABLES, scan_conn

EARLIER_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bases (
    name TEXT PRIMARY KEY,
    family TEXT,
    fingerprint TEXT NOT NULL,
    weights TEXT NOT NULL,
    source TEXT NOT NULL,
    architecture TEXT,
    n_layers INTEGER,
    added TEXT NOT NULL
);
CREATE TABLE independent_pairs (
    a TEXT NOT NULL REFERENCES bases(name) ON DELETE CASCADE,
    b TEXT NOT NULL REFERENCES bases(name) ON DELETE CASCADE,
    ics REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (a, b),
    CHECK (a < b)
);
CREATE TABLE file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE fingerprint_cache (
    content TEXT NOT NULL,
    settings TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    format TEXT NOT NULL,
    weights TEXT NOT NULL,
    seconds REAL,
    PRIMARY KEY (content, settings)
);
CREATE TABLE comparisons (
    fingerprint TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    ics REAL,
    log10_p REAL,
    shared_tokens INTEGER,
    error TEXT,
    detail TEXT,
    PRIMARY KEY (fingerprint, base_fingerprint, method)
);
CREATE TABLE failures (
    signature TEXT PRIMARY KEY,
    error TEXT NOT NULL
);
CREATE TABLE fpvec_results (
    content TEXT NOT NULL,
    commitment TEXT NOT NULL,
    method TEXT NOT NULL,
    fsr REAL,
    hits INTEGER,
    n INTEGER,
    near_miss_fsr REAL,
    error TEXT,
    PRIMARY KEY (content, commitment, method)
);
CREATE TABLE thumbnails (
    fingerprint TEXT NOT NULL,
    renderer TEXT NOT NULL,
    size INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (fingerprint, renderer, size)
);
CREATE TABLE sketches (
    fingerprint TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""
SHA = "ab" * 32  # a model's cached fingerprint file
BASE_SHA = "cd" * 32


def _tables(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _earlier_registry(home: Path) -> Path:
    """A registry file of schema 1 with two bases, a pair and one entry in every scan cache."""
    (home / "fingerprints").mkdir(parents=True)
    for sha in (SHA, BASE_SHA):
        (home / "fingerprints" / f"{sha}.safetensors").write_bytes(b"not read by these look-ups")
    db = home / DB_NAME
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(EARLIER_SCHEMA)
    conn.executescript(
        f"""
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO bases VALUES ('a', 'fa', '{BASE_SHA}', 'w1', 'fingerprint file a', 'llama', 4, 't');
        INSERT INTO bases VALUES ('b', 'fb', '{BASE_SHA}', 'w2', 'fingerprint file b', 'gpt2', 4, 't');
        INSERT INTO independent_pairs VALUES ('a', 'b', 1.5, 'family');
        INSERT INTO file_hashes VALUES ('/zoo/m/model.safetensors', 10, 20, 30, 40, 'h1');
        INSERT INTO fingerprint_cache VALUES ('content', 'settings', '{SHA}', 'safetensors', 'w3', 0.5);
        INSERT INTO comparisons VALUES ('{SHA}', '{BASE_SHA}', '{cache.METHOD}', 97.5, -12.0, 300, NULL, NULL);
        INSERT INTO failures VALUES ('sig', 'broken: why');
        INSERT INTO fpvec_results VALUES ('content', 'commit', '{cache.FPVEC_METHOD}', 1.0, 4, 4, 0.0, NULL);
        INSERT INTO thumbnails VALUES ('{SHA}', 'sketch', 64, x'89504e47');
        """
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def test_a_registry_written_earlier_opens_unchanged_with_its_bases_and_caches(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = _earlier_registry(home)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with Store(home, create=False) as s:
        assert [b.name for b in s.bases()] == ["a", "b"]
        assert [(p.a, p.b, p.ics) for p in s.pairs()] == [("a", "b", 1.5)]
        stat = cache.FileStat("/zoo/m/model.safetensors", "/zoo/m/model.safetensors", 10, 20, 40, "file", 30)
        assert cache.known_hashes(s, (stat,)) == {"/zoo/m/model.safetensors": "h1"}
        assert cache.cached_fingerprint(s, "content", "settings") == cache.CachedFingerprint(
            SHA, "safetensors", "w3"
        )
        (cmp,) = cache.stored_comparisons(s, SHA).values()
        assert (cmp.base_fingerprint, cmp.ics, cmp.log10_p, cmp.shared_tokens) == (BASE_SHA, 97.5, -12.0, 300)
        assert cache.known_failure(s, "sig") == "broken: why"
        assert cache.stored_fpvec(s, "content")["commit"].fsr == 1.0
        assert cache.thumbnail(s, SHA, "sketch", 64) == b"\x89PNG"
        assert cache.count_fingerprints(s) == 1
    wal = db.with_name(DB_NAME + "-wal")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # opened and read without a write
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_registry_written_now_ends_with_the_tables_written_earlier(tmp_path: Path) -> None:
    """Created by a process that scans (this one imports huref.scan.store): every table at once.
    Created by one that only knows the registry (a subprocess that never imports the scan): the
    registry's tables, and the scan's added by the scan's first statement."""
    earlier = tmp_path / "earlier.sqlite"
    conn = sqlite3.connect(earlier)
    conn.executescript(EARLIER_SCHEMA)
    conn.close()
    with Store(tmp_path / "scanning"):
        pass
    assert _tables(tmp_path / "scanning" / DB_NAME) == _tables(earlier)  # the same text, column for column
    code = (
        "import sys; from huref.registry.store import Store; Store(sys.argv[1]).close(); "
        "print(sorted(m for m in sys.modules if m.startswith('huref.scan')))"
    )
    home = tmp_path / "registry-only"
    out = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    own = set(_tables(home / DB_NAME))
    assert own == {"meta", "bases", "independent_pairs", "sketches"}
    with Store(home) as s:
        assert cache.count_fingerprints(s) == 0
    assert own | SCAN_TABLES.names == set(_tables(earlier))
    assert _tables(home / DB_NAME) == _tables(earlier)


def _base(name: str, sha: str) -> Base:
    return Base(name, None, sha, "w-" + name, "test", "llama", 4, "t")


def test_removing_a_base_keeps_a_fingerprint_file_the_scan_cache_names(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as s:
        shared, own = s.put_blob(b"shared file"), s.put_blob(b"own file")
        with s.transaction():
            for b in (_base("a", shared), _base("b", own), _base("c", shared)):
                s.insert_base(b)
            scan_conn(s).execute(
                "INSERT INTO fingerprint_cache VALUES ('content', 'settings', ?, 'safetensors', 'w', 0.0)",
                (shared,),
            )
        s.remove_base("a")
        s.remove_base("b")
        assert s.blob_path(shared).is_file()  # named by the cache (and by base c)
        assert not s.blob_path(own).exists()  # named by nothing any more
        s.remove_base("c")
        assert s.blob_path(shared).is_file()  # still named by the cache
        with s.transaction():
            s.conn.execute("DELETE FROM fingerprint_cache")
            s.drop_unreferenced_blob(shared)
        assert not s.blob_path(shared).exists()


def test_a_registry_that_does_not_know_a_table_keeps_every_file_it_may_name(tmp_path: Path) -> None:
    """A process that never imported the scan does not know its tables, yet must not delete a file
    a cache row names: there, any ``fingerprint`` column of an unknown table counts (a file is kept
    when in doubt); with the scan's tables known, only the column they declare."""
    with Store(tmp_path / "home") as s:
        conn = scan_conn(s)
        conn.execute(f"INSERT INTO thumbnails VALUES ('{SHA}', 'sketch', 64, x'00')")
        assert blob_named(conn, SHA, [REGISTRY_TABLES])  # thumbnails.fingerprint, table unknown
        assert not blob_named(conn, SHA, [REGISTRY_TABLES, SCAN_TABLES])  # a thumbnail keeps no file
        conn.execute(f"INSERT INTO fingerprint_cache VALUES ('c', 's', '{SHA}', 'safetensors', 'w', 0.0)")
        assert blob_named(conn, SHA, [REGISTRY_TABLES, SCAN_TABLES])
        assert not blob_named(conn, BASE_SHA, [REGISTRY_TABLES])
        conn.execute(f"INSERT INTO sketches VALUES ('{BASE_SHA}', 'v', 1, x'00')")
        assert not blob_named(conn, BASE_SHA, [REGISTRY_TABLES])  # a sketch does not keep its file


def test_the_registry_does_not_import_the_scan() -> None:
    """Imports flow one way: the scan uses the registry, and the registry names no scan module
    (not even inside a function)."""
    offenders = []
    for p in sorted((Path(huref.__file__).parent / "registry").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{p.name}: {n}" for n in names if n.startswith("huref.scan")]
    assert offenders == []
