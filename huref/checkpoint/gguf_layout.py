"""The bounds-checked walk over a GGUF file's header, before gguf's own reader sees the file.

Every length and count in the header is checked against the bytes left before it is used, and
every tensor's data must lie inside the file; a file that fails is refused with one error naming
what is wrong and where. The metadata value types, as numbered in the file format, live here too.
"""

from __future__ import annotations

import math
import struct
import sys
from enum import IntEnum
from pathlib import Path

from huref.errors import CheckpointError
from huref.paths import shown


class ValueType(IntEnum):
    """GGUF metadata value types, as numbered in the file format."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_BYTES: dict[int, int] = {
    **dict.fromkeys((ValueType.UINT8, ValueType.INT8, ValueType.BOOL), 1),
    **dict.fromkeys((ValueType.UINT16, ValueType.INT16), 2),
    **dict.fromkeys((ValueType.UINT32, ValueType.INT32, ValueType.FLOAT32), 4),
    **dict.fromkeys((ValueType.UINT64, ValueType.INT64, ValueType.FLOAT64), 8),
}
_STRING, _ARRAY, _UINT32 = ValueType.STRING, ValueType.ARRAY, ValueType.UINT32


# Bounds of the metadata walk. gguf's reader keeps a numpy object per array element, so the
# elements of all arrays together are bounded (~1 GB of those objects at most); real files hold
# under 1.5M (a 256k vocabulary with its scores and types, or 128k tokens and 280k merges).
MAX_ARRAY_ITEMS = 1 << 22
MAX_ARRAY_NESTING = 8  # arrays of arrays; llama.cpp writes flat ones
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = 2**63 - 1  # torch and numpy index with signed 64-bit integers


class _Walk:
    """A bounds-checked walk over a GGUF file's header: every length and count is checked against
    the bytes left before it is used. gguf's own reader reads past the end of a short file as
    empty arrays, so a corrupt count or length there becomes an endless loop or a huge allocation
    rather than an error; this walk refuses such a file first."""

    def __init__(
        self, path: Path, buf: memoryview, order: str, quant_sizes: dict[int, tuple[int, int]]
    ) -> None:
        self.path, self.buf, self.order, self.pos = path, buf, order, 0
        self.quant_sizes = quant_sizes  # tensor type -> (values per block, bytes per block)
        self.items = 0
        self.alignment = 32  # GGUF's default, unless general.alignment says otherwise

    def fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"{shown(self.path)}: corrupt GGUF file ({why})")

    def take(self, n: int, what: str) -> int:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def uint(self, size: int, what: str) -> int:
        fmt = self.order + {4: "I", 8: "Q"}[size]
        return int(struct.unpack_from(fmt, self.buf, self.take(size, what))[0])

    def text(self, what: str) -> str:
        n = self.uint(8, f"length of {what}")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {start} is not UTF-8") from None

    def value(self, vtype: int, label: str, depth: int = 0) -> None:
        """Step over one metadata value of type ``vtype``; ``label`` names its key for errors."""
        if vtype in _SCALAR_BYTES:
            self.take(_SCALAR_BYTES[vtype], f"value of {label}")
        elif vtype == _STRING:
            n = self.uint(8, f"length of {label}")
            self.take(n, f"value of {label}")
        elif vtype == _ARRAY:
            self.array(label, depth)
        else:
            raise self.fail(f"metadata {label} has unknown value type {vtype}")

    def array(self, label: str, depth: int) -> None:
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"metadata {label} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
        item = self.uint(4, f"item type of {label}")
        count = self.uint(8, f"length of {label}")
        smallest = _SCALAR_BYTES.get(item, 8 if item == _STRING else 12)  # an array: type and length
        if count * smallest > len(self.buf) - self.pos:
            raise self.fail(
                f"array {label} of {count} elements at byte {self.pos} runs past the end of the file"
            )
        self.items += count
        if self.items > MAX_ARRAY_ITEMS:
            raise self.fail(f"metadata arrays hold more than {MAX_ARRAY_ITEMS} elements in all")
        if item in _SCALAR_BYTES:
            self.take(count * _SCALAR_BYTES[item], f"array {label}")
            return
        for _ in range(count):
            self.value(item, label, depth + 1)

    def metadata(self, count: int) -> None:
        keys: set[str] = set()
        for _ in range(count):
            key = self.text("metadata key")
            label = f"'{shown(key)}'"
            if key in keys:
                raise self.fail(f"metadata key {label} appears twice")
            keys.add(key)
            vtype = self.uint(4, f"type of {label}")
            start = self.pos
            self.value(vtype, label)
            if key == "general.alignment":
                self.alignment = self._alignment(vtype, start)

    def _alignment(self, vtype: int, start: int) -> int:
        value = struct.unpack_from(self.order + "I", self.buf, start)[0] if vtype == _UINT32 else 0
        if value <= 0 or value & (value - 1):
            raise self.fail("general.alignment must be a power of two stored as UINT32")
        return int(value)

    def tensor_infos(self, count: int) -> list[tuple[str, int, int]]:
        """(name, offset in the data section, bytes) of every tensor, each checked."""
        out: list[tuple[str, int, int]] = []
        names: set[str] = set()
        for _ in range(count):
            name = self.text("tensor name")
            where = f"tensor '{shown(name)}'"
            if name in names:
                raise self.fail(f"{where} appears twice")
            names.add(name)
            n_dims = self.uint(4, f"dimension count of {where}")
            if not 1 <= n_dims <= MAX_TENSOR_DIMS:
                raise self.fail(f"{where} has {n_dims} dimensions (1 to {MAX_TENSOR_DIMS})")
            dims = [self.uint(8, f"dimensions of {where}") for _ in range(n_dims)]
            if not all(1 <= d <= MAX_DIM for d in dims):
                raise self.fail(f"{where} has a dimension of 0 or beyond 2**63-1: {dims}")
            offset, nbytes = self._tensor_bytes(where, dims)
            out.append((name, offset, nbytes))
        return out

    def _tensor_bytes(self, where: str, dims: list[int]) -> tuple[int, int]:
        raw_type = self.uint(4, f"type of {where}")
        offset = self.uint(8, f"offset of {where}")
        sizes = self.quant_sizes.get(raw_type)
        if sizes is None:
            raise self.fail(f"{where} has unknown tensor type {raw_type}")
        block, type_size = sizes
        if dims[0] % block:
            raise self.fail(f"{where}: rows of {dims[0]} values are not whole blocks of {block}")
        return offset, math.prod(dims) // block * type_size


def check_layout(path: Path, buf: memoryview, quant_sizes: dict[int, tuple[int, int]]) -> None:
    """Refuse a GGUF file whose header does not describe data inside the file."""
    if len(buf) < 24 or bytes(buf[:4]) != b"GGUF":
        raise CheckpointError(f"{shown(path)}: corrupt GGUF file (no GGUF magic)")
    native, swapped = ("<", ">") if sys.byteorder == "little" else (">", "<")
    version = struct.unpack_from(native + "I", buf, 4)[0]
    order = swapped if version & 0xFFFF == 0 else native  # how gguf's reader tells the byte order
    walk = _Walk(path, buf, order, quant_sizes)
    walk.take(4, "magic")
    version = walk.uint(4, "version")
    if version not in (2, 3):
        raise walk.fail(f"version {version}; versions 2 and 3 are read")
    n_tensors = walk.uint(8, "tensor count")
    n_kv = walk.uint(8, "metadata count")
    walk.metadata(n_kv)
    infos = walk.tensor_infos(n_tensors)
    data_start = -(-walk.pos // walk.alignment) * walk.alignment
    for name, offset, nbytes in infos:
        if data_start + offset + nbytes > len(buf):
            raise walk.fail(
                f"tensor '{shown(name)}' ends at byte {data_start + offset + nbytes}, past the end of "
                f"the file ({len(buf)} bytes)"
            )
