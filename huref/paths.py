"""Paths as inputs and outputs: special files refused before they are opened, names shown safely.

Opening a FIFO blocks until a writer appears, reading a character device such as /dev/zero never
ends, and writing over a device node replaces it: huref reads and writes regular files (and
folders) only, and says so in one line before it opens anything. Names that come from the file
system or from a model (tensor names, config strings) may hold newlines, terminal escape codes or
bytes that are not UTF-8; ``shown`` makes them one printable line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from huref.errors import HurefError, UsageError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | Path) -> str | None:
    """'a FIFO', 'a character device', ... when ``path`` (links followed) is neither a regular
    file nor a folder; None for those and for a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return None


def refuse_special(path: str | Path, what: str = "", error: type[HurefError] = UsageError) -> None:
    """Raise ``error`` when ``path`` is a FIFO, device or socket (checked before opening it)."""
    kind = special_kind(path)
    if kind is not None:
        label = f"{what} " if what else ""
        raise error(f"{label}{shown(path)} is {kind}, not a regular file")


def shown(value: object) -> str:
    """``value`` as one printable line: control characters (newlines, ESC, DEL, C1) become
    backslash escapes and bytes that are not UTF-8 (surrogate escapes in paths) become \\xNN."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that did not decode (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(repr(ch)[1:-1])  # \n, \x1b, \x85, \u2028, \ud800
        else:
            out.append(ch)
    return "".join(out)
