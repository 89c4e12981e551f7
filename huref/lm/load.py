"""Loading a causal language model to run it, and the thread setting small models want.

Only transformers' own model classes are used (``trust_remote_code=False``): a folder whose
config names custom code is refused, never executed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from huref.errors import CheckpointError, HurefError

SMALL_MODEL = 20_000_000  # parameters; below this, one CPU thread is fastest


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Tiny models run fastest on one thread (intra-op threads only add synchronisation)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def threads_for(parameters: int, device: torch.device) -> int | None:
    """The CPU thread count for running a model of ``parameters`` (None: leave torch's default)."""
    return 1 if device.type == "cpu" and parameters < SMALL_MODEL else None


def load_causal_lm(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    error: type[HurefError] = CheckpointError,
) -> Any:
    """A Hugging Face causal LM folder, loaded in eval mode on ``device``; ``error`` is raised, in
    one line, for anything that is not one."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not Path(path).is_dir():
        raise error(f"{path}: generating text needs a Hugging Face model folder (config, weights, tokenizer)")
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for unloadable folders
        raise error(f"{path}: cannot load as a causal language model ({type(e).__name__}: {e})") from None
    return model.to(device).eval()
