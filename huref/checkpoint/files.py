"""Reading the small files of a checkpoint (configs, indexes, tokenizers) safely, without torch.

Every reader refuses special files (FIFOs, devices) before opening them, bounds what it reads by
the size measured at opening, and turns undecodable or over-deep JSON into one CheckpointError.
Kept free of tensor libraries so that discovery and cached commands can use it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from huref.errors import CheckpointError
from huref.paths import refuse_special, shown

# The JSON files a checkpoint carries (config, index, tokenizer) are read whole: the largest real
# tokenizer.json is ~35 MB, so a file eight times that is refused before it is parsed.
MAX_JSON_BYTES = 256 * 2**20
# Nesting of a config document: Hugging Face configs nest a few levels (text_config.rope_scaling);
# deeper ones are refused, so that no later recursive walk (json.dumps, repr) can exhaust the stack.
MAX_CONFIG_DEPTH = 64


def open_regular(path: Path, what: str) -> tuple[int, int]:
    """A read-only descriptor of a regular file and its size when opened.

    Special files are refused before opening (a FIFO blocks ``open`` until a writer comes, a
    device such as /dev/zero never ends), and once more on the open descriptor: opening with
    O_NONBLOCK returns at once even for a FIFO swapped in after the first check. Readers bound
    every read by the size measured here.
    """
    refuse_special(path, what, CheckpointError)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # no effect on regular files
    except OSError as e:
        raise CheckpointError(f"{shown(path)}: cannot read ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{what} {shown(path)} is not a regular file")
    return fd, st.st_size


def read_small_file(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, never more than its size at opening."""
    fd, size = open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        if size > limit:
            raise CheckpointError(
                f"{shown(path)}: {what} of {size} bytes is larger than huref reads ({limit})"
            )
        try:
            return f.read(size)
        except OSError as e:
            raise CheckpointError(f"{shown(path)}: cannot read ({e.strerror or e})") from None


def read_json(path: Path, what: str) -> Any:
    """A checkpoint's JSON document. Bytes that are not UTF-8, text that is not JSON and nesting
    deep enough to exhaust the parser are all one error: corrupt."""
    raw = read_small_file(path, what)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{shown(path)}: corrupt {what} (not valid JSON)") from None


def nesting_depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether ``doc`` (parsed JSON) nests lists and objects more than ``limit`` deep; iterative,
    so a deep document cannot exhaust the stack here either."""
    stack = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in node if isinstance(child, (list, dict)))
    return False


def check_shard_name(index: Path, shard: str) -> Path:
    """The path of a shard an index names: a plain file name in the index's folder, never a path
    that leads elsewhere (``../x``, ``/etc/x``)."""
    if not shard or Path(shard).name != shard or shard in (".", ".."):
        raise CheckpointError(
            f"{shown(index)}: shard name '{shown(shard)}' must be a file name in the folder"
        )
    return index.parent / shard


def read_weight_map(index: Path) -> dict[str, str]:
    """A sharded checkpoint's index: tensor name -> shard file name, both strings."""
    doc = read_json(Path(index), "index")
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CheckpointError(
            f"{shown(index)}: corrupt index (needs a 'weight_map' object of tensor -> shard names)"
        )
    return wm
