"""``pytorch_model*.bin`` files, loaded only through ``torch.load(weights_only=True)``.

Those files are pickles; an ordinary unpickle runs whatever code the file names. PyTorch's
weights-only unpickler allows tensors and plain containers only, and refuses everything else
before it runs; such a refusal is reported as an unsafe file, never retried another way.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from huref.checkpoint.source import DTYPE_NAMES, BufferPool, TensorInfo, empty_tensor, read_weight_map
from huref.errors import CheckpointError, UnsafeFileError


def load_state_dict_safely(path: Path) -> dict[str, torch.Tensor]:
    """Weights-only load; code-carrying pickles raise UnsafeFileError, never run."""
    mmap = zipfile.is_zipfile(path)  # the legacy (non-zip) format cannot be memory-mapped
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"PK" and not mmap:  # torch.load's own error here is "[Errno 22]"
                raise CheckpointError(
                    f"{path}: corrupt or truncated PyTorch file (zip without a central directory)"
                )
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the callable or class it refused: "GLOBAL posix.system"
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise UnsafeFileError(
                f"{path}: refused, the pickle asks to run code or build objects other than "
                f"tensors ({refused.group(1)}; loaded with weights_only=True, nothing was executed)"
            ) from None
        why = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
        raise CheckpointError(f"{path}: corrupt pickle ({why.group(1) if why else 'unreadable'})") from None
    except Exception as e:  # any other failure to parse untrusted bytes is corruption
        msg = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch file ({msg})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


class TorchBinSource:
    """One or several ``pytorch_model*.bin`` shards."""

    def __init__(self, files: Sequence[Path], index: Path | None = None) -> None:
        self._files = [Path(f) for f in files]
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self._where: dict[str, Path] = {}
        for f in self._files:
            for name in self._shard(f):
                if name in self._where:
                    raise CheckpointError(f"tensor {name!r} is stored twice")
                self._where[name] = f
        if index is not None:
            wm = read_weight_map(index)
            for name, shard in wm.items():
                if name not in self._where or self._where[name].name != shard:
                    raise CheckpointError(f"{index}: tensor {name!r} is not in shard {shard!r}")
            extra = sorted(set(self._where) - set(wm))
            if extra:
                raise CheckpointError(
                    f"{index}: shard tensors missing from the index: {', '.join(extra[:5])}"
                )

    @classmethod
    def from_index(cls, index: Path) -> TorchBinSource:
        wm = read_weight_map(index)
        files = []
        for s in sorted(set(wm.values())):
            p = index.parent / s
            if not p.is_file():
                raise CheckpointError(f"{index}: names shard {s!r}, which is missing")
            files.append(p)
        return cls(files, index=index)

    def _shard(self, f: Path) -> dict[str, torch.Tensor]:
        if f not in self._loaded:
            self._loaded[f] = load_state_dict_safely(f)
        return self._loaded[f]

    def names(self) -> list[str]:
        return list(self._where)

    def _tensor(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"no tensor named {name!r} in this checkpoint")
        return self._shard(self._where[name])[name]

    def info(self, name: str) -> TensorInfo:
        t = self._tensor(name)
        return TensorInfo(name, tuple(t.shape), DTYPE_NAMES.get(t.dtype, str(t.dtype)), self._where[name])

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        t = self._tensor(name)
        return empty_tensor(t.shape, t.dtype, pool).copy_(t)

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        return self._tensor(name)[torch.as_tensor(list(rows), dtype=torch.long)].clone()

    def weight_files(self) -> list[Path]:
        return list(self._files)

    def metadata(self) -> dict[str, str]:
        return {}
