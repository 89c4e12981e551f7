"""bitsandbytes releases (``quant_method: bitsandbytes``), as transformers serialises them.

Layout facts from the bitsandbytes and transformers documentation:

- 4-bit (``load_in_4bit``, ``bnb_4bit_quant_type`` nf4 or fp4): ``X.weight`` uint8 [ceil(n/2), 1]
  holds the n = out*in 4-bit codes of the row-major weight, two per byte, the earlier code in the
  high nibble. ``X.weight.quant_map`` float32 [16] is the code book (the NF4 or FP4 values), and
  ``X.weight.absmax`` one scale per block of ``blocksize`` consecutive codes: ``W[i] =
  quant_map[code_i] * absmax[i // blocksize]``. With double quantization
  (``bnb_4bit_use_double_quant``) absmax is itself stored as uint8 codes into
  ``X.weight.nested_quant_map`` [256] with ``X.weight.nested_absmax`` per ``nested_blocksize``
  codes, plus ``nested_offset``: ``absmax[j] = nested_quant_map[a_j] * nested_absmax[j //
  nested_blocksize] + nested_offset``. ``X.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``)
  is a uint8 tensor holding a JSON object: quant_type, blocksize, dtype, shape and, when nested,
  nested_blocksize, nested_dtype, nested_offset.
- 8-bit (``load_in_8bit``, LLM.int8()): ``X.weight`` int8 [out, in], ``X.SCB`` float32 [out] (each
  row's absolute maximum) and optionally ``X.weight_format`` (0: row-major, the only layout
  written to files today): ``W[o, i] = weight[o, i] * SCB[o] / 127``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from huref.checkpoint.quant.source import Headers, QLinear, finite_scales, stored_shape
from huref.errors import CheckpointError
from huref.paths import shown

STATE_PREFIX = "weight.quant_state.bitsandbytes__"
QUANT_TYPES = ("nf4", "fp4")
MAX_STATE_BYTES = 4096  # the JSON is a few hundred bytes
CHUNK = 1 << 22  # packed bytes dequantized at a time (bounds the int64 index temporaries)


def _whole(v: Any, low: int = 1, high: int = 2**40) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def dequant_4bit(
    packed: torch.Tensor,
    quant_map: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    shape: tuple[int, int],
) -> torch.Tensor:
    """Float32 ``shape`` from two 4-bit codes per byte (high nibble first) and per-block absmax."""
    n = shape[0] * shape[1]
    flat = packed.reshape(-1)
    code = quant_map.to(torch.float32)
    scale = absmax.to(torch.float32)
    out = torch.empty(2 * flat.numel(), dtype=torch.float32)
    for lo in range(0, flat.numel(), CHUNK):
        b = flat[lo : lo + CHUNK].to(torch.int64)
        idx = torch.stack((b >> 4, b & 0xF), dim=1).reshape(-1)
        pos = torch.arange(2 * lo, 2 * lo + idx.numel(), dtype=torch.int64) // blocksize
        out[2 * lo : 2 * lo + idx.numel()] = code[idx] * scale[pos]
    return out[:n].reshape(shape)


def dequant_nested_absmax(
    codes: torch.Tensor, nested_map: torch.Tensor, nested_absmax: torch.Tensor, blocksize: int, offset: float
) -> torch.Tensor:
    """The float32 absmax of double-quantized 4-bit weights (see the module docstring)."""
    pos = torch.arange(codes.numel(), dtype=torch.int64) // blocksize
    a = nested_map.to(torch.float32)[codes.reshape(-1).to(torch.int64)] * nested_absmax.to(torch.float32)[pos]
    return a + offset


def dequant_int8(weight: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    """Float32 [out, in] = weight * SCB[out] / 127."""
    return weight.to(torch.float32) * (scb.to(torch.float32) / 127.0)[:, None]


class BnbCodec:
    """bitsandbytes 4-bit (nf4, fp4, optionally double-quantized) and 8-bit linears."""

    method = "bitsandbytes"

    def __init__(self, qcfg: dict[str, Any]) -> None:
        four, eight = qcfg.get("load_in_4bit") is True, qcfg.get("load_in_8bit") is True
        if four == eight:
            raise CheckpointError(
                "quantization_config: bitsandbytes needs exactly one of load_in_4bit and load_in_8bit set to true"
            )
        self.bits = 4 if four else 8
        self.quant_type = "int8"
        if four:
            qt = qcfg.get("bnb_4bit_quant_type", "fp4")
            if qt not in QUANT_TYPES:
                raise CheckpointError(
                    f"quantization_config: bnb_4bit_quant_type {shown(repr(qt))} is not nf4 or fp4"
                )
            self.quant_type = qt
        self.double = bool(qcfg.get("bnb_4bit_use_double_quant", False)) and four
        self._seen_double: bool | None = None

    def describe(self) -> str:
        if self.bits == 8:
            return "bitsandbytes 8-bit (LLM.int8, per-row absmax)"
        nested = ", double-quantized" if self._seen_double else ""
        return f"bitsandbytes 4-bit {self.quant_type}{nested}"

    def recognise(self, name: str, have: set[str], src: Headers) -> QLinear | None:
        if self.bits == 8:
            if not name.endswith(".SCB"):
                return None
            return self._int8(name[: -len("SCB")], have, src)
        if STATE_PREFIX not in name:
            return None
        pre, qt = name.split(STATE_PREFIX, 1)
        if qt != self.quant_type:
            raise CheckpointError(
                f"'{shown(name)}' is {shown(qt)}-quantized, config.json says {self.quant_type}"
            )
        return self._four(pre, name, have, src)

    def _int8(self, pre: str, have: set[str], src: Headers) -> QLinear:
        where = f"bitsandbytes linear '{shown(pre + 'weight')}'"
        if pre + "weight" not in have:
            raise CheckpointError(f"{where}: SCB without a weight")
        w = stored_shape(src, pre + "weight", "I8")
        scb = stored_shape(src, pre + "SCB", "F32", "F16", "BF16")
        if len(w) != 2 or scb != (w[0],):
            raise CheckpointError(f"{where}: inconsistent shapes (weight {list(w)}, SCB {list(scb)})")
        parts = {"weight": pre + "weight", "scb": pre + "SCB"}
        if pre + "weight_format" in have:
            fmt = src.read(pre + "weight_format")
            if fmt.numel() != 1 or int(fmt.reshape(-1)[0]) != 0:
                raise CheckpointError(f"{where}: weight_format {fmt.tolist()} is not 0 (row-major)")
            parts["format"] = pre + "weight_format"
        return QLinear(pre + "weight", (w[0], w[1]), parts)

    def _state(self, name: str, src: Headers) -> dict[str, Any]:
        shape = stored_shape(src, name, "U8")
        if len(shape) != 1 or not 0 < shape[0] <= MAX_STATE_BYTES:
            raise CheckpointError(f"'{shown(name)}' is not a bitsandbytes quant state ({list(shape)})")
        try:
            state = json.loads(bytes(src.read(name).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"'{shown(name)}' is not a JSON quant state: {shown(str(e))}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"'{shown(name)}' is not a JSON object")
        return state

    def _four(self, pre: str, state_name: str, have: set[str], src: Headers) -> QLinear:
        where = f"bitsandbytes linear '{shown(pre + 'weight')}'"
        st = self._state(state_name, src)
        shape, bs = st.get("shape"), st.get("blocksize")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_whole(x) for x in shape)):
            raise CheckpointError(f"{where}: quant state shape {shown(repr(shape))} is not [out, in]")
        if not _whole(bs, 1, 2**20):
            raise CheckpointError(f"{where}: quant state blocksize {shown(repr(bs))} is not a positive size")
        if st.get("quant_type") != self.quant_type:
            raise CheckpointError(f"{where}: quant state says {shown(repr(st.get('quant_type')))}")
        parts = {"weight": pre + "weight", "absmax": pre + "weight.absmax", "map": pre + "weight.quant_map"}
        nested = "nested_blocksize" in st
        if nested:
            parts |= {"nabsmax": pre + "weight.nested_absmax", "nmap": pre + "weight.nested_quant_map"}
        missing = [n for n in parts.values() if n not in have]
        if missing:
            raise CheckpointError(f"{where}: '{shown(missing[0])}' is missing")
        parts["state"] = state_name
        n = shape[0] * shape[1]
        n_abs = math.ceil(n / bs)
        ok = stored_shape(src, parts["weight"], "U8") in ((math.ceil(n / 2), 1), (math.ceil(n / 2),))
        ok = ok and stored_shape(src, parts["map"], "F32", "F16", "BF16") == (16,)
        if nested:
            nbs, off = st.get("nested_blocksize"), st.get("nested_offset")
            if not _whole(nbs, 1, 2**20) or not isinstance(off, (int, float)) or not math.isfinite(off):
                raise CheckpointError(f"{where}: bad nested_blocksize or nested_offset in its quant state")
            ok = ok and stored_shape(src, parts["absmax"], "U8") == (n_abs,)
            ok = ok and stored_shape(src, parts["nmap"], "F32", "F16", "BF16") == (256,)
            ok = ok and stored_shape(src, parts["nabsmax"], "F32", "F16", "BF16") == (math.ceil(n_abs / nbs),)
            self._seen_double = True
        else:
            ok = ok and stored_shape(src, parts["absmax"], "F32", "F16", "BF16") == (n_abs,)
        if not ok:
            raise CheckpointError(f"{where}: inconsistent shapes for {shape} in blocks of {bs}")
        return QLinear(pre + "weight", (shape[0], shape[1]), parts, detail=st)

    def dequantize(self, q: QLinear, t: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.bits == 8:
            finite_scales(q.weight_name, t["scb"])
            return dequant_int8(t["weight"], t["scb"])
        st: dict[str, Any] = q.detail  # type: ignore[assignment]
        if "nmap" in t:
            finite_scales(q.weight_name, t["map"], t["nmap"], t["nabsmax"])
            absmax = dequant_nested_absmax(
                t["absmax"], t["nmap"], t["nabsmax"], st["nested_blocksize"], float(st["nested_offset"])
            )
        else:
            finite_scales(q.weight_name, t["map"], t["absmax"])
            absmax = t["absmax"]
        return dequant_4bit(t["weight"], t["map"], absmax, st["blocksize"], q.shape)
