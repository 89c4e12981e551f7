"""Local training text: the Python standard library's own sources, split into fixed slices.

No data set can be downloaded here, but every Python install carries megabytes of real,
varied text. Files are assigned to slices by a hash of their relative path, so the split is the
same on every machine with the same Python, and the slices never share a file.
"""

from __future__ import annotations

import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path

from huref.errors import UsageError

SLICES = {"pretrain": 0.70, "sft": 0.10, "cpt": 0.10, "heldout": 0.10}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _slice_of(rel: str) -> str:
    u = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in SLICES.items():
        acc += frac
        if u < acc:
            return name
    return "heldout"


@lru_cache(maxsize=8)
def _files(root: str) -> tuple[tuple[str, str], ...]:
    base = Path(root)
    out = []
    for p in sorted(base.rglob("*.py")):
        rel = p.relative_to(base).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/", "lib2to3/tests", "tkinter/test")):
            continue
        if "/tests/" in rel or "__pycache__" in rel:
            continue
        out.append((rel, _slice_of(rel)))
    return tuple(out)


def corpus_text(slice_name: str, max_chars: int, root: Path | None = None) -> str:
    """Up to ``max_chars`` characters of one slice, whole files in path order."""
    if slice_name not in SLICES:
        raise UsageError(f"unknown corpus slice {slice_name!r} (known: {', '.join(SLICES)})")
    base = root or stdlib_root()
    parts: list[str] = []
    total = 0
    for rel, sl in _files(str(base)):
        if sl != slice_name:
            continue
        try:
            text = (base / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if total == 0:
        raise UsageError(f"no Python standard-library sources found under {base}")
    return "\n".join(parts)[:max_chars]
