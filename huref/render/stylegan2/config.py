"""Checks on a StyleGAN2 generator configuration, before anything is built from it.

A checkpoint's ``_init_kwargs`` (or a converted file's JSON metadata) decide every tensor shape,
so a few hundred bytes of configuration could otherwise ask for gigabytes (``w_dim=200000``) or
crash the constructors (``channel_max=0`` divides by zero, ``num_layers=2.5``). Every value is
checked here for its type and a sane range; the bounds are several times the largest official
release (AFHQ/FFHQ: z_dim = w_dim = 512, 8 mapping layers, channel_base 32768, channel_max 512,
resolution up to 1024), so no real generator comes near them. The loaders then build the
network on the meta device (shapes, no memory), compare its tensors with the checkpoint's,
and only then allocate: the memory a load costs is bounded by the tensors the file holds.
"""

from __future__ import annotations

import math
from typing import Any

from huref.errors import RenderError

MAX_DIM = 4096  # z_dim, w_dim, mapping layer widths (official: 512)
MAX_RESOLUTION = 2048  # img_resolution, a power of two (official: up to 1024)
MAX_IMG_CHANNELS = 4  # grey, RGB (RGBA at most)
MAX_MAPPING_LAYERS = 32  # official: 8 (2 in some conditional configs)
MAX_CHANNEL_BASE = 1 << 20  # official: 16384 or 32768
MAX_CHANNEL_MAX = 4096  # official: 512
MAX_KERNEL = 7  # synthesis conv kernel, odd (official: 3)
MAX_FILTER_TAPS = 16  # resample filter (official: [1, 3, 3, 1])
MAX_FP16_RES = 16
# parameters and buffers of the whole network; the official 1024 px generator has ~30M
MAX_PARAMETERS = 200_000_000

MAPPING_KEYS = frozenset(
    {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
)
SYNTHESIS_KEYS = frozenset(
    {
        "channel_base",
        "channel_max",
        "num_fp16_res",
        "conv_clamp",
        "architecture",
        "resample_filter",
        "use_noise",
        "activation",
        "kernel_size",
        "fp16_channels_last",
    }
)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RenderError(f"generator {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RenderError(f"generator {name} = {value} is outside {lo}..{hi}")
    return value


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RenderError(f"generator {name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise RenderError(f"generator {name} = {value} is outside {lo:g}..{hi:g}")
    return float(value)


def _optional(check: Any, name: str, value: Any, *bounds: Any) -> None:
    if value is not None:
        check(name, value, *bounds)


def _type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        raise RenderError(f"generator {name} must be a {kind.__name__}, got {value!r}")


def _kwargs(name: str, value: Any, known: frozenset[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RenderError(f"generator {name} must be a dict, got {type(value).__name__}")
    unknown = sorted(str(k) for k in set(value) - known)
    if unknown:
        raise RenderError(f"unsupported {name} in the generator configuration: {', '.join(unknown)}")
    return value


def _filter(value: Any) -> None:
    name = "synthesis_kwargs.resample_filter"
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_FILTER_TAPS:
        raise RenderError(f"generator {name} must be a list of 1..{MAX_FILTER_TAPS} numbers")
    taps = [_number(name, t, -1e6, 1e6) for t in value]
    if sum(taps) == 0:
        raise RenderError(f"generator {name} {taps} sums to zero")


def check_generator_config(
    z_dim: Any,
    c_dim: Any,
    w_dim: Any,
    img_resolution: Any,
    img_channels: Any,
    mapping_kwargs: Any = None,
    synthesis_kwargs: Any = None,
) -> None:
    """Refuse (RenderError) a ``Generator(...)`` configuration of the wrong types or sizes."""
    _int("z_dim", z_dim, 1, MAX_DIM)
    _int("c_dim", c_dim, 0, MAX_DIM)
    _int("w_dim", w_dim, 1, MAX_DIM)
    _int("img_resolution", img_resolution, 4, MAX_RESOLUTION)
    if img_resolution & (img_resolution - 1):
        raise RenderError(f"generator img_resolution {img_resolution} is not a power of two")
    _int("img_channels", img_channels, 1, MAX_IMG_CHANNELS)

    mapping = _kwargs("mapping_kwargs", mapping_kwargs, MAPPING_KEYS)
    _int("mapping_kwargs.num_layers", mapping.get("num_layers", 8), 1, MAX_MAPPING_LAYERS)
    for key in ("embed_features", "layer_features"):
        _optional(_int, f"mapping_kwargs.{key}", mapping.get(key), 1, MAX_DIM)
    _type("mapping_kwargs.activation", mapping.get("activation", "lrelu"), str)
    _number("mapping_kwargs.lr_multiplier", mapping.get("lr_multiplier", 0.01), 1e-6, 1e6)
    _optional(_number, "mapping_kwargs.w_avg_beta", mapping.get("w_avg_beta"), 0.0, 1.0)

    synthesis = _kwargs("synthesis_kwargs", synthesis_kwargs, SYNTHESIS_KEYS)
    base = _int("synthesis_kwargs.channel_base", synthesis.get("channel_base", 32768), 1, MAX_CHANNEL_BASE)
    _int("synthesis_kwargs.channel_max", synthesis.get("channel_max", 512), 1, MAX_CHANNEL_MAX)
    if base < img_resolution:  # channels per block = min(base // res, max): none at the top
        raise RenderError(
            f"generator synthesis_kwargs.channel_base {base} leaves no channels at "
            f"resolution {img_resolution}"
        )
    _int("synthesis_kwargs.num_fp16_res", synthesis.get("num_fp16_res", 0), 0, MAX_FP16_RES)
    _optional(_number, "synthesis_kwargs.conv_clamp", synthesis.get("conv_clamp"), 0.0, 1e9)
    _type("synthesis_kwargs.architecture", synthesis.get("architecture", "skip"), str)
    _type("synthesis_kwargs.activation", synthesis.get("activation", "lrelu"), str)
    _filter(synthesis.get("resample_filter", [1, 3, 3, 1]))
    _type("synthesis_kwargs.use_noise", synthesis.get("use_noise", True), bool)
    _type("synthesis_kwargs.fp16_channels_last", synthesis.get("fp16_channels_last", False), bool)
    kernel = _int("synthesis_kwargs.kernel_size", synthesis.get("kernel_size", 3), 1, MAX_KERNEL)
    if kernel % 2 == 0:
        raise RenderError(f"generator synthesis_kwargs.kernel_size {kernel} is not odd")
