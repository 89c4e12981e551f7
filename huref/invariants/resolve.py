"""What a user names as a model, turned into a fingerprint: one place for every command.

A path (or hub repository id) is either a huref fingerprint file, read with its seal verified, or
a checkpoint, fingerprinted here (its Model is kept: the report's identity section and PCS read
it). Special files (FIFOs, devices, sockets) are refused before anything opens them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.paths import refuse_special

if TYPE_CHECKING:
    from huref.arch.model import Model
    from huref.invariants.fingerprint import Fingerprint


@dataclass(frozen=True)
class Resolved:
    fingerprint: Fingerprint
    model: Model | None  # the checkpoint that was fingerprinted here; None for a fingerprint file

    @property
    def from_file(self) -> bool:
        return self.model is None

    @property
    def name(self) -> str:
        return self.fingerprint.name if self.model is None else self.model.ckpt.name


def resolve_fingerprint(
    path: str | Path,
    settings: Any = None,
    while_reading: Callable[[Path], AbstractContextManager[object]] | None = None,
) -> Resolved:
    """The fingerprint of ``path``; a checkpoint is fingerprinted with ``settings`` (None: the
    defaults) inside ``while_reading(path)`` when given (the registry checks there that no file
    changed while it was read)."""
    from huref.invariants.fpfile import is_fingerprint_file, load_fingerprint

    refuse_special(path, "input")
    if is_fingerprint_file(path):  # read without torch
        return Resolved(load_fingerprint(path), None)
    from huref.arch import load_model
    from huref.invariants.extract import fingerprint_model

    guard = while_reading(Path(path)) if while_reading is not None else contextlib.nullcontext()
    with guard:
        m = load_model(path)
        fp = fingerprint_model(m, settings)
    return Resolved(fp, m)
