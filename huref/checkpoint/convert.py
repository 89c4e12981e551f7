"""Re-writing any readable checkpoint as a Hugging Face safetensors folder.

llama2.c exports and GGUF files are presented by their readers under Hugging Face names with a
synthesised config, so conversion is a streamed copy: one tensor in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from huref.checkpoint.core import Checkpoint
from huref.checkpoint.open import open_checkpoint
from huref.checkpoint.source import DTYPES
from huref.checkpoint.writer import TensorPlan, write_checkpoint


def export_hf(
    src: str | Path | Checkpoint,
    dest: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 2 * 10**9,
    overwrite: bool = False,
) -> Path:
    """Write ``src`` as ``dest/`` (config.json + safetensors), atomically."""
    ck = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    names = ck.source.names()
    plan = []
    for n in names:
        info = ck.source.info(n)
        dt = dtype or DTYPES.get(info.dtype, torch.float32)  # dequantized GGUF types become float32
        plan.append(TensorPlan(n, info.shape, dt))
    config = dict(ck.config)
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return write_checkpoint(
        Path(dest),
        plan,
        lambda p: ck.source.read(p.name).to(p.dtype),
        config=config,
        max_shard_bytes=max_shard_bytes,
        overwrite=overwrite,
    )
