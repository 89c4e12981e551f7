"""Where a scan may write: checked before any work, so a refused scan has read no weight.

A scan writes ``results.json`` and ``index.html`` into its output folder, replacing what is there.
That is refused, in one line (exit 2), when
- the output is not a folder, or either name is taken by something that is not a regular file (a
  folder, a FIFO, a device: renaming over it would replace it, and it is nobody's report);
- either file exists and is not an earlier scan's: a user's own ``index.html`` is not ours to
  replace. An earlier scan's files are recognised by the marks they carry (``SCHEMA`` in
  results.json, the generator tag near the top of index.html) or, for files written before the
  marks, by their shape: every key a results.json has always had, and the page's title;
- the output is inside a model of the zoo (``huref.checkpoint.outputs``, the rule ``audit``
  uses): writing into a model's folder changes the model, and a file there may be one it reads.
An output folder inside the zoo but outside every model is allowed (``scan models -o
models/scan``): the next scan finds no checkpoint in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huref.checkpoint.outputs import refuse_inputs_as_output
from huref.errors import UsageError
from huref.paths import shown, special_kind

RESULTS_NAME = "results.json"
INDEX_NAME = "index.html"
SCHEMA = "huref-scan/1"  # results.json's "schema" field
PAGE_MARK = '<meta name="generator" content="huref-scan/'
LEGACY_PAGE_MARK = "<title>huref scan — "  # the title of every index.html written before the mark
# every key of results.json since the first scan: a document with all of them is an earlier scan's
LEGACY_RESULTS_KEYS = frozenset(
    ("zoo", "registry", "bases", "null", "verdict_rule", "settings", "scan", "models")
)
HEAD_BYTES = 4096  # the marks sit in a page's first lines
MAX_RESULTS_BYTES = 1 << 30  # a larger .json is not read to find out: it is not ours


def page_is_ours(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(HEAD_BYTES).decode("utf-8", "replace")
    return PAGE_MARK in head or LEGACY_PAGE_MARK in head


def results_are_ours(p: Path) -> bool:
    if p.stat().st_size > MAX_RESULTS_BYTES:
        return False
    try:
        doc: Any = json.loads(p.read_bytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    if not isinstance(doc, dict):
        return False
    return doc.get("schema") == SCHEMA or doc.keys() >= LEGACY_RESULTS_KEYS


def _refuse_unless_ours(p: Path) -> None:
    if not (p.exists() or p.is_symlink()):
        return
    kind = "a folder" if p.is_dir() else special_kind(p)
    if kind is not None:
        raise UsageError(f"{shown(p)} is {kind}; the scan writes a file there: choose another -o")
    ours = page_is_ours if p.name == INDEX_NAME else results_are_ours
    try:
        if p.is_file() and ours(p):
            return
    except OSError as e:  # unreadable: it cannot be shown to be ours
        raise UsageError(
            f"{shown(p)} exists and cannot be read ({e.strerror or e}): choose another -o"
        ) from None
    raise UsageError(
        f"{shown(p)} exists and is not an earlier huref scan's, which the scan would replace: "
        "choose another -o (or move the file)"
    )


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder whose results.json or index.html the scan must not replace."""
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise UsageError(f"-o {shown(out_dir)}: exists and is not a folder")
    for name in (RESULTS_NAME, INDEX_NAME):
        _refuse_unless_ours(out_dir / name)


def refuse_models_as_out_dir(out_dir: Path, models: Iterable[str | Path]) -> None:
    """Refuse an output folder inside (or equal to) one of the zoo's models."""
    refuse_inputs_as_output(out_dir, models, "-o")
