"""Checks every command makes on its arguments before any work.

Two kinds: input paths that are FIFOs, devices or sockets are refused before anything opens them
(opening a FIFO blocks until a writer appears; ``/dev/zero`` never ends), and every number that
sizes a loop or an allocation is held to a stated range, so that a typo such as ``--n 1000000``
is one line at once instead of minutes of work with growing memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from huref.errors import UsageError
from huref.paths import refuse_special

# --n / --paper-n: probe tokens. The terms are [layers, 3, n, n] floats: 8192 gives 256 MB per
# layer, and the published choice is 4096.
MIN_PROBE_TOKENS = 16
MAX_PROBE_TOKENS = 8192
# --workers of the zoo build and the demo: processes that each load models (as encoder train's
# --threads: a recipe from a machine with up to 64 cores runs anywhere)
MAX_WORKERS = max(64, os.cpu_count() or 1)


def refuse_special_inputs(*paths: str | Path | Iterable[str | Path] | None) -> None:
    """Refuse (one UsageError) any input that is a FIFO, device or socket; None and paths that
    do not exist pass (the command reports a missing input itself)."""
    for item in paths:
        if item is None:
            continue
        if isinstance(item, (str, Path)):
            refuse_special(item, "input")
        else:
            refuse_special_inputs(*item)


def check_range(flag: str, value: int, lo: int, hi: int) -> None:
    """Refuse ``value`` outside [lo, hi], naming the flag and both limits."""
    if not lo <= value <= hi:
        raise UsageError(f"{flag} must be between {lo} and {hi} (got {value})")


def check_probe_tokens(**flags: int) -> None:
    """``--n 512 --paper-n 4096``: each within MIN_PROBE_TOKENS..MAX_PROBE_TOKENS."""
    for flag, value in flags.items():
        check_range(f"--{flag.replace('_', '-')}", value, MIN_PROBE_TOKENS, MAX_PROBE_TOKENS)


def is_model_reference(spec: str | Path) -> bool:
    """Whether a model argument names something to read: an existing path, or else a hub
    repository id (``owner/name[@revision]``, resolved when the model is opened)."""
    from huref.checkpoint.hub import hub_reference

    return Path(spec).exists() or hub_reference(spec) is not None


def local_model_folder(spec: str | Path) -> Path:
    """A model argument as a local path, for commands that hand a folder to ``transformers``
    (FP-Vec verify and stamp): an existing path as given, a hub repository id as its snapshot
    folder with every weight file downloaded whole (resumable; the hub's progress bar)."""
    from huref.checkpoint.hub import hub_reference, resolve_model

    ref = hub_reference(spec)
    return Path(spec) if ref is None else resolve_model(ref, need="files")
