"""Streamed SHA-256 of weight files, and the file identities that bind a hash to what was read.

A hash says what a file held while it was hashed; a fingerprint says what it held while its
tensors were read. The two describe the same bytes only if the file did not change in between, and
readers open a path again for every read: a file renamed over (``os.replace``, ``rsync``, a
``git checkout``) or rewritten in place between hashing and reading would bind the old hash to the
new content. ``FileIdentity`` is what the kernel says about a file: its device and inode (a file
renamed over the path is another inode), its size and mtime, and its ctime, which the kernel sets
on every write, rename and chmod and no call sets back. Taken before the first read and again after
the last, an unchanged identity means every read saw one file in one state.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from huref.errors import CheckpointError
from huref.paths import shown

CHUNK = 8 * 1024 * 1024


def _open_regular(path: Path) -> int:
    """A descriptor on ``path``, refused unless it is a regular file. Opened without blocking and
    checked on the descriptor itself, so a FIFO put in the file's place after any earlier check
    neither blocks the open nor is read (a FIFO without a writer reads as empty)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
        raise CheckpointError(f"{shown(path)}: {kind}, not a regular file")
    return fd


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(_open_regular(path), "rb") as f:  # O_NONBLOCK does not affect a regular file's reads
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise CheckpointError(f"{shown(path)}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


@dataclass(frozen=True)
class FileIdentity:
    """A file as the kernel sees it (links followed): which file, and in which state."""

    dev: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileIdentity | None:
        """The identity of ``path`` now; None when it cannot be statted (gone, unreadable folder)."""
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def identities(paths: Iterable[str | Path]) -> dict[str, FileIdentity | None]:
    """path -> identity, taken before the first read of a piece of work."""
    return {str(p): FileIdentity.of(p) for p in paths}


def changed_since(before: Mapping[str, FileIdentity | None]) -> list[str]:
    """The paths whose identity is not what ``before`` recorded (replaced, rewritten, gone)."""
    return [p for p, ident in before.items() if ident is None or FileIdentity.of(p) != ident]
