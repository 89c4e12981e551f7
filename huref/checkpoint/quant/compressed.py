"""compressed-tensors releases (``quant_method: compressed-tensors``: llm-compressor's output).

Layout facts from the compressed-tensors documentation. ``quantization_config.config_groups``
maps group names to a scheme: ``targets`` (a module name, a class name such as ``Linear``, or
``re:PATTERN`` matched from the start of the module name) and ``weights`` (``num_bits``, ``type``
int | float, ``symmetric``, ``strategy`` tensor | channel | group | block, ``group_size``,
``block_structure`` [bo, bi]); ``ignore`` names modules left in float; ``format`` (per group, else
for the whole model) says how a quantized weight is stored:

- ``pack-quantized``: ``X.weight_packed`` int32 [out, ceil(in*bits/32)], each row a little-endian
  bit stream of ``bits``-bit values (value i at bit i*bits), stored as ``q + 2**(bits-1)`` for the
  signed value q; ``X.weight_shape`` [2] the float shape; an asymmetric zero point
  ``X.weight_zero_point`` packed the same way down the output dimension (int32
  [ceil(out*bits/32), groups]) or, in older files, int8 with the scale's shape.
- ``int-quantized`` / ``naive-quantized``: ``X.weight`` int8 [out, in] holding q itself.
- ``float-quantized``: ``X.weight`` float8_e4m3fn [out, in].

In every format ``W = (q - zero_point) * weight_scale``, the scale and zero point broadcast by the
strategy: ``tensor`` one value, ``channel`` [out, 1], ``group`` [out, ceil(in/group_size)] with
input column i in group ``weight_g_idx[i]`` when that tensor is stored (activation order) and
``i // group_size`` otherwise, ``block`` [ceil(out/bo), ceil(in/bi)]. Activation scales
(``X.input_scale`` and the like) do not change the weights and are hidden with their linear.
Sparse compression (``sparsity_config``), the 4-bit float formats (nvfp4, mxfp*), marlin-24 and
``dense`` (float weights beside scales) are refused in one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from huref.checkpoint.quant.classic import unpack_bits
from huref.checkpoint.quant.source import (
    Headers,
    QLinear,
    expand_blocks,
    expand_groups,
    finite_scales,
    stored_shape,
)
from huref.errors import CheckpointError
from huref.paths import shown

FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "float-quantized")
STRATEGIES = ("tensor", "channel", "group", "block")
ACTIVATION_PARTS = ("input_scale", "input_zero_point", "output_scale", "output_zero_point")
MAX_PATTERN = 256  # a target regex longer than this is refused rather than run
# A repeated group that itself repeats, as in (a+)+: the shape of catastrophic backtracking, which
# could hang a scan on a crafted config. Real targets (re:.*mlp\.(gate|up)_proj) never need it.
_NESTED_REPEAT = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")
FLOATS = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class WeightScheme:
    """One config group's weight quantization, checked."""

    format: str
    bits: int
    kind: str  # int | float
    symmetric: bool
    strategy: str
    group_size: int = 0
    block: tuple[int, int] | None = None

    def describe(self) -> str:
        how = {
            "tensor": "per-tensor",
            "channel": "per-channel",
            "group": f"group {self.group_size}",
            "block": f"{self.block[0]}x{self.block[1]} blocks" if self.block else "blocks",
        }[self.strategy]
        kind = "fp8 (e4m3)" if self.kind == "float" else f"int{self.bits}"
        sym = "" if self.kind == "float" else (", sym" if self.symmetric else ", asym")
        return f"{self.format} {kind} {self.bits}-bit, {how}{sym}"


def _size(v: Any, what: str, high: int = 2**20) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= high:
        raise CheckpointError(
            f"quantization_config: {what} must be a whole number from 1 to {high}, not {shown(repr(v))}"
        )
    return v


def parse_group(name: str, group: Any, default_format: Any) -> WeightScheme:
    where = f"quantization_config: config group '{shown(str(name))}'"
    if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
        raise CheckpointError(f"{where} has no 'weights' object")
    w = group["weights"]
    fmt = group.get("format") or default_format
    if fmt not in FORMATS:
        raise CheckpointError(
            f"{where}: format {shown(repr(fmt))} is not supported (huref reads {', '.join(FORMATS)})"
        )
    kind = w.get("type", "int")
    bits = _size(w.get("num_bits", 8), "num_bits", 8)
    strategy = w.get("strategy", "tensor")
    if strategy not in STRATEGIES:
        raise CheckpointError(f"{where}: weight strategy {shown(repr(strategy))} is not supported")
    if kind == "float":
        if bits != 8 or fmt not in ("float-quantized", "naive-quantized"):
            raise CheckpointError(f"{where}: float weights are read as 8-bit float-quantized only")
    elif kind != "int" or (fmt == "float-quantized") or (fmt != "pack-quantized" and bits != 8):
        raise CheckpointError(f"{where}: {shown(str(kind))} {bits}-bit weights in {fmt} are not supported")
    symmetric = w.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise CheckpointError(f"{where}: 'symmetric' must be true or false")
    group_size, block = 0, None
    if strategy == "group":
        group_size = _size(w.get("group_size"), "group_size")
    if strategy == "block":
        bs = w.get("block_structure")
        if not isinstance(bs, list) or len(bs) != 2:
            raise CheckpointError(f"{where}: block_structure must be [rows, columns]")
        block = (_size(bs[0], "block_structure"), _size(bs[1], "block_structure"))
    return WeightScheme(fmt, bits, kind, symmetric, strategy, group_size, block)


def _targets(name: str, group: dict[str, Any]) -> list[str]:
    t = group.get("targets", [])
    if not isinstance(t, list) or not all(isinstance(x, str) for x in t) or not t:
        raise CheckpointError(
            f"quantization_config: config group '{shown(str(name))}' needs a list of targets"
        )
    for x in t:
        if x.startswith("re:"):
            if len(x) > MAX_PATTERN:
                raise CheckpointError(f"quantization_config: target pattern longer than {MAX_PATTERN}")
            if _NESTED_REPEAT.search(x):
                raise CheckpointError(
                    f"quantization_config: target pattern {shown(repr(x))} repeats a repeated group"
                )
            try:
                re.compile(x[3:])
            except re.error as e:
                raise CheckpointError(
                    f"quantization_config: bad target pattern {shown(repr(x))}: {e}"
                ) from None
    return t


def _matches(module: str, target: str) -> bool:
    """A target as compressed-tensors reads it; a class name matches here only if it is 'Linear'
    (every stored quantized weight belongs to a linear layer)."""
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == module or target == "Linear"


class CompressedTensorsCodec:
    """compressed-tensors int (packed or int8) and fp8 weights, per config group."""

    method = "compressed-tensors"

    def __init__(self, qcfg: dict[str, Any]) -> None:
        sparsity = qcfg.get("sparsity_config")
        if isinstance(sparsity, dict) and sparsity.get("format", "dense") != "dense":
            raise CheckpointError(
                f"quantization_config: sparse compression {shown(repr(sparsity.get('format')))} is not supported"
            )
        groups = qcfg.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise CheckpointError("quantization_config: compressed-tensors needs config_groups")
        self.groups = [(parse_group(n, g, qcfg.get("format")), _targets(n, g)) for n, g in groups.items()]
        self.ignore = qcfg.get("ignore") or []
        if not isinstance(self.ignore, list) or not all(isinstance(x, str) for x in self.ignore):
            raise CheckpointError("quantization_config: 'ignore' must be a list of module names")
        self._used: dict[WeightScheme, None] = {}

    def describe(self) -> str:
        used = list(self._used) or [g for g, _ in self.groups]
        return "compressed-tensors " + "; ".join(s.describe() for s in used)

    def scheme_for(self, module: str) -> WeightScheme:
        """The scheme compressed-tensors applies: an exact name before a pattern before a class."""
        ranked = []
        for scheme, targets in self.groups:
            for t in targets:
                if _matches(module, t):
                    ranked.append((0 if t == module else 1 if t.startswith("re:") else 2, scheme))
        if not ranked:
            raise CheckpointError(f"quantized module '{shown(module)}' matches no config group's targets")
        return min(ranked, key=lambda r: r[0])[1]

    def recognise(self, name: str, have: set[str], src: Headers) -> QLinear | None:
        if not name.endswith(".weight_scale"):
            return None
        pre = name[: -len("weight_scale")]
        module = pre[:-1]
        s = self.scheme_for(module)
        self._used[s] = None
        where = f"compressed-tensors linear '{shown(pre + 'weight')}'"
        parts = {"scale": name}
        for r in ("weight_zero_point", "weight_g_idx", "weight_shape", *ACTIVATION_PARTS):
            if pre + r in have:
                parts[r] = pre + r
        stored = "weight_packed" if s.format == "pack-quantized" else "weight"
        if pre + stored not in have:
            raise CheckpointError(f"{where}: '{shown(pre + stored)}' is missing ({s.format})")
        parts["q"] = pre + stored
        if not s.symmetric and "weight_zero_point" not in parts:
            raise CheckpointError(f"{where}: asymmetric but no weight_zero_point")
        if s.format == "pack-quantized":
            if "weight_shape" not in parts:
                raise CheckpointError(f"{where}: weight_packed without weight_shape")
            ws = src.read(parts["weight_shape"])
            if ws.dtype.is_floating_point or ws.numel() != 2 or not all(0 < int(x) <= 2**31 for x in ws):
                raise CheckpointError(f"{where}: weight_shape {ws.tolist()} is not a 2-d shape")
            out, n_in = (int(x) for x in ws)
            if stored_shape(src, parts["q"], "I32") != (out, math.ceil(n_in * s.bits / 32)):
                raise CheckpointError(
                    f"{where}: weight_packed does not hold a {out}x{n_in} {s.bits}-bit weight"
                )
        else:
            q = stored_shape(src, parts["q"], "F8_E4M3" if s.kind == "float" else "I8")
            if len(q) != 2:
                raise CheckpointError(f"{where}: weight {list(q)} is not 2-d")
            out, n_in = q
        self._check_scales(where, s, (out, n_in), parts, src)
        return QLinear(pre + "weight", (out, n_in), parts, detail=s)

    def _check_scales(
        self, where: str, s: WeightScheme, shape: tuple[int, int], parts: dict[str, str], src: Headers
    ) -> None:
        out, n_in = shape
        expect = {
            "tensor": (1,),
            "channel": (out, 1),
            "group": (out, math.ceil(n_in / max(s.group_size, 1))),
            "block": (math.ceil(out / s.block[0]), math.ceil(n_in / s.block[1])) if s.block else (),
        }[s.strategy]
        sc = stored_shape(src, parts["scale"], *FLOATS)
        flat_ok = s.strategy in ("tensor", "channel") and math.prod(sc) == math.prod(
            expect
        )  # [out] or [1, 1]
        if sc != expect and not flat_ok:
            raise CheckpointError(
                f"{where}: weight_scale {list(sc)} is not {list(expect)} for {s.strategy} scales"
            )
        if "weight_g_idx" in parts and (
            s.strategy != "group" or stored_shape(src, parts["weight_g_idx"], "I32", "I64") != (n_in,)
        ):
            raise CheckpointError(f"{where}: weight_g_idx does not give a group for each of {n_in} inputs")
        if "weight_zero_point" in parts:
            zp = src.info(parts["weight_zero_point"])
            packed = (math.ceil(sc[0] * s.bits / 32), *sc[1:])
            if not (
                (zp.dtype == "I8" and math.prod(zp.shape) == math.prod(sc))
                or (zp.dtype == "I32" and s.format == "pack-quantized" and zp.shape == packed)
            ):
                raise CheckpointError(
                    f"{where}: weight_zero_point {zp.dtype} {list(zp.shape)} does not fit scales {list(sc)}"
                )

    def dequantize(self, q: QLinear, t: dict[str, torch.Tensor]) -> torch.Tensor:
        s: WeightScheme = q.detail  # type: ignore[assignment]
        n_in = q.shape[1]
        scale = t["scale"].to(torch.float32)
        finite_scales(q.weight_name, scale)
        if s.format == "pack-quantized":
            offset = 1 << (s.bits - 1)
            w = (unpack_bits(t["q"].t(), s.bits, n_in).t() - offset).to(torch.float32)
        else:
            w = t["q"].to(torch.float32)
        zp = t.get("weight_zero_point")
        if zp is not None:
            if zp.dtype == torch.int32:  # packed down the output dimension, offset like the weights
                words = zp.reshape(zp.shape[0], -1)
                zp = unpack_bits(words, s.bits, scale.reshape(scale.shape[0], -1).shape[0]) - (
                    1 << (s.bits - 1)
                )
            zp = zp.to(torch.float32).reshape(scale.shape)
        return _broadcast_apply(w, scale, zp, s, t.get("weight_g_idx"), q.weight_name)


def _broadcast_apply(
    w: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor | None,
    s: WeightScheme,
    g_idx: torch.Tensor | None,
    name: str,
) -> torch.Tensor:
    """(w - zp) * scale with scale and zero point broadcast by the strategy."""
    out, n_in = w.shape
    if s.strategy in ("tensor", "channel"):
        shape = (1, 1) if s.strategy == "tensor" else (out, 1)
        scale = scale.reshape(shape)
        zp = None if zp is None else zp.reshape(shape)
    elif s.strategy == "block":
        assert s.block is not None
        scale = expand_blocks(scale, (out, n_in), s.block)
        zp = None if zp is None else expand_blocks(zp, (out, n_in), s.block)
    elif g_idx is not None:
        g = g_idx.to(torch.int64)
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= scale.shape[1]):
            raise CheckpointError(
                f"compressed-tensors linear '{shown(name)}': weight_g_idx names a group that does not exist"
            )
        scale = scale[:, g]
        zp = None if zp is None else zp[:, g]
    else:
        scale = expand_groups(scale, n_in, s.group_size)
        zp = None if zp is None else expand_groups(zp, n_in, s.group_size)
    if zp is not None:
        w = w - zp
    return w * scale
