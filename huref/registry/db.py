"""SQLite connections for the registry: every sqlite3 error becomes one line of the huref family.

A registry is read from plain statements outside any transaction (listing bases, the scan cache's
look-ups), so mapping errors in ``Store.transaction()`` alone is not enough: the connection and
its cursors here map them on every ``execute`` and ``fetch``. What a user is told depends on what
SQLite says (its error name, not the message text):

- SQLITE_CORRUPT / SQLITE_NOTADB: the file is damaged; restore it or start a new HUREF_HOME (2);
- SQLITE_BUSY / SQLITE_LOCKED: another process held the write lock past the busy timeout (2);
- SQLITE_READONLY*, SQLITE_FULL, SQLITE_IOERR*, SQLITE_CANTOPEN*, SQLITE_PERM: the operating
  system refused (read-only file or folder, disk full, I/O error): exit code 3, like an OSError.

A WAL database needs its ``-shm`` file; in a folder this process cannot write, SQLite cannot
create it and refuses even to read. Such a registry (a shared, read-only one) is then opened as
``immutable``, which is exact as long as nothing writes it meanwhile and no committed writes are
still waiting in its ``-wal`` file (that case is refused with one line).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from huref.errors import RegistryError

OS_REFUSED_EXIT = 3  # as huref.cli.app.OS_ERROR_EXIT: the system refused, not bad input

_REFUSED = ("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PERM")


class StoreError(RegistryError):
    """A registry database or fingerprint-file failure, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = 2, sqlite_name: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.sqlite_name = sqlite_name  # e.g. SQLITE_CORRUPT; empty when SQLite did not say


def db_error(path: Path, e: sqlite3.Error, busy_timeout_ms: int) -> StoreError:
    """One line for a sqlite3 error on the registry database at ``path``."""
    name = str(getattr(e, "sqlite_errorname", "") or "")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StoreError(
            f"{path}: the registry database is damaged ({e}); restore it from a backup, or set "
            "HUREF_HOME to a new folder and add the bases again",
            sqlite_name=name,
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(
            f"{path}: cannot write the registry ({e}; another process held it for "
            f"{busy_timeout_ms // 1000} s or more)",
            sqlite_name=name,
        )
    if name.startswith("SQLITE_READONLY"):
        return StoreError(
            f"{path}: the registry is read-only here ({e}); this command needs write access to "
            f"{path.parent} (reading commands such as 'huref registry list' and 'huref audit "
            "--registry' do not)",
            OS_REFUSED_EXIT,
            name,
        )
    if name.startswith(_REFUSED):
        return StoreError(f"{path}: the system refused the registry ({e})", OS_REFUSED_EXIT, name)
    return StoreError(f"{path}: registry database error ({e})", sqlite_name=name)


class Cursor(sqlite3.Cursor):
    """A cursor whose statements and fetches raise StoreError instead of sqlite3 errors."""

    def _fail(self, e: sqlite3.Error) -> StoreError:
        conn = self.connection
        assert isinstance(conn, Connection)
        return db_error(conn.path, e, conn.busy_timeout_ms)

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            super().execute(sql, parameters)
        except sqlite3.Error as e:
            raise self._fail(e) from None
        return self

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Cursor:
        try:
            super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as e:
            raise self._fail(e) from None
        return self

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as e:
            raise self._fail(e) from None

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size if size is not None else self.arraysize)
        except sqlite3.Error as e:
            raise self._fail(e) from None

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as e:
            raise self._fail(e) from None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as e:
            raise self._fail(e) from None


class Connection(sqlite3.Connection):
    """A connection that knows its file, and whose statements go through ``Cursor``."""

    path: Path
    busy_timeout_ms: int

    def cursor(self, factory: Any = Cursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:  # type: ignore[override]
        cur: Cursor = self.cursor()
        return cur.execute(sql, parameters)


def uri(path: Path, mode: str, immutable: bool = False) -> str:
    return f"file:{urllib.parse.quote(str(path))}?mode={mode}" + ("&immutable=1" if immutable else "")


def connect(path: Path, mode: str, busy_timeout_ms: int, immutable: bool = False) -> Connection:
    try:
        conn = sqlite3.connect(
            uri(path, mode, immutable),
            uri=True,
            isolation_level=None,
            timeout=busy_timeout_ms / 1000,
            factory=Connection,
        )
    except sqlite3.Error as e:
        raise db_error(path, e, busy_timeout_ms) from None
    assert isinstance(conn, Connection)
    conn.path, conn.busy_timeout_ms = path, busy_timeout_ms
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_database(path: Path, mode: str, busy_timeout_ms: int) -> tuple[Connection, bool]:
    """(connection, read_only): the first statement runs here, so an unreadable file fails here.

    ``read_only`` is True when the registry had to be opened as immutable (see the module notes)."""
    conn = connect(path, mode, busy_timeout_ms)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn, False
    except StoreError as e:
        conn.close()
        if not e.sqlite_name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or not path.is_file():
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise StoreError(
            f"{path}: cannot read the registry: its folder is read-only here and {wal.name} holds "
            "writes not yet merged into it; ask its owner to run any 'huref registry' command once",
            OS_REFUSED_EXIT,
        )
    conn = connect(path, "ro", busy_timeout_ms, immutable=True)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except StoreError:
        conn.close()
        raise
    return conn, True
