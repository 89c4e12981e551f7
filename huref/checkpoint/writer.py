"""Writing checkpoints incrementally and atomically.

Each shard's header is computed from the plan (names, shapes, dtypes known in advance), written
first, and the tensor bytes are streamed after it, so no more than one tensor is ever held. The
whole output is built in a temporary folder beside the destination and renamed into place at the
end, the index last: an interrupted write leaves no partial checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from huref.checkpoint.atomic import (  # re-exported: torch-free, in their own module
    atomic_dir,
)
from huref.checkpoint.source import DTYPE_NAMES, ITEMSIZE
from huref.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[DTYPE_NAMES[self.dtype]]
        for s in self.shape:
            n *= s
        return n


SIZE_UNITS = {
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "B": 1,
}
MIN_SHARD_BYTES = 10**6  # below this a checkpoint becomes thousands of files (one tensor each at least)
MAX_SHARD_BYTES = 10**12  # 1TB: beyond any file system's comfort, and a sure sign of a typo


def parse_size(
    text: str, flag: str = "--max-shard-size", lo: int = MIN_SHARD_BYTES, hi: int = MAX_SHARD_BYTES
) -> int:
    """'5GB' -> bytes, within [lo, hi]. Units are explicit so that parameters and bytes are never
    confused; NaN, infinities, negative and out-of-range sizes are refused with the limits."""
    t = text.strip().upper()
    for u in sorted(SIZE_UNITS, key=len, reverse=True):
        if t.endswith(u):
            try:
                value = float(t[: -len(u)]) * SIZE_UNITS[u]
            except ValueError:
                break
            if not (math.isfinite(value) and lo <= value <= hi):
                raise UsageError(
                    f"{flag} {text!r} is out of range: between {lo:,} and {hi:,} bytes (1MB..1TB)"
                )
            return int(value)
    raise UsageError(f"{flag}: cannot read size {text!r}: write it with a unit, e.g. 5GB or 500MB")


def _header(plan: Sequence[TensorPlan], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt", **metadata}}
    offset = 0
    for p in plan:
        header[p.name] = {
            "dtype": DTYPE_NAMES[p.dtype],
            "shape": list(p.shape),
            "data_offsets": [offset, offset + p.nbytes],
        }
        offset += p.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors_file(
    path: Path,
    plan: Sequence[TensorPlan],
    produce: Callable[[TensorPlan], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream tensors into one safetensors file (not atomic by itself: write into a temp dir).

    Each tensor is written by a helper thread while the next one is produced (a write releases
    the GIL; under the kernel's dirty-page throttling it waits on the disk, and the producer need
    not wait with it); at most one tensor is in flight, so memory grows by one tensor at most.
    """
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as writer:
        f.write(_header(plan, metadata or {}))
        pending: Future[int] | None = None
        for p in plan:
            t = produce(p)
            if tuple(t.shape) != p.shape or t.dtype != p.dtype:
                raise ValueError(
                    f"tensor {p.name}: produced {tuple(t.shape)} {t.dtype}, planned {p.shape} {p.dtype}"
                )
            t = t.detach().contiguous().cpu()
            if pending is not None:
                pending.result()
                pending = None
            if t.numel():
                pending = writer.submit(f.write, t.view(torch.uint8).numpy().data.cast("B"))
        if pending is not None:
            pending.result()


def shard_plan(plan: Sequence[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for p in plan:
        if shards[-1] and size + p.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    return shards


def write_checkpoint(
    dest: Path,
    plan: Sequence[TensorPlan],
    produce: Callable[[TensorPlan], torch.Tensor],
    config: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
    metadata: dict[str, str] | None = None,
    max_shard_bytes: int = 2 * 10**9,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face style folder: shards, then config and extras, then the index."""
    shards = shard_plan(plan, max_shard_bytes)
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        if len(shards) == 1:
            write_safetensors_file(tmp / "model.safetensors", shards[0], produce, metadata)
        else:
            weight_map: dict[str, str] = {}
            total = 0
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors_file(tmp / fname, shard, produce, metadata)
                for p in shard:
                    weight_map[p.name] = fname
                    total += p.nbytes
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)
        if len(shards) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return Path(dest)
