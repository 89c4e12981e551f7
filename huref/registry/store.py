"""The registry of known bases: one SQLite file and a folder of fingerprint files under $HUREF_HOME.

Layout (``$HUREF_HOME``, default ``~/.huref``)::

    registry.sqlite                       bases, independent pairs, and the scan caches
    fingerprints/<sha256>.safetensors     fingerprint files, named by the SHA-256 of their bytes

The database runs in WAL mode; every write happens in one ``BEGIN IMMEDIATE`` transaction, so a
process killed at any instant (even by SIGKILL) leaves the last committed state behind and a
concurrent reader never sees half a write. Fingerprint files are written before the row that names
them is committed and checked against their name whenever read (``huref.registry.blobs``); a kill
in between leaves at worst an unreferenced file, which is harmless.

Opening a registry whose schema is current writes nothing and takes no lock, so a registry that is
read-only for this user (a shared one) can be listed and audited against; writing commands then
fail with one line and exit code 3. Every sqlite3 error is one line (see ``huref.registry.db``).

Schema (version 1; the tables are declared in ``huref.registry.schema``)::

    meta(key PRIMARY KEY, value)                        schema version
    bases(name PRIMARY KEY, family, fingerprint, weights, source, architecture, n_layers, added)
        fingerprint: SHA-256 of the fingerprint file; weights: digest of the weight-file SHA-256s
    independent_pairs(a, b, ics, reason, PRIMARY KEY(a, b), CHECK(a < b))
        robust ICS of two bases declared independent; reason 'family' (different --family) or
        'declared' (``huref registry mark-independent``); these ICS values are the Z-score null
    sketches(fingerprint PRIMARY KEY, version, size, data)       per-base (and per-model) sketches

Other parts of huref keep their tables in the same file, declared where they are used (the scan's
caches: ``huref.scan.store``) and registered in ``huref.registry.schema.PARTS``; see there when
they are created.

``sketches`` (``huref.registry.sketch``) came after the first release of schema 1: it is optional.
A registry without it opens as before (a read-only one stays readable); the table is created by
the first write that needs it, and a base registered before gets its sketch computed from its
fingerprint file the first time a scan needs it (``Store.base_sketches``). ``size`` is the size of
the fingerprint file the sketch was computed from: a scan checks it for every base before any work
without reading the files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from huref.errors import RegistryError
from huref.invariants.calibration import NullModel, null_from_values
from huref.registry.blobs import BlobError, BlobFiles
from huref.registry.db import OS_REFUSED_EXIT, Connection, StoreError, db_error, open_database
from huref.registry.records import Base, Pair, weights_digest
from huref.registry.schema import (
    PARTS,
    REGISTRY_TABLES,
    SCHEMA_VERSION,
    SKETCH_SCHEMA,
    SKETCH_TABLE,
    Tables,
    blob_named,
    migrate_registry,
    registry_current,
    table_names,
)

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DB_NAME",
    "MIN_NULL_PAIRS",
    "SCHEMA_VERSION",
    "Base",
    "BlobError",
    "Pair",
    "Store",
    "StoreError",
    "Tables",
    "default_null",
    "huref_home",
    "weights_digest",
]

DB_NAME = "registry.sqlite"
BLOB_DIR = "fingerprints"
MIN_NULL_PAIRS = 5  # fewer independent pairs than this: the built-in null is used instead
BUSY_TIMEOUT_MS = 60_000


def huref_home() -> Path:
    """``$HUREF_HOME``, or ``~/.huref`` when it is unset or empty."""
    env = os.environ.get("HUREF_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".huref"


class Store(BlobFiles):
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
        self._tables: list[Tables] = [REGISTRY_TABLES]  # the parts whose tables are current here
        try:
            if not registry_current(self.conn, self.db_path, self.read_only):
                self.conn.execute("PRAGMA journal_mode = WAL")
                with self.transaction():
                    migrate_registry(self.conn, self.db_path)
            # WAL + NORMAL: a killed process loses nothing committed (only a power cut can lose the last commits)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._open_parts()
        except BaseException:
            self.conn.close()
            raise
        self._sweep_temporaries()

    def _blocked(self) -> list[Path]:
        """The paths this user cannot write that a write to the registry needs."""
        wal = self.db_path.with_name(DB_NAME + "-wal")
        return [
            p
            for p, need in ((self.db_path, True), (self.blob_dir, True), (self.home, not wal.exists()))
            if need and not os.access(p, os.W_OK)
        ]

    def check_writable(self, why: str = "") -> None:
        """Refuse (one line, exit code 3) before any work when this user cannot write the registry."""
        blocked = self._blocked()
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

    def _open_parts(self) -> None:
        """The tables of every part this process knows (``PARTS``): present ones are noted, missing
        ones created when this user can write the registry; a read-only registry is left as it
        is (the part's first statement then refuses with one line)."""
        for _, tables in PARTS.items():
            if tables not in self._tables and (
                tables.current(self.conn) or not (self.read_only or self._blocked())
            ):
                self.ensure_tables(tables)

    def ensure_tables(self, tables: Tables, why: str = "") -> Connection:
        """The connection, once ``tables`` (another part's, kept in this file) are present and
        current: created or rebuilt on first use, in a transaction of their own unless one is
        open. A database that already holds them is not written (a read-only one stays
        readable); one that needs them is refused with :meth:`check_writable` and ``why``."""
        if tables not in self._tables:
            if not tables.current(self.conn):
                self.check_writable(why)
                own = not self.conn.in_transaction
                with self.transaction() if own else contextlib.nullcontext(self.conn):
                    tables.create(self.conn)
            self._tables.append(tables)
        return self.conn

    # -- sketches (huref.registry.sketch) ---------------------------------------------------------

    def _has_sketches(self) -> bool:
        return SKETCH_TABLE in table_names(self.conn)

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
            self.conn.execute(SKETCH_SCHEMA)
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
        """Delete a fingerprint file no base and no other row names any more (``blob_named``:
        the blob columns of every part whose tables are open here, and any ``fingerprint``
        column of the others).

        Inside a write transaction, as every ``put_blob`` with the row naming it: no other process
        can then store the same file and name it between this check and the deletion."""
        if not blob_named(self.conn, sha, self._tables):
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
