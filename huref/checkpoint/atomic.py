"""Files and folders that appear whole or not at all, and the temporaries of interrupted writes.

A writer works under a hidden temporary name in the destination's folder (``.NAME.tmp-huref-PID-HOST-TOKEN``)
and renames it into place when done; the next writer into the same place removes the temporaries
of processes that are gone or that are older than a day, never another file. Free of torch, so
that commands answered from caches can write their outputs without importing it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from huref.errors import UsageError

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-huref-"
STALE_AFTER_S = 86400.0  # a temporary untouched for a day is abandoned, whoever made it
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _temp_name(dest: Path) -> Path:
    """A fresh hidden name beside ``dest`` (so that the final rename stays on one file system)
    that names its writer: process id and machine tag, then a random token."""
    return dest.parent / f".{dest.name}{TEMP_MARK}{os.getpid()}-{_HOST}-{secrets.token_hex(6)}"


def _temp_pattern(dest: Path) -> re.Pattern[str]:
    # also the names of huref versions before the machine tag (.NAME.tmp-PID-TOKEN): age decides those
    return re.compile(
        re.escape(f".{dest.name}")
        + r"\.tmp-(?:huref-(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-[0-9a-f]{12}|(?P<old_pid>\d+)-[0-9a-f]{12})"
    )


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user; or not a pid at all
        return False
    return False


def _last_change(path: Path) -> float:
    """Newest modification time of a temporary file, or of a temporary folder and its files
    (a folder's own time changes only when entries are added)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, sub.lstat().st_mtime)
    return newest


def is_stale_temporary(path: Path, dest: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of an interrupted huref write to ``dest``: its name is one
    :func:`_temp_name` gives for ``dest``, and its writer is gone (a dead process of this
    machine) or it has not changed for :data:`STALE_AFTER_S` seconds."""
    m = _temp_pattern(dest).fullmatch(path.name)
    if m is None or path.parent != dest.parent:
        return False
    try:
        age = (time.time() if now is None else now) - _last_change(path)
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    pid = m.group("pid")
    return (
        pid is not None and m.group("host") == _HOST and int(pid) != os.getpid() and _process_gone(int(pid))
    )


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Remove what interrupted writes to ``dest`` left beside it (see the module notes); returns
    what was removed. Best effort: a temporary that cannot be removed is left and logged."""
    dest = Path(dest)
    prefix = f".{dest.name}.tmp-"
    try:
        candidates = [p for p in dest.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for p in candidates:
        if not is_stale_temporary(p, dest):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            log.warning("could not remove %s, left by an interrupted write: %s", p, e.strerror or e)
            continue
        log.info("removed %s, left by an interrupted write", p)
        removed.append(p)
    return removed


def _prepare(dest: Path, overwrite: bool, taken: str) -> Path:
    """A fresh temporary name for a writer into ``dest``: refused (``taken``) when ``dest`` exists
    and may not be replaced; the folder is made and stale temporaries of earlier writers removed."""
    if dest.exists() and not overwrite:
        raise UsageError(taken)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    return _temp_name(dest)


@contextlib.contextmanager
def atomic_dir(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; rename it to ``dest`` only on success."""
    dest = Path(dest)
    tmp = _prepare(dest, overwrite, f"{dest} already exists; choose a new output path")
    tmp.mkdir()  # not mkdtemp: its 0700 would survive the rename; this honours the umask
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(dest: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path in ``dest``'s folder; rename to ``dest`` only on success."""
    dest = Path(dest)
    tmp = _prepare(dest, overwrite, f"{dest} already exists")
    os.close(
        os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    )  # umask applies, unlike mkstemp's 0600
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
