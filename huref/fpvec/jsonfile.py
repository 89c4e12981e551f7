"""JSON read with bounds: key files, model cards and vector metadata come from other people.

Python's parser recurses once per nesting level, so ``[[[[...]]]]`` a few thousand levels deep
ends in a RecursionError (a traceback, not an error a user can read), and a key file of a few GB
would be read whole into memory. Every FP-Vec JSON document is therefore checked for size before
it is read and for depth before it is parsed; huref's own documents are at most four levels deep
and a few MB long (a vector's vocabulary), well inside both bounds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huref.errors import FPVecError, HurefError
from huref.paths import refuse_special, shown

MAX_DEPTH = 32  # nesting levels of arrays and objects
MAX_FILE_BYTES = 4 * 2**20  # a key file or model card; a 1024-word pool is about 20 KB

# a JSON string, escapes included (unrolled, so matching is linear in the text's length)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets inside strings ignored)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_bounded(
    text: str, what: str, error: type[HurefError] = FPVecError, max_depth: int = MAX_DEPTH
) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth`` (and any invalid
    JSON) with one ``error`` naming ``what``."""
    if nesting_depth(text) > max_depth:
        raise error(f"{what}: nested deeper than {max_depth} levels (not a huref document)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise error(f"{what}: not valid JSON") from None


def read_json_file(
    path: str | Path,
    what: str,
    error: type[HurefError] = FPVecError,
    max_bytes: int = MAX_FILE_BYTES,
) -> Any:
    """The JSON document in ``path``: refused (one ``error``) when it is a FIFO, device or
    socket, larger than ``max_bytes``, not UTF-8, or not bounded JSON."""
    path = Path(path)
    label = f"{shown(path)}"
    refuse_special(path, what, error)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{label}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{label}: is a folder, not a {what}") from None
    except OSError as e:
        raise error(f"{label}: cannot read {what} ({e.strerror or e})") from None
    if len(raw) > max_bytes:
        raise error(f"{label}: {what} larger than {max_bytes // 2**20} MiB (not a huref {what})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{label}: corrupt {what} (not UTF-8 text)") from None
    return loads_bounded(text, f"{label}: corrupt {what}", error)
