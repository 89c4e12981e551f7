"""The header of a safetensors file, read and checked without torch.

An 8-byte little-endian length, then that many bytes of JSON: an object of tensor entries and an
optional ``__metadata__`` of strings. ``read_header`` refuses special files and impossible lengths
(the format's own limit is 100 MB), ``parse_header`` refuses what is not JSON, a name given twice,
JSON's non-standard NaN/Infinity and strings that escape a lone surrogate. The entries themselves
are checked by the reader (``huref.checkpoint.safetensors_io``); discovery reads only the
metadata, through ``read_metadata``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huref.checkpoint.files import open_regular
from huref.errors import CheckpointError
from huref.paths import shown

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


class _HeaderError(ValueError):
    """A header that is JSON but breaks one of the format's rules (the reason is the message)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: the format forbids a name given twice, and a parser
    that keeps the last one would show an auditor a different tensor than another reader loads."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _HeaderError(f"key '{shown(key)}' appears twice")
        obj[key] = value
    return obj


def _not_json(token: str) -> Any:
    raise _HeaderError(f"{token} is not a JSON number")


def read_header(path: Path) -> tuple[bytes, int]:
    """(the header's JSON bytes, the file's size when opened)."""
    fd, size = open_regular(path, "safetensors file")
    try:
        with os.fdopen(fd, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{shown(path)}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(raw_len, "little")
            if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:  # "{}" is the smallest header
                raise CheckpointError(
                    f"{shown(path)}: corrupt safetensors header (declared length {n}, file {size} bytes)"
                )
            header_bytes = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{shown(path)}: cannot read ({e.strerror or e})") from None
    if len(header_bytes) < n:
        raise CheckpointError(f"{shown(path)}: truncated while reading the safetensors header")
    return header_bytes, size


def parse_header(path: Path, header_bytes: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor name -> entry, metadata) of a header, checked as JSON and as the format's object."""
    if header_bytes[:1] != b"{":
        raise CheckpointError(f"{shown(path)}: corrupt safetensors header (must start with '{{')")
    try:
        header = json.loads(
            header_bytes.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json
        )
    except _HeaderError as e:
        raise CheckpointError(f"{shown(path)}: corrupt safetensors header ({e})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{shown(path)}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shown(path)}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta  # null is what the reference reads as "no metadata"
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{shown(path)}: corrupt safetensors metadata (must map str to str)")
    for text in [*header, *meta, *meta.values()]:
        _check_utf8(path, text)
    return header, meta


def _check_utf8(path: Path, text: str) -> None:
    # a \ud800 escape parses in Python but stands for no character: no UTF-8 reader accepts it
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(
            f"{shown(path)}: corrupt safetensors header (a string escapes a lone surrogate: '{shown(text)}')"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty when it has none); its header is checked
    as JSON and as the format's object, its tensor entries are not looked at."""
    return parse_header(path, read_header(path)[0])[1]
