"""Streamed SHA-256 of weight files: identity evidence that never loads a file whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

from huref.errors import CheckpointError

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()
