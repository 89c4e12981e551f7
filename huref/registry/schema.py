"""The tables of the registry database, declared as data, and how a database is brought up to date.

One SQLite file (``registry.sqlite``) holds the registry's own tables and the tables other parts
of huref keep beside them (the scan's caches, declared in ``huref.scan.store``), so that one
transaction covers a base and everything derived from it. Each part declares its tables as a
:class:`Tables` and registers it in :data:`PARTS` when its module is imported; the registry never
imports the parts that use it. A registry opened by a process that knows a part creates that
part's missing tables when it can write (as a new registry has always been created with all its
tables), and a part hands its :class:`Tables` to ``Store.ensure_tables`` before its first
statement, whichever process created the file.

Schema version 1 (``meta.schema``) covers every part's tables: a part adds tables with ``CREATE
TABLE IF NOT EXISTS`` and never alters one's columns (a cache keyed by too little is dropped and
created anew), so that a database written by any huref of schema 1 opens in any other. A database whose tables are all present (and in WAL mode) is opened
without a single write, which is what lets a read-only registry be read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from huref.errors import RegistryError
from huref.plugins import Registry
from huref.registry.db import Connection

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Tables:
    """One part's tables in the registry database.

    ``ddl``: ``CREATE TABLE IF NOT EXISTS`` statements, separated by ';'. ``blob_columns``:
    (table, column) pairs whose values name fingerprint files (``fingerprints/<sha256>``): a file
    one of them names is never deleted. ``rebuild_without``: table -> column; a table of that name
    without the column is a cache keyed by too little, dropped and created anew."""

    owner: str
    ddl: str
    blob_columns: tuple[tuple[str, str], ...] = ()
    rebuild_without: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", self.ddl))

    def current(self, conn: Connection) -> bool:
        """Whether every table is present with its required columns (checked without a write)."""
        if not self.names <= table_names(conn):
            return False
        return all(col in column_names(conn, t) for t, col in self.rebuild_without.items())

    def create(self, conn: Connection) -> None:
        """Bring the tables up to date (inside a write transaction)."""
        for t, col in self.rebuild_without.items():
            cols = column_names(conn, t)
            if cols and col not in cols:
                conn.execute(f"DROP TABLE {quoted(t)}")
        for stmt in self.ddl.split(";"):
            if stmt.strip():
                conn.execute(stmt)


PARTS: Registry[Tables] = Registry("registry-file tables")  # owner -> its tables

REGISTRY_TABLES = Tables(
    "registry",
    """
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
""",
    blob_columns=(("bases", "fingerprint"),),
)
PARTS.add(REGISTRY_TABLES.owner, REGISTRY_TABLES)

# optional (see huref.registry.store): not in REGISTRY_TABLES, so a registry without it needs no
# migration; created by the first write that needs it
SKETCH_TABLE = "sketches"
SKETCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS sketches (
    fingerprint TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
)
"""


def table_names(conn: Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def quoted(name: str) -> str:
    """An SQL identifier, quoted (table names are read back from the file, which anyone can edit)."""
    return '"' + name.replace('"', '""') + '"'


def column_names(conn: Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({quoted(table)})")}


def schema_version(conn: Connection, db_path: object) -> str | None:
    """The database's schema version (None when it has none yet); another version is refused."""
    if "meta" not in table_names(conn):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is not None and row[0] != SCHEMA_VERSION:
        raise RegistryError(
            f"{db_path}: registry schema {row[0]!r}, this huref reads {SCHEMA_VERSION!r}; "
            "use a matching huref or a new HUREF_HOME"
        )
    return None if row is None else str(row[0])


def registry_current(conn: Connection, db_path: object, read_only: bool) -> bool:
    """True when the registry's own tables need no migration: then opening writes nothing."""
    if schema_version(conn, db_path) is None or not REGISTRY_TABLES.current(conn):
        return False
    if read_only:  # opened as immutable, which reports no WAL whatever the file says
        return True
    return bool(conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal")


def migrate_registry(conn: Connection, db_path: object) -> None:
    """Create the registry's tables and record the schema version (inside a write transaction)."""
    schema_version(conn, db_path)
    REGISTRY_TABLES.create(conn)
    conn.execute(SKETCH_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))


def blob_named(conn: Connection, sha: str, declared: Iterable[Tables]) -> bool:
    """Whether a row names the fingerprint file ``sha``: a declared blob column of ``declared``,
    or, in a table none of them declares (a part this process has not opened), any column called
    ``fingerprint``: a file is kept when in doubt, never deleted under a row that names it."""
    declared = list(declared)
    known = set().union(*(t.names for t in declared)) | {SKETCH_TABLE}  # a sketch does not keep its file
    columns = [c for t in declared for c in t.blob_columns]
    for table in sorted(table_names(conn) - known):
        if not table.startswith("sqlite_") and "fingerprint" in column_names(conn, table):
            columns.append((table, "fingerprint"))
    return any(
        conn.execute(f"SELECT 1 FROM {quoted(table)} WHERE {quoted(column)} = ? LIMIT 1", (sha,)).fetchone()
        is not None
        for table, column in columns
    )
