"""Checks on an output file before any work: never over an input, never over someone else's file.

A command that reads models and writes a file must not write into what it reads: an output equal
to an input file would destroy it, and a new ``.safetensors`` file inside a Hugging Face folder
turns the folder into "several safetensors files but no index", an unreadable model. Paths are
compared after resolving symbolic links (and by inode when both exist), so a link or a second
name for the same file is caught too. An output that is a FIFO, a device or a socket (or a link to
one) is refused as well: renaming a finished file over ``/dev/null`` replaces the device node, and
opening a FIFO to write blocks until someone reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from huref.errors import UsageError
from huref.paths import refuse_special, shown


def _model_folder(path: Path) -> Path | None:
    """The folder that is part of the model ``path`` names: the folder itself, or the folder of a
    weights file that reads its config.json from beside it."""
    if path.is_dir():
        return path
    if path.is_file() and (path.parent / "config.json").is_file():
        return path.parent
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs_as_output(out: Path, inputs: Iterable[str | Path], flag: str = "-o") -> None:
    """Refuse an output (file or folder) that is one of ``inputs`` or inside an input's model folder."""
    target = out.resolve()
    for item in inputs:
        src = Path(item)
        if not src.exists():
            continue  # the command reports a missing input itself
        if target == src.resolve() or _same_file(out, src):
            raise UsageError(f"{flag} {out} is the input {src}: refusing to overwrite it")
        folder = _model_folder(src)
        if folder is not None and folder.resolve() in target.parents:
            raise UsageError(f"{flag} {out} is inside the input model folder {folder}: write it elsewhere")


def check_output_file(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    *,
    replaceable: Callable[[Path], bool] | None = None,
    kind: str = "",
    flag: str = "-o",
) -> Path:
    """Refuse ``out`` when it is a FIFO, device or socket, a folder, one of ``inputs``, or inside
    an input's model folder; with ``replaceable``, also refuse an existing ``out`` for which it is
    false (a file that is not a ``kind``, which writing would destroy). Returns ``out`` as a Path."""
    out = Path(out)
    refuse_special(out, flag)
    if out.is_dir():
        raise UsageError(f"{flag} {shown(out)} is a folder, not a file")
    refuse_inputs_as_output(out, inputs, flag)
    if replaceable is not None and (out.exists() or out.is_symlink()) and not replaceable(out):
        raise UsageError(f"{flag} {out} exists and is not a {kind}: refusing to overwrite it")
    return out
