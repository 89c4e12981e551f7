"""Reading safetensors files without memory-mapping them.

The header is parsed here (8-byte little-endian length, then JSON) so that corrupt and truncated
files are caught before any tensor is touched, and tensors are read with positioned reads straight
into freshly allocated tensors. Not mapping the file keeps resident memory equal to the tensors
actually held, which is what makes layer-by-layer reading of a 7B model fit in a few GB.

The header is held to the format's documented rules, at least as strictly as the reference
implementation (``safetensors.safe_open``) holds it: a JSON object starting with '{', optional
``__metadata__`` mapping strings to strings, every tensor a known dtype, a shape of non-negative
integers and two integer offsets whose span is exactly the shape's bytes, and the tensors, sorted
by offset, tiling the data section from its first byte to the end of the file with no gap and no
overlap (a hole could hide a second payload, an overlap alias two tensors). Stricter than the
reference: a tensor name given twice (the format forbids it; JSON parsers keep one of the two
silently), leading whitespace before '{', JSON's non-standard NaN/Infinity tokens anywhere, and
dimensions beyond what torch can index (2**63 - 1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huref.checkpoint.safetensors_header import parse_header, read_header
from huref.checkpoint.source import (
    DTYPES,
    ITEMSIZE,
    BufferPool,
    TensorInfo,
    check_shard_name,
    empty_tensor,
    gather_rows_by_runs,
    read_weight_map,
)
from huref.errors import CheckpointError
from huref.paths import refuse_special, shown

MAX_DIM = 2**63 - 1  # torch indexes tensors with signed 64-bit integers
PARALLEL_READ_MIN_BYTES = 32 * 2**20  # tensors at least this large are read by several threads
READ_THREADS = max(1, min(4, os.cpu_count() or 1))
PART_ALIGN = 2 * 2**20  # thread ranges start on huge-page boundaries of the destination


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    begin: int  # absolute byte offset in the file
    end: int


def _uint(value: Any, limit: int) -> bool:
    """A JSON integer in 0..limit: not a float (2.0, 1e400), not a boolean, not a string."""
    return type(value) is int and 0 <= value <= limit


def _check_entry(path: Path, name: str, spec: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked before it is used."""
    what = f"{shown(path)}: tensor '{shown(name)}'"
    if not isinstance(spec, dict):
        raise CheckpointError(f"{what}: corrupt header entry (not an object)")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in spec]
    if missing:
        raise CheckpointError(f"{what}: corrupt header entry (no {', '.join(missing)})")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown_dtype = (
            f"'{shown(dtype)}'" if isinstance(dtype, str) else f"of JSON type {type(dtype).__name__}"
        )
        raise CheckpointError(f"{what} has unsupported dtype {shown_dtype}")
    if not isinstance(shape, list) or not all(_uint(s, MAX_DIM) for s in shape):
        raise CheckpointError(f"{what}: corrupt header entry (shape must be a list of integers 0..2**63-1)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(x, 2**64 - 1) for x in offsets):
        raise CheckpointError(f"{what}: corrupt header entry (data_offsets must be two integers >= 0)")
    begin, end = offsets
    numel = 1
    for s in shape:
        numel *= s
    if begin > end or end - begin != numel * ITEMSIZE[dtype]:
        raise CheckpointError(
            f"{what} byte range [{begin}, {end}] does not match its shape {shape} ({dtype})"
        )
    return dtype, tuple(shape), begin, end


def _check_coverage(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors' byte ranges, sorted, tile the data section exactly (the format's rule: no
    holes, no overlaps, nothing after the last tensor)."""
    last = max(spans, key=lambda s: s[1], default=(0, 0, ""))
    if last[1] > data_len:
        raise CheckpointError(
            f"{shown(path)}: truncated file (tensor '{shown(last[2])}' ends at byte {last[1]}, "
            f"only {data_len} data bytes present)"
        )
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            how = (
                "overlaps the tensor before it"
                if begin < expected
                else f"leaves a hole of {begin - expected} bytes"
            )
            raise CheckpointError(
                f"{shown(path)}: corrupt safetensors file (tensor '{shown(name)}' at data byte {begin} {how})"
            )
        expected = end
    if expected != data_len:
        raise CheckpointError(
            f"{shown(path)}: corrupt safetensors file ({data_len - expected} bytes after the last tensor "
            "belong to no tensor)"
        )


class SafetensorsFile:
    """One .safetensors file: validated header, positioned reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header_bytes, size = read_header(self.path)
        header, self._meta = parse_header(self.path, header_bytes)
        data_start = 8 + len(header_bytes)
        self._entries: dict[str, _Entry] = {}
        spans = []
        for name, spec in header.items():
            dtype, shape, begin, end = _check_entry(self.path, name, spec)
            spans.append((begin, end, name))
            self._entries[name] = _Entry(
                TensorInfo(name, shape, dtype, self.path), data_start + begin, data_start + end
            )
        _check_coverage(self.path, spans, size - data_start)

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
            raise CheckpointError(f"{shown(self.path)}: no tensor named '{shown(name)}'") from None

    def locate(self, name: str) -> tuple[SafetensorsFile, int, int]:
        """(file, first byte, end) of a tensor's stored bytes, for reads of several tensors at once
        (``read_bytes_into``)."""
        e = self._entry(name)
        return self, e.begin, e.end

    def read_bytes_into(self, out: torch.Tensor, offset: int) -> None:
        buf = out.view(torch.uint8).numpy().data.cast("B") if out.numel() else memoryview(b"")
        try:
            # O_NONBLOCK: a FIFO put in the file's place since its header was read must not block
            # the open (its positioned reads then fail: a FIFO cannot seek)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise CheckpointError(f"{shown(self.path)}: cannot open ({e.strerror})") from None
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
                raise CheckpointError(f"{shown(self.path)}: cannot read ({e.strerror})") from None
            if got <= 0:
                raise CheckpointError(f"{shown(self.path)}: truncated while reading")
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
            raise CheckpointError(f"{shown(self.path)}: row range {lo}:{hi} outside tensor '{shown(name)}'")
        row_bytes = (e.end - e.begin) // shape[0] if shape[0] else 0
        out = empty_tensor((hi - lo, *shape[1:]), DTYPES[e.info.dtype])
        self.read_bytes_into(out, e.begin + lo * row_bytes)
        return out

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        n = self.info(name).shape[0]
        for r in rows:
            if not 0 <= r < n:
                raise CheckpointError(
                    f"{shown(self.path)}: row {r} outside tensor '{shown(name)}' ({n} rows)"
                )
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
                        f"tensor '{shown(name)}' is stored twice "
                        f"({shown(self._where[name].path.name)} and {shown(sf.path.name)})"
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
            p = check_shard_name(Path(index), s)
            refuse_special(p, "shard", CheckpointError)
            if not p.is_file():
                raise CheckpointError(f"{shown(index)}: names shard '{shown(s)}', which is missing")
            files.append(p)
        return cls(files, index=Path(index))

    def _check_index(self, index: Path) -> None:
        weight_map = read_weight_map(index)
        for name, shard in weight_map.items():
            sf = self._where.get(name)
            if sf is None:
                raise CheckpointError(
                    f"{shown(index)}: tensor '{shown(name)}' is not in shard '{shown(shard)}'"
                )
            if sf.path.name != shard:
                raise CheckpointError(
                    f"{shown(index)}: tensor '{shown(name)}' is indexed in '{shown(shard)}' "
                    f"but stored in '{shown(sf.path.name)}'"
                )
        extra = sorted(set(self._where) - set(weight_map))
        if extra:
            names = ", ".join(shown(n) for n in extra[:5])
            raise CheckpointError(f"{shown(index)}: shard tensors missing from the index: {names}")

    def names(self) -> list[str]:
        return list(self._where)

    def _file(self, name: str) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise CheckpointError(f"no tensor named '{shown(name)}' in this checkpoint") from None

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
