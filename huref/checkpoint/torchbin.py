"""``pytorch_model*.bin`` files, loaded only through ``torch.load(weights_only=True)``.

Those files are pickles; an ordinary unpickle runs whatever code the file names. PyTorch's
weights-only unpickler allows tensors and plain containers only, and refuses everything else
before it runs; such a refusal is reported as an unsafe file, never retried another way.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from huref.checkpoint.source import (
    DTYPE_NAMES,
    BufferPool,
    TensorInfo,
    check_rows,
    check_shard_name,
    empty_tensor,
    open_regular,
    read_weight_map,
)
from huref.errors import CheckpointError, UnsafeFileError
from huref.paths import refuse_special, shown


def load_state_dict_safely(path: Path) -> dict[str, torch.Tensor]:
    """Weights-only load; code-carrying pickles raise UnsafeFileError, never run.

    The file must be a regular file (a FIFO would block, a link to /dev/zero would be read until
    memory runs out), and the unpickler reads it through the descriptor opened here, so it never
    reads past the size the file had when opened.
    """
    fd, size = open_regular(Path(path), "PyTorch weights file")
    with os.fdopen(fd, "rb") as f:
        bounded = io.BufferedReader(_Bounded(f, size))
        zipped = zipfile.is_zipfile(bounded)  # the legacy (non-zip) format cannot be memory-mapped
        bounded.seek(0)
        if bounded.read(2) == b"PK" and not zipped:  # torch.load's own error here is "[Errno 22]"
            raise CheckpointError(
                f"{shown(path)}: corrupt or truncated PyTorch file (zip without a central directory)"
            )
        bounded.seek(0)
        # a zip is mapped (the mapping has the size the file has now), through the descriptor
        # checked above where the system names one; a legacy pickle is read through ``bounded``
        obj = _unpickle(path, _descriptor_path(f.fileno(), path) if zipped else bounded, mmap=zipped)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{shown(path)}: not a state dict of tensors")
    return obj


class _Bounded(io.RawIOBase):
    """A read-only view of an open file that ends at ``size`` bytes, whatever the file does later."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self._f, self._size, self._pos = f, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        self._f.seek(self._pos)
        got = self._f.readinto(view[:want]) or 0
        self._pos += got
        return got


def _descriptor_path(fd: int, path: Path) -> str:
    """A name that opens the very file behind ``fd`` (Linux), else ``path`` itself."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else str(path)


def _unpickle(path: Path, source: str | BinaryIO, mmap: bool) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the callable or class it refused: "GLOBAL posix.system"
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise UnsafeFileError(
                f"{shown(path)}: refused, the pickle asks to run code or build objects other than "
                f"tensors ({refused.group(1)}; loaded with weights_only=True, nothing was executed)"
            ) from None
        why = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
        raise CheckpointError(
            f"{shown(path)}: corrupt pickle ({shown(why.group(1)) if why else 'unreadable'})"
        ) from None
    except Exception as e:  # any other failure to parse untrusted bytes is corruption
        msg = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{shown(path)}: corrupt or truncated PyTorch file ({shown(msg)})") from None


class TorchBinSource:
    """One or several ``pytorch_model*.bin`` shards."""

    def __init__(self, files: Sequence[Path], index: Path | None = None) -> None:
        self._files = [Path(f) for f in files]
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self._where: dict[str, Path] = {}
        for f in self._files:
            for name in self._shard(f):
                if name in self._where:
                    raise CheckpointError(f"tensor '{shown(name)}' is stored twice")
                self._where[name] = f
        if index is not None:
            wm = read_weight_map(index)
            for name, shard in wm.items():
                if name not in self._where or self._where[name].name != shard:
                    raise CheckpointError(
                        f"{shown(index)}: tensor '{shown(name)}' is not in shard '{shown(shard)}'"
                    )
            extra = sorted(set(self._where) - set(wm))
            if extra:
                names = ", ".join(shown(n) for n in extra[:5])
                raise CheckpointError(f"{shown(index)}: shard tensors missing from the index: {names}")

    @classmethod
    def from_index(cls, index: Path) -> TorchBinSource:
        wm = read_weight_map(index)
        files = []
        for s in sorted(set(wm.values())):
            p = check_shard_name(index, s)
            refuse_special(p, "shard", CheckpointError)
            if not p.is_file():
                raise CheckpointError(f"{shown(index)}: names shard '{shown(s)}', which is missing")
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
            raise CheckpointError(f"no tensor named '{shown(name)}' in this checkpoint")
        return self._shard(self._where[name])[name]

    def info(self, name: str) -> TensorInfo:
        t = self._tensor(name)
        return TensorInfo(name, tuple(t.shape), DTYPE_NAMES.get(t.dtype, str(t.dtype)), self._where[name])

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        t = self._tensor(name)
        return empty_tensor(t.shape, t.dtype, pool).copy_(t)

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        check_rows(rows, self._tensor(name).shape, name)
        return self._tensor(name)[torch.as_tensor(list(rows), dtype=torch.long)].clone()

    def weight_files(self) -> list[Path]:
        return list(self._files)

    def metadata(self) -> dict[str, str]:
        return {}
