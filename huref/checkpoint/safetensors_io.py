"""Reading safetensors files without memory-mapping them.

The header is parsed here (8-byte little-endian length, then JSON) so that corrupt and truncated
files are caught before any tensor is touched, and tensors are read with positioned reads straight
into freshly allocated tensors. Not mapping the file keeps resident memory equal to the tensors
actually held, which is what makes layer-by-layer reading of a 7B model fit in a few GB.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from huref.checkpoint.source import (
    DTYPES,
    ITEMSIZE,
    BufferPool,
    TensorInfo,
    empty_tensor,
    gather_rows_by_runs,
    read_weight_map,
)
from huref.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
PARALLEL_READ_MIN_BYTES = 32 * 2**20  # tensors at least this large are read by several threads
READ_THREADS = max(1, min(4, os.cpu_count() or 1))
PART_ALIGN = 2 * 2**20  # thread ranges start on huge-page boundaries of the destination


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    begin: int  # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: validated header, positioned reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
                n = int.from_bytes(raw_len, "little")
                if n <= 0 or n > MAX_HEADER_BYTES or n > size - 8:
                    raise CheckpointError(
                        f"{self.path}: corrupt safetensors header (declared length {n}, file {size} bytes)"
                    )
                header_bytes = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not valid JSON)") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{self.path}: corrupt safetensors metadata (must map str to str)")
        self._meta: dict[str, str] = meta
        data_start = 8 + n
        data_len = size - data_start
        self._entries: dict[str, _Entry] = {}
        max_end = 0
        for name, spec in header.items():
            try:
                dtype = spec["dtype"]
                shape = tuple(int(s) for s in spec["shape"])
                begin, end = (int(x) for x in spec["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: corrupt header entry for tensor {name!r}") from None
            if dtype not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype!r}")
            numel = 1
            for s in shape:
                if s < 0:
                    raise CheckpointError(f"{self.path}: tensor {name!r} has a negative dimension")
                numel *= s
            if end - begin != numel * ITEMSIZE[dtype] or begin < 0:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} byte range does not match its shape {list(shape)}"
                )
            if end > data_len:
                raise CheckpointError(
                    f"{self.path}: truncated file (tensor {name!r} ends at byte {end}, "
                    f"only {data_len} data bytes present)"
                )
            max_end = max(max_end, end)
            self._entries[name] = _Entry(
                TensorInfo(name, shape, dtype, self.path), data_start + begin, data_start + end
            )

    def names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entry(name).info

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None

    def locate(self, name: str) -> tuple[SafetensorsFile, int, int]:
        """(file, first byte, end) of a tensor's stored bytes, for reads of several tensors at once
        (``read_bytes_into``)."""
        e = self._entry(name)
        return self, e.begin, e.end

    def read_bytes_into(self, out: torch.Tensor, offset: int) -> None:
        buf = out.view(torch.uint8).numpy().data.cast("B") if out.numel() else memoryview(b"")
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            # A large tensor is read as a few disjoint ranges in parallel: one thread's kernel copy
            # (and first-touch faults) reaches about half the speed of a read from the page cache.
            parts = READ_THREADS if len(buf) >= PARALLEL_READ_MIN_BYTES else 1
            step = -(-len(buf) // parts)  # ceil
            step = -(-step // PART_ALIGN) * PART_ALIGN  # rounded up to whole huge pages
            ranges = [(lo, min(lo + step, len(buf))) for lo in range(0, len(buf), step or 1)]
            errors: list[BaseException] = []

            def part(lo: int, hi: int) -> None:
                try:
                    self._pread_exactly(fd, buf[lo:hi], offset + lo)
                except BaseException as e:  # re-raised by the caller's thread below
                    errors.append(e)

            threads = [threading.Thread(target=part, args=r, daemon=True) for r in ranges[1:]]
            for t in threads:
                t.start()
            if ranges:
                part(*ranges[0])
            for t in threads:
                t.join()  # every reader is done with fd before it is closed
            if errors:
                raise errors[0]
        finally:
            os.close(fd)

    def _pread_exactly(self, fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            try:
                got = os.preadv(fd, [view[done:]], offset + done)
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot read ({e.strerror})") from None
            if got <= 0:
                raise CheckpointError(f"{self.path}: truncated while reading")
            done += got

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        """The whole tensor; with ``pool``, into one of its buffers (see ``BufferPool``)."""
        e = self._entry(name)
        out = empty_tensor(e.info.shape, DTYPES[e.info.dtype], pool)
        self.read_bytes_into(out, e.begin)
        return out

    def read_row_range(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 of a tensor: one contiguous byte range."""
        e = self._entry(name)
        shape = e.info.shape
        if not shape or not (0 <= lo <= hi <= shape[0]):
            raise CheckpointError(f"{self.path}: row range {lo}:{hi} outside tensor {name!r}")
        row_bytes = (e.end - e.begin) // shape[0] if shape[0] else 0
        out = empty_tensor((hi - lo, *shape[1:]), DTYPES[e.info.dtype])
        self.read_bytes_into(out, e.begin + lo * row_bytes)
        return out

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        n = self.info(name).shape[0]
        for r in rows:
            if not 0 <= r < n:
                raise CheckpointError(f"{self.path}: row {r} outside tensor {name!r} ({n} rows)")
        return gather_rows_by_runs(rows, lambda lo, hi: self.read_row_range(name, lo, hi))


class SafetensorsSource:
    """One or several safetensors files read as one checkpoint.

    With an index file (``model.safetensors.index.json``) the index is the source of truth and
    is checked against the shard headers both ways: every indexed tensor must be in the shard
    that the index names, and every tensor of every shard must be indexed.
    """

    def __init__(self, files: Sequence[Path], index: Path | None = None) -> None:
        self.index_path = index
        self._files = [SafetensorsFile(p) for p in files]
        self._where: dict[str, SafetensorsFile] = {}
        for sf in self._files:
            for name in sf.names():
                if name in self._where:
                    raise CheckpointError(
                        f"tensor {name!r} is stored twice ({self._where[name].path.name} and {sf.path.name})"
                    )
                self._where[name] = sf
        if index is not None:
            self._check_index(index)

    @classmethod
    def from_index(cls, index: Path) -> SafetensorsSource:
        weight_map = read_weight_map(Path(index))
        shards = sorted(set(weight_map.values()))
        files = []
        for s in shards:
            p = Path(index).parent / s
            if Path(s).name != s:
                raise CheckpointError(f"{index}: shard name {s!r} must be a file name in the folder")
            if not p.is_file():
                raise CheckpointError(f"{index}: names shard {s!r}, which is missing")
            files.append(p)
        return cls(files, index=Path(index))

    def _check_index(self, index: Path) -> None:
        weight_map = read_weight_map(index)
        for name, shard in weight_map.items():
            sf = self._where.get(name)
            if sf is None:
                raise CheckpointError(f"{index}: tensor {name!r} is not in shard {shard!r}")
            if sf.path.name != shard:
                raise CheckpointError(
                    f"{index}: tensor {name!r} is indexed in {shard!r} but stored in {sf.path.name!r}"
                )
        extra = sorted(set(self._where) - set(weight_map))
        if extra:
            raise CheckpointError(f"{index}: shard tensors missing from the index: {', '.join(extra[:5])}")

    def names(self) -> list[str]:
        return list(self._where)

    def _file(self, name: str) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise CheckpointError(f"no tensor named {name!r} in this checkpoint") from None

    def info(self, name: str) -> TensorInfo:
        return self._file(name).info(name)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        return self._file(name).read(name, pool)

    def locate(self, name: str) -> tuple[SafetensorsFile, int, int]:
        return self._file(name).locate(name)

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        return self._file(name).read_rows(name, rows)

    def read_row_range(self, name: str, lo: int, hi: int) -> torch.Tensor:
        return self._file(name).read_row_range(name, lo, hi)

    def weight_files(self) -> list[Path]:
        return [sf.path for sf in self._files]

    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for sf in self._files:
            meta.update(sf.metadata())
        return meta

    def file_order(self) -> list[tuple[Path, list[str]]]:
        """Tensor names grouped by shard, in on-disk order: the cheapest order to read them."""
        out = []
        for sf in self._files:
            names = sorted(sf.names(), key=lambda n: sf._entry(n).begin)
            out.append((sf.path, names))
        return out
