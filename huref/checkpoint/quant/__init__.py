"""Quantized checkpoints, dequantized one tensor at a time when read.

A checkpoint whose config.json carries a ``quantization_config`` is read through a
``QuantizedSource`` (huref.checkpoint.quant.source) with the codec of its ``quant_method``: each
quantized linear appears as one float32 tensor under its float name (``...q_proj.weight``), the
tensors it is stored as are hidden, and nothing is dequantized before it is read.

Formats, each in its own module with the layout facts it follows: GPTQ, AWQ GEMM and FP8
(``classic``), bitsandbytes nf4 / fp4 / int8 (``bnb``) and compressed-tensors pack-, int-, naive-
and float-quantized (``compressed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huref.checkpoint.quant.bnb import BnbCodec
from huref.checkpoint.quant.classic import ClassicCodec
from huref.checkpoint.quant.compressed import CompressedTensorsCodec
from huref.checkpoint.quant.source import Codec, QuantizedSource
from huref.checkpoint.source import TensorSource
from huref.errors import CheckpointError
from huref.paths import shown

__all__ = ["CODECS", "QuantizedSource", "codec_for", "wrap_quantized"]

CODECS: dict[str, Callable[[Any], Codec]] = {
    "gptq": ClassicCodec,
    "awq": ClassicCodec,
    "fp8": ClassicCodec,
    "bitsandbytes": BnbCodec,
    "compressed-tensors": CompressedTensorsCodec,
}


def codec_for(qcfg: Any) -> Codec:
    """The checked codec a config.json ``quantization_config`` asks for."""
    if not isinstance(qcfg, dict):
        raise CheckpointError("config.json: quantization_config is not a JSON object")
    method = qcfg.get("quant_method")
    key = method.lower() if isinstance(method, str) else None
    if key not in CODECS:
        raise CheckpointError(
            f"config.json: unsupported quant_method {shown(repr(method))} (huref reads {', '.join(CODECS)})"
        )
    return CODECS[key](qcfg)


def wrap_quantized(source: TensorSource, config: dict[str, Any]) -> TensorSource:
    """``source`` itself, or a QuantizedSource when ``config`` declares a quantization."""
    if "quantization_config" not in config:
        return source
    return QuantizedSource(source, codec_for(config["quantization_config"]))
