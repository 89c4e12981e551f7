"""GPTQ, AWQ and FP8 releases (layout facts from each format's documentation):

- GPTQ (``quant_method: gptq``): ``qweight`` int32 [in*bits/32, out], values packed as a
  little-endian bit stream along the input dimension (2/3/4/8 bits; 3-bit values straddle
  words); ``qzeros`` int32 [groups, out*bits/32] packed the same way along the output dimension;
  ``scales`` [groups, out]; optional ``g_idx`` [in] (the group of each input row, act-order /
  desc_act), else row i is in group i // group_size. ``W[o, i] = scales[g, o] * (q[i, o] - z[g, o])``
  with ``g = g_idx[i]``; the classic format stores ``z - 1`` (so ``z = stored + 1``), the v2 format
  (``checkpoint_format: gptq_v2``) stores ``z`` itself.
- AWQ GEMM (``quant_method: awq``): ``qweight`` int32 [in, out/8], eight 4-bit values per word
  along the output dimension in the interleaved order 0, 2, 4, 6, 1, 3, 5, 7 (nibble k holds
  column ``8*j + ORDER[k]``); ``qzeros`` int32 [groups, out/8] packed the same way; ``scales``
  [groups, out]; ``W[o, i] = scales[i // group, o] * (q[i, o] - z[i // group, o])``.
- FP8 (``quant_method: fp8``): ``weight`` float8_e4m3fn [out, in] with ``weight_scale_inv``
  either per block (``weight_block_size`` [bo, bi]: shape [ceil(out/bo), ceil(in/bi)]) or one
  scalar per tensor; ``W = weight * scale_inv`` broadcast over its block. Edge blocks are ragged
  (DeepSeek-V3's weight documentation: a block short of bo x bi is zero-padded to compute its
  scale, the padding dropped), so the last block row/column covers only what is left. Tensors
  kept unquantized (norms, embeddings, the router, the output head) are stored in bf16 with no
  scale; an fp8 tensor without its ``weight_scale_inv`` is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from huref.checkpoint.quant.source import Headers, QLinear, expand_blocks, finite_scales, stored_shape
from huref.errors import CheckpointError
from huref.paths import shown

GPTQ_BITS = (2, 3, 4, 8)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a word holds column 8*j + AWQ_ORDER[k]
METHODS = ("gptq", "awq", "fp8")


@dataclass(frozen=True)
class QuantScheme:
    """What a ``quantization_config`` says, checked."""

    method: str  # gptq | awq | fp8
    bits: int
    group_size: int  # -1: one group over the whole input dimension
    desc_act: bool = False
    sym: bool = True
    zero_plus_one: bool = True  # GPTQ classic format stores zero points minus one
    block: tuple[int, int] | None = None  # fp8 weight_block_size

    def describe(self) -> str:
        if self.method == "fp8":
            how = f"{self.block[0]}x{self.block[1]} blocks" if self.block else "per-tensor scale"
            return f"fp8 (e4m3) 8-bit, {how}"
        group = "per-channel" if self.group_size <= 0 else f"group {self.group_size}"
        parts = [f"{self.method} {self.bits}-bit", group]
        if self.method == "gptq":
            parts.append("act-order" if self.desc_act else "static order")
            parts.append("sym" if self.sym else "asym")
            if not self.zero_plus_one:
                parts.append("v2 zero points")
        return ", ".join(parts)


def _int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"quantization_config: '{key}' must be an integer, not {shown(repr(v))}")
    return v


def parse_scheme(qcfg: Any) -> QuantScheme:
    """The checked quantization scheme of a config.json ``quantization_config``."""
    if not isinstance(qcfg, dict):
        raise CheckpointError("config.json: quantization_config is not a JSON object")
    method = qcfg.get("quant_method")
    method = str(method).lower()
    if method == "fp8":
        fmt = qcfg.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise CheckpointError(
                f"quantization_config: fp8 format {shown(repr(fmt))} is not supported (e4m3 only)"
            )
        blk = qcfg.get("weight_block_size")
        if blk is None:
            return QuantScheme("fp8", 8, -1)
        if (
            not isinstance(blk, list)
            or len(blk) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 < b <= 2**16 for b in blk)
        ):
            raise CheckpointError(f"quantization_config: bad weight_block_size {shown(repr(blk))}")
        return QuantScheme("fp8", 8, -1, block=(blk[0], blk[1]))
    bits = _int(qcfg, "bits" if method == "gptq" else "w_bit" if "w_bit" in qcfg else "bits")
    group = _int(qcfg, "group_size" if "group_size" in qcfg else "q_group_size", -1)
    if group == 0 or group < -1:
        raise CheckpointError(f"quantization_config: bad group_size {group}")
    if method == "awq":
        version = str(qcfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise CheckpointError(
                f"quantization_config: AWQ version {shown(repr(version))} is not supported (gemm)"
            )
        if bits != 4:
            raise CheckpointError(f"quantization_config: AWQ with {bits} bits is not supported (4 only)")
        return QuantScheme("awq", 4, group)
    if bits not in GPTQ_BITS:
        raise CheckpointError(f"quantization_config: GPTQ with {bits} bits is not supported ({GPTQ_BITS})")
    fmt = str(qcfg.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(
            f"quantization_config: GPTQ checkpoint_format {shown(repr(fmt))} is not supported"
        )
    return QuantScheme(
        "gptq",
        bits,
        group,
        desc_act=bool(qcfg.get("desc_act", False)),
        sym=bool(qcfg.get("sym", True)),
        zero_plus_one=fmt == "gptq",
    )


# ---------------------------------------------------------------- pure kernels


def unpack_bits(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """``count`` unsigned ``bits``-bit values per column from int32 ``words`` [n, cols], read as a
    little-endian bit stream down each column (value k starts at bit k*bits) -> int64 [count, cols]."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    off = torch.arange(count, dtype=torch.int64) * bits
    word, shift = off // 32, off % 32
    lo = w[word] >> shift[:, None]
    spill = (shift + bits > 32) & (word + 1 < w.shape[0])
    if bool(spill.any()):
        nxt = w[torch.clamp(word + 1, max=w.shape[0] - 1)] << (32 - shift)[:, None]
        lo = torch.where(spill[:, None], lo | nxt, lo)
    return lo & ((1 << bits) - 1)


def dequant_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    zero_plus_one: bool,
) -> torch.Tensor:
    """Float32 [out, in] from GPTQ tensors (see the module docstring)."""
    n_in, n_out = g_idx.shape[0], scales.shape[1]
    q = unpack_bits(qweight, bits, n_in)  # [in, out]
    z = unpack_bits(qzeros.t(), bits, n_out).t()  # [groups, out]
    if zero_plus_one:
        z = z + 1
    g = g_idx.to(torch.int64)
    w = (q - z[g]).to(torch.float32) * scales.to(torch.float32)[g]
    return w.t().contiguous()


def _awq_unpack(words: torch.Tensor) -> torch.Tensor:
    """int32 [r, c] -> int64 [r, 8c] with AWQ's interleaved nibble order undone."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    nib = torch.stack([(w >> (4 * k)) & 0xF for k in range(8)], dim=-1)  # [r, c, 8]: nibble k
    out = torch.empty_like(nib)
    out[..., list(AWQ_ORDER)] = nib  # nibble k holds column AWQ_ORDER[k]
    return out.reshape(w.shape[0], -1)


def dequant_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int
) -> torch.Tensor:
    """Float32 [out, in] from AWQ GEMM tensors (see the module docstring)."""
    q = _awq_unpack(qweight)  # [in, out]
    z = _awq_unpack(qzeros)  # [groups, out]
    g = torch.arange(q.shape[0]) // group
    w = (q - z[g]).to(torch.float32) * scales.to(torch.float32)[g]
    return w.t().contiguous()


def dequant_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """Float32 [out, in] = weight * scale_inv broadcast over its block (or the whole tensor)."""
    w = weight.to(torch.float32)
    s = scale_inv.to(torch.float32)
    if block is None or s.numel() == 1:
        return w * s.reshape(())
    return w * expand_blocks(s, (w.shape[0], w.shape[1]), block)


# ---------------------------------------------------------------- the codec


class ClassicCodec:
    """GPTQ, AWQ and FP8 (``quant_method`` gptq | awq | fp8) as a codec of QuantizedSource."""

    def __init__(self, qcfg: Any) -> None:
        self.scheme = parse_scheme(qcfg)
        self.method = self.scheme.method

    def describe(self) -> str:
        return self.scheme.describe()

    def recognise(self, name: str, have: set[str], src: Headers) -> QLinear | None:
        s = self.scheme
        if s.method in ("gptq", "awq"):
            if not name.endswith(".qweight"):
                return None
            pre = name[: -len("qweight")]
            parts = {r: pre + r for r in ("qweight", "qzeros", "scales", "g_idx") if pre + r in have}
            for r in ("qzeros", "scales"):
                if r not in parts:
                    raise CheckpointError(f"{s.method} tensor '{shown(name)}' has no '{shown(pre + r)}'")
            return self._check_int(pre, parts, src)
        if not name.endswith(".weight_scale_inv"):
            # an fp8 tensor means nothing without its scales: read raw, it would pass for weights
            # off by the block scale (releases keep norms, embeddings, routers and heads unquantized)
            if src.info(name).dtype in ("F8_E4M3", "F8_E5M2") and name + "_scale_inv" not in have:
                raise CheckpointError(f"fp8 tensor '{shown(name)}' has no '{shown(name + '_scale_inv')}'")
            return None
        pre = name[: -len("weight_scale_inv")]
        if pre + "weight" not in have:
            raise CheckpointError(f"fp8 scale '{shown(name)}' has no weight '{shown(pre + 'weight')}'")
        return self._check_fp8(pre, {"weight": pre + "weight", "scale": name}, src)

    def _check_int(self, pre: str, parts: dict[str, str], src: Headers) -> QLinear:
        s = self.scheme
        bad = f"{s.method} linear '{shown(pre + 'weight')}': inconsistent shapes"
        qw = stored_shape(src, parts["qweight"], "I32")
        qz = stored_shape(src, parts["qzeros"], "I32")
        sc = stored_shape(src, parts["scales"])
        if len(qw) != 2 or len(qz) != 2 or len(sc) != 2:
            raise CheckpointError(f"{bad} (2-d tensors expected)")
        n_groups, n_out = sc
        if s.method == "gptq":
            if qw[0] * 32 % s.bits:
                raise CheckpointError(f"{bad} ({qw[0]} packed rows do not hold {s.bits}-bit values evenly)")
            n_in = qw[0] * 32 // s.bits
            ok = qw[1] == n_out and qz == (n_groups, math.ceil(n_out * s.bits / 32))
        else:
            n_in = qw[0]
            ok = qw[1] * 8 == n_out and qz == (n_groups, qw[1])
        if "g_idx" in parts:
            ok = ok and stored_shape(src, parts["g_idx"]) == (n_in,)
        elif s.group_size > 0:
            ok = ok and n_groups == math.ceil(n_in / s.group_size)
        else:
            ok = ok and n_groups == 1
        if not ok:
            raise CheckpointError(
                f"{bad} for {s.bits}-bit (qweight {list(qw)}, qzeros {list(qz)}, scales {list(sc)})"
            )
        return QLinear(pre + "weight", (n_out, n_in), parts)

    def _check_fp8(self, pre: str, parts: dict[str, str], src: Headers) -> QLinear:
        bad = f"fp8 linear '{shown(pre + 'weight')}': inconsistent shapes"
        w = stored_shape(src, parts["weight"], "F8_E4M3")
        sc = stored_shape(src, parts["scale"])
        if len(w) != 2:
            raise CheckpointError(f"{bad} (weight {list(w)} is not 2-d)")
        blk = self.scheme.block
        per_tensor = math.prod(sc) == 1
        if not per_tensor and (blk is None or sc != (math.ceil(w[0] / blk[0]), math.ceil(w[1] / blk[1]))):
            raise CheckpointError(f"{bad} (weight {list(w)}, weight_scale_inv {list(sc)}, blocks {blk})")
        return QLinear(pre + "weight", (w[0], w[1]), parts)

    def dequantize(self, q: QLinear, t: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.scheme
        name = q.weight_name
        scale = t["scales"] if "scales" in t else t["scale"]
        finite_scales(name, scale)
        if s.method == "fp8":
            return dequant_fp8(t["weight"], scale, s.block)
        if s.method == "awq":
            return dequant_awq(
                t["qweight"], t["qzeros"], scale, s.group_size if s.group_size > 0 else q.shape[1]
            )
        n_in = q.shape[1]
        if "g_idx" in t:
            g_idx = t["g_idx"].to(torch.int64)
            if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= scale.shape[0]):
                raise CheckpointError(f"gptq linear '{shown(name)}': g_idx names a group that does not exist")
        else:
            g_idx = torch.arange(n_in) // (s.group_size if s.group_size > 0 else n_in)
        return dequant_gptq(t["qweight"], t["qzeros"], scale, g_idx, s.bits, s.zero_plus_one)
