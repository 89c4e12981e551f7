"""The registry of known bases: one SQLite file and a folder of fingerprint files under $HUREF_HOME.

Layout (``$HUREF_HOME``, default ``~/.huref``)::

    registry.sqlite                       bases, independent pairs, and the scan caches
    fingerprints/<sha256>.safetensors     fingerprint files, named by the SHA-256 of their bytes

The database runs in WAL mode; every write happens in one ``BEGIN IMMEDIATE`` transaction, so a
process killed at any instant (even by SIGKILL) leaves the last committed state behind and a
concurrent reader never sees half a write. Fingerprint files are written to a temporary name and
renamed before the row that names them is committed: a row never points at a missing or partial
file (a kill in between leaves at worst an unreferenced file, which is harmless). A fingerprint file
is checked against its name (SHA-256) every time it is read, and rewritten by ``put_blob`` whenever
its bytes are not the ones its name promises: a damaged or swapped file is refused with the base it
belongs to and the command that repairs it, never read as that base's evidence.

Opening a registry whose schema is current writes nothing and takes no lock, so a registry that is
read-only for this user (a shared one) can be listed and audited against; writing commands then
fail with one line and exit code 3. Every sqlite3 error is one line (see ``huref.registry.db``).

Schema (version 1)::

    meta(key PRIMARY KEY, value)                        schema version
    bases(name PRIMARY KEY, family, fingerprint, weights, source, architecture, n_layers, added)
        fingerprint: SHA-256 of the fingerprint file; weights: digest of the weight-file SHA-256s
    independent_pairs(a, b, ics, reason, PRIMARY KEY(a, b), CHECK(a < b))
        robust ICS of two bases declared independent; reason 'family' (different --family) or
        'declared' (``huref registry mark-independent``); these ICS values are the Z-score null
    file_hashes(path PRIMARY KEY, size, mtime_ns, ctime_ns, inode, sha256) scan cache
    fingerprint_cache(content, settings, fingerprint, format, weights, seconds,
                      PRIMARY KEY(content, settings))                      scan cache
    comparisons(fingerprint, base_fingerprint, method, ics, log10_p, shared_tokens, error, detail,
                PRIMARY KEY(fingerprint, base_fingerprint, method))        scan cache
    failures(signature PRIMARY KEY, error)                                 scan cache: broken models
    fpvec_results(content, commitment, method, fsr, hits, n, near_miss_fsr, error,
                  PRIMARY KEY(content, commitment, method))                scan cache (--keys)
    thumbnails(fingerprint, renderer, size, png, PRIMARY KEY(fingerprint, renderer, size))
    sketches(fingerprint PRIMARY KEY, version, size, data)       per-base (and per-model) sketches

``sketches`` (``huref.registry.sketch``) came after the first release of schema 1: it is optional.
A registry without it opens as before (a read-only one stays readable); the table is created by
the first write that needs it, and a base registered before gets its sketch computed from its
fingerprint file the first time a scan needs it (``Store.base_sketches``). ``size`` is the size of
the fingerprint file the sketch was computed from: a scan checks it for every base before any work
without reading the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.errors import FingerprintError, RegistryError
from huref.invariants.calibration import NullModel, null_from_values
from huref.registry.db import OS_REFUSED_EXIT, Connection, StoreError, db_error, open_database

if TYPE_CHECKING:  # fingerprints are tensors: loaded (with torch) only when a command needs one
    from huref.invariants.fingerprint import Fingerprint

DB_NAME = "registry.sqlite"
BLOB_DIR = "fingerprints"
SCHEMA_VERSION = "1"
MIN_NULL_PAIRS = 5  # fewer independent pairs than this: the built-in null is used instead
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bases (
    name TEXT PRIMARY KEY,
    family TEXT,
    fingerprint TEXT NOT NULL,
    weights TEXT NOT NULL,
    source TEXT NOT NULL,
    architecture TEXT,
    n_layers INTEGER,
    added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS independent_pairs (
    a TEXT NOT NULL REFERENCES bases(name) ON DELETE CASCADE,
    b TEXT NOT NULL REFERENCES bases(name) ON DELETE CASCADE,
    ics REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (a, b),
    CHECK (a < b)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprint_cache (
    content TEXT NOT NULL,
    settings TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    format TEXT NOT NULL,
    weights TEXT NOT NULL,
    seconds REAL,
    PRIMARY KEY (content, settings)
);
CREATE TABLE IF NOT EXISTS comparisons (
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
CREATE TABLE IF NOT EXISTS failures (
    signature TEXT PRIMARY KEY,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fpvec_results (
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
CREATE TABLE IF NOT EXISTS thumbnails (
    fingerprint TEXT NOT NULL,
    renderer TEXT NOT NULL,
    size INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (fingerprint, renderer, size)
);
"""


_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))

# optional (see the notes above): not in _TABLES, so a registry without it needs no migration
_SKETCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS sketches (
    fingerprint TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
)
"""


def huref_home() -> Path:
    """``$HUREF_HOME``, or ``~/.huref`` when it is unset or empty."""
    env = os.environ.get("HUREF_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".huref"


@dataclass(frozen=True)
class Base:
    name: str
    family: str | None
    fingerprint: str  # SHA-256 of the fingerprint file
    weights: str  # digest of the weight-file SHA-256s: identity of the weights
    source: str
    architecture: str | None
    n_layers: int | None
    added: str


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    ics: float
    reason: str  # 'family' | 'declared'


def weights_digest(sha256s: dict[str, str] | list[str]) -> str:
    """One digest of a set of weight-file hashes (file names do not matter, contents do)."""
    values = sorted(sha256s.values() if isinstance(sha256s, dict) else sha256s)
    return hashlib.sha256("\n".join(values).encode()).hexdigest() if values else ""


class BlobError(StoreError):
    """A stored fingerprint file is missing, unreadable, damaged, or not the file its name promises."""

    def __init__(self, path: Path, why: str, exit_code: int = 2) -> None:
        super().__init__(f"{path}: {why}", exit_code)
        self.path, self.why = path, why


def _repair_hint(b: Base) -> str:
    """The commands that fix an unusable base: re-add it from its source, or remove it."""
    src = "SOURCE"
    for prefix in ("fingerprint file ", "checkpoint "):
        if b.source.startswith(prefix) and Path(b.source[len(prefix) :]).exists():
            src = shlex.quote(b.source[len(prefix) :])
    name = shlex.quote(b.name)
    return f"'huref registry add {src} --name {name} --replace' or 'huref registry remove {name}'"


def _unusable(bad: list[tuple[Base, BlobError]], purpose: str) -> StoreError:
    """One line naming every unusable base, with ``purpose`` and the commands that fix it."""
    code = OS_REFUSED_EXIT if all(err.exit_code == OS_REFUSED_EXIT for _, err in bad) else 2
    if len(bad) == 1:
        one, err = bad[0]
        return StoreError(
            f"registered base {one.name!r} is unusable: {err}; {purpose}fix: {_repair_hint(one)}", code
        )
    listed = "; ".join(f"{x.name!r} ({err})" for x, err in bad)
    return StoreError(
        f"{len(bad)} registered bases are unusable: {listed}; {purpose}fix each with "
        "'huref registry add SOURCE --name NAME --replace' or 'huref registry remove NAME'",
        code,
    )


class Store:
    """An open registry. Use as a context manager, or call ``close()``."""

    conn: Connection

    def __init__(self, home: Path | None = None, create: bool = True) -> None:
        self.home = Path(home) if home is not None else huref_home()
        self.db_path = self.home / DB_NAME
        self.blob_dir = self.home / BLOB_DIR
        exists = self.db_path.is_file()
        if not exists and not create:
            raise RegistryError(f"no registry at {self.home}; add bases with 'huref registry add'")
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # an existing registry in a read-only folder is still readable
            if not exists:
                raise StoreError(
                    f"{self.home}: cannot create the registry ({e.strerror or e})", OS_REFUSED_EXIT
                ) from None
        self.conn, self.read_only = open_database(self.db_path, "rwc", BUSY_TIMEOUT_MS)
        try:
            if not self._current():
                self.conn.execute("PRAGMA journal_mode = WAL")
                with self.transaction():
                    self._migrate()
            # WAL + NORMAL: a killed process loses nothing committed (only a power cut can lose the last commits)
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self.conn.close()
            raise
        self._sweep_temporaries()

    def _current(self) -> bool:
        """True when the database needs no migration: then opening it writes nothing."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = None
        if "meta" in tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        self._check_version(row)
        if row is None or not _TABLES.issubset(tables):
            return False
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(file_hashes)")}
        if self.read_only:  # opened as immutable, which reports no WAL whatever the file says
            return "ctime_ns" in columns
        return "ctime_ns" in columns and self.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def _check_version(self, row: tuple[str] | None) -> None:
        if row is not None and row[0] != SCHEMA_VERSION:
            raise RegistryError(
                f"{self.db_path}: registry schema {row[0]!r}, this huref reads {SCHEMA_VERSION!r}; "
                "use a matching huref or a new HUREF_HOME"
            )

    def check_writable(self, why: str = "") -> None:
        """Refuse (one line, exit code 3) before any work when this user cannot write the registry."""
        wal = self.db_path.with_name(DB_NAME + "-wal")
        blocked = [
            p
            for p, need in ((self.db_path, True), (self.blob_dir, True), (self.home, not wal.exists()))
            if need and not os.access(p, os.W_OK)
        ]
        if self.read_only or blocked:
            where = blocked[0] if blocked else self.home
            raise StoreError(
                f"{where}: the registry is read-only here; this command needs write access to "
                f"{self.home}{why} (reading commands such as 'huref registry list' and 'huref audit "
                "--registry' do not)",
                OS_REFUSED_EXIT,
            )

    def _sweep_temporaries(self) -> None:
        """Remove fingerprint files a killed writer left half-written (older than a day: never a live one)."""
        cutoff = time.time() - 86400
        for p in self.blob_dir.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    def _migrate(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables:
            self._check_version(self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone())
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(file_hashes)")}
        if columns and "ctime_ns" not in columns:  # a cache written before ctime was in the key: rebuilt
            self.conn.execute("DROP TABLE file_hashes")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                self.conn.execute(stmt)
        self.conn.execute(_SKETCH_SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))

    # -- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at BEGIN (IMMEDIATE), committed or rolled back as a whole.

        A registry another process keeps locked past the busy timeout, or one that cannot be
        written (disk full, read-only), is a StoreError, one line, like every registry problem."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:
                with contextlib.suppress(StoreError):  # the first error is the one to tell
                    self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise db_error(self.db_path, e, BUSY_TIMEOUT_MS) from None
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    # -- fingerprint files ----------------------------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        return self.blob_dir / f"{sha}.safetensors"

    def blob_intact(self, sha: str) -> bool:
        """Whether the file stored under ``sha`` exists and its bytes hash to ``sha``."""
        try:
            return hashlib.sha256(self.blob_path(sha).read_bytes()).hexdigest() == sha
        except OSError:
            return False

    def put_blob(self, data: bytes) -> str:
        """Store fingerprint-file bytes under their SHA-256 (atomically); returns the hash.

        A file already there is kept only when its bytes are these: a damaged or swapped one of
        any size is replaced (by rename, so a reader sees the old file or the new, never a mix)."""
        from huref.checkpoint.atomic import atomic_file

        sha = hashlib.sha256(data).hexdigest()
        dest = self.blob_path(sha)
        if not self.blob_intact(sha):
            try:
                with atomic_file(dest) as tmp, open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise StoreError(
                    f"{dest}: cannot write the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
                ) from None
        return sha

    def load_blob(self, sha: str) -> Fingerprint:
        """The fingerprint stored under ``sha``: its bytes must hash to ``sha`` and its seal verify.

        The hash check costs one SHA-256 of a file of a few MB; without it a file swapped for
        another sealed fingerprint would be read as the evidence of the base that names it."""
        from huref.invariants.fpfile import load_fingerprint

        path = self.blob_path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(path, "fingerprint file missing") from None
        except OSError as e:
            raise BlobError(
                path, f"cannot read the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise BlobError(
                path,
                f"fingerprint file damaged or replaced (its SHA-256 is {actual[:12]}..., "
                f"not the {sha[:12]}... it is stored under)",
            )
        try:
            return load_fingerprint(path)
        except FingerprintError as e:
            why = str(e)
            raise BlobError(path, why.removeprefix(f"{path}: ")) from None

    def load_base(self, b: Base, purpose: str = "") -> Fingerprint:
        """A registered base's fingerprint; an unusable file is one line naming the base and the fix."""
        return self.load_bases([b], purpose)[b.name]

    def load_bases(self, bases: Iterable[Base], purpose: str = "") -> dict[str, Fingerprint]:
        """name -> fingerprint of every base; every unusable one is named in one line, with
        ``purpose`` (why the command stops, ending in '; ') and the commands that fix it."""
        out: dict[str, Fingerprint] = {}
        by_sha: dict[str, Fingerprint] = {}
        bad: list[tuple[Base, BlobError]] = []
        for b in bases:
            try:
                if b.fingerprint not in by_sha:
                    by_sha[b.fingerprint] = self.load_blob(b.fingerprint)
                out[b.name] = by_sha[b.fingerprint]
            except BlobError as e:
                bad.append((b, e))
        if bad:
            raise _unusable(bad, purpose)
        return out

    def check_blob_sizes(self, bases: Iterable[Base], sizes: dict[str, int], purpose: str = "") -> None:
        """Every base's fingerprint file is present with the size recorded with its sketch (a stat
        per base, no read): a missing or truncated file stops a command before any work."""
        bad: list[tuple[Base, BlobError]] = []
        for b in bases:
            path = self.blob_path(b.fingerprint)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                bad.append((b, BlobError(path, "fingerprint file missing")))
                continue
            except OSError as e:
                bad.append(
                    (
                        b,
                        BlobError(
                            path, f"cannot read the fingerprint file ({e.strerror or e})", OS_REFUSED_EXIT
                        ),
                    )
                )
                continue
            want = sizes.get(b.fingerprint)
            if want is not None and size != want:
                bad.append(
                    (b, BlobError(path, f"fingerprint file damaged or replaced ({size} bytes, not {want})"))
                )
        if bad:
            raise _unusable(bad, purpose)

    # -- sketches (huref.registry.sketch) ---------------------------------------------------------

    def _has_sketches(self) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sketches'"
            ).fetchone()
            is not None
        )

    def sketch_rows(self, shas: Iterable[str]) -> dict[str, tuple[str, int, bytes]]:
        """fingerprint hash -> (version, file size, sketch bytes) of the stored sketches."""
        if not self._has_sketches():
            return {}
        out: dict[str, tuple[str, int, bytes]] = {}
        want = list(dict.fromkeys(shas))
        for i in range(0, len(want), 500):  # SQLite's bound-parameter limit
            part = want[i : i + 500]
            rows = self.conn.execute(
                f"SELECT fingerprint, version, size, data FROM sketches WHERE fingerprint IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            out.update({r[0]: (str(r[1]), int(r[2]), bytes(r[3])) for r in rows})
        return out

    def put_sketch(self, sha: str, version: str, size: int, data: bytes) -> None:
        """Store a sketch (inside a transaction, or in one of its own); creates the table if needed."""
        own = not self.conn.in_transaction
        ctx = self.transaction() if own else contextlib.nullcontext(self.conn)
        with ctx:
            self.conn.execute(_SKETCH_SCHEMA)
            self.conn.execute(
                "INSERT OR REPLACE INTO sketches(fingerprint, version, size, data) VALUES (?, ?, ?, ?)",
                (sha, version, int(size), data),
            )

    def base_sketches(self, bases: Iterable[Base], purpose: str = "") -> dict[str, Any]:
        """fingerprint hash -> Sketch of every base; a base without a current sketch (registered
        before sketches, or with another sketch version) has it computed from its file and stored,
        once. Bases whose fingerprint holds no robust terms get none."""
        from huref.registry import sketch as sk

        bases = list(bases)
        rows = self.sketch_rows(b.fingerprint for b in bases)
        out: dict[str, Any] = {}
        todo: list[Base] = []
        for b in bases:
            row = rows.get(b.fingerprint)
            got = sk.from_bytes(row[2]) if row is not None and row[0] == sk.SKETCH_VERSION else None
            if got is None:
                todo.append(b)
            else:
                out[b.fingerprint] = got
        if todo:
            fps = self.load_bases(todo, purpose)
            for b in todo:
                fp = fps[b.name]
                if fp.robust is None or b.fingerprint in out:
                    continue
                out[b.fingerprint] = s = sk.compute_sketch(fp)
                if not self.read_only:
                    self.put_sketch(
                        b.fingerprint, s.version, self.blob_path(b.fingerprint).stat().st_size, sk.to_bytes(s)
                    )
        return out

    def sketch_sizes(self, shas: Iterable[str]) -> dict[str, int]:
        return {k: v[1] for k, v in self.sketch_rows(shas).items()}

    def drop_unreferenced_blob(self, sha: str) -> None:
        """Delete a fingerprint file no base and no cache row names any more.

        Inside a write transaction, as every ``put_blob`` with the row naming it: no other process
        can then store the same file and name it between this check and the deletion."""
        used = self.conn.execute(
            "SELECT 1 FROM bases WHERE fingerprint = ?1 UNION ALL SELECT 1 FROM fingerprint_cache WHERE fingerprint = ?1",
            (sha,),
        ).fetchone()
        if used is None:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(sha).unlink()

    # -- bases ----------------------------------------------------------------------------------

    def bases(self) -> list[Base]:
        rows = self.conn.execute(
            "SELECT name, family, fingerprint, weights, source, architecture, n_layers, added FROM bases ORDER BY name"
        ).fetchall()
        return [Base(*r) for r in rows]

    def base(self, name: str) -> Base | None:
        r = self.conn.execute(
            "SELECT name, family, fingerprint, weights, source, architecture, n_layers, added FROM bases WHERE name = ?",
            (name,),
        ).fetchone()
        return Base(*r) if r else None

    def base_ignoring_case(self, name: str) -> Base | None:
        """A base whose name equals ``name`` but for case (names are ASCII, which NOCASE folds)."""
        r = self.conn.execute(
            "SELECT name, family, fingerprint, weights, source, architecture, n_layers, added FROM bases "
            "WHERE name = ? COLLATE NOCASE AND name != ? ORDER BY name LIMIT 1",
            (name, name),
        ).fetchone()
        return Base(*r) if r else None

    def insert_base(self, b: Base) -> None:
        """Insert (inside a transaction); an existing base of that name is replaced with its pairs."""
        self.conn.execute("DELETE FROM bases WHERE name = ?", (b.name,))
        self.conn.execute(
            "INSERT INTO bases(name, family, fingerprint, weights, source, architecture, n_layers, added) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (b.name, b.family, b.fingerprint, b.weights, b.source, b.architecture, b.n_layers, b.added),
        )

    def remove_base(self, name: str) -> Base:
        with self.transaction():
            b = self.require(name)
            self.conn.execute("DELETE FROM bases WHERE name = ?", (name,))  # pairs go by ON DELETE CASCADE
            self.drop_unreferenced_blob(b.fingerprint)
        return b

    def _known(self) -> str:
        names = [b.name for b in self.bases()]
        return "known: " + ", ".join(names) if names else "the registry is empty"

    def require(self, name: str) -> Base:
        b = self.base(name)
        if b is None:
            import difflib

            same = self.base_ignoring_case(name)
            close = (
                [same.name] if same else difflib.get_close_matches(name, [x.name for x in self.bases()], n=1)
            )
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"no base named {name!r} in {self.home}{hint}; {self._known()}")
        return b

    # -- independent pairs and the null -------------------------------------------------------

    def pairs(self) -> list[Pair]:
        rows = self.conn.execute("SELECT a, b, ics, reason FROM independent_pairs ORDER BY a, b").fetchall()
        return [Pair(*r) for r in rows]

    def set_pair(self, a: str, b: str, ics: float, reason: str) -> None:
        """Record (inside a transaction) that bases a and b are independent, with their robust ICS."""
        a, b = sorted((a, b))
        self.conn.execute(
            "INSERT INTO independent_pairs(a, b, ics, reason) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(a, b) DO UPDATE SET ics = excluded.ics, reason = excluded.reason",
            (a, b, float(ics), reason),
        )

    def remove_pair(self, a: str, b: str) -> bool:
        a, b = sorted((a, b))
        with self.transaction():
            cur = self.conn.execute("DELETE FROM independent_pairs WHERE a = ? AND b = ?", (a, b))
        return cur.rowcount > 0

    def null(self) -> NullModel | None:
        return _null_from_conn(self.conn, self.home)


def _null_from_conn(conn: Connection, home: Path) -> NullModel | None:
    values = [float(r[0]) for r in conn.execute("SELECT ics FROM independent_pairs ORDER BY a, b").fetchall()]
    if len(values) < MIN_NULL_PAIRS:
        return None
    return null_from_values(values, f"registry: {len(values)} independent base pairs ({home})")


def default_null() -> NullModel | None:
    """The Z-score null from the default registry's independent pairs, or None.

    None when ``$HUREF_HOME`` holds no registry (it is never created for this) or when fewer than
    ``MIN_NULL_PAIRS`` pairs are recorded; callers then use the built-in null.
    """
    home = huref_home()
    db = home / DB_NAME
    if not db.is_file():
        return None
    conn, _ = open_database(db, "ro", BUSY_TIMEOUT_MS)
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'independent_pairs'"
        )
        return _null_from_conn(conn, home) if found.fetchone() else None
    finally:
        conn.close()
