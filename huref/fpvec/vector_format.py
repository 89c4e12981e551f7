"""The vector file's names, digests and number formats (see :mod:`huref.fpvec.vector` for the
file format): the pieces both the writer and the reader of a vector need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from huref.checkpoint.sealed import DIGESTS, digest_bytes, seal_texts
from huref.checkpoint.writer import TensorPlan
from huref.errors import FPVecError

VECTOR_FORMAT = "huref-fpvec/1"  # every tau tensor stored whole (dense or int8 rows)
# a vector holding low-rank factors: readers of /1 refuse it (format check) instead of finding its
# factored tensors missing; this reader reads both
LOWRANK_FORMAT = "huref-fpvec/2"
VECTOR_FORMATS = (VECTOR_FORMAT, LOWRANK_FORMAT)
META_KEY = "huref.fpvec"
VOCAB_KEY = "huref.fpvec.vocab"
HASHES_KEY = "huref.fpvec.tensors"
FINGERPRINT_TENSOR = "__huref__.base_fingerprint"
SCALE_PREFIX = "__huref__.scale/"  # per-row float32 scales of an int8 tensor
FACTOR_A = "__huref__.lowrank.a/"  # A = U_r S_r [out x r] of a low-rank tau (huref-fpvec/2)
FACTOR_B = "__huref__.lowrank.b/"  # B = V_r^T [r x in]
FP_CARD = "huref_fpvec.json"  # written beside config.json in fingerprinted and stamped models


TENSOR_HASH = "blake3"  # of each tensor's bytes in vectors written now; older vectors: "sha256"
TENSOR_HASHES = DIGESTS
LEGACY_TENSOR_HASH = "sha256"  # what a vector without ``tensor_hash`` in its document used


def tensor_digest(t: torch.Tensor, algorithm: str = TENSOR_HASH) -> str:
    """Hex digest of a tensor's bytes. BLAKE3 (a cryptographic hash, 256-bit output) runs at
    2-3x SHA-256's speed on one core, and a stamp hashes every byte of the vector."""
    # flattened: a contiguous tensor with a size-1 dimension may keep a stride that view() refuses
    t = t.detach().contiguous().cpu().reshape(-1)
    if algorithm not in TENSOR_HASHES:
        raise FPVecError(f"unknown tensor hash {algorithm!r} (known: {', '.join(TENSOR_HASHES)})")
    data = t.view(torch.uint8).numpy().data.cast("B") if t.numel() else b""
    return digest_bytes(data, algorithm)


# float dtype -> (signed and unsigned integer views of its bits, exponent mask): a value is NaN or
# infinite exactly when its exponent bits are all ones
_FLOAT_BITS: dict[torch.dtype, tuple[torch.dtype, Any, int]] = {
    torch.bfloat16: (torch.int16, np.uint16, 0x7F80),
    torch.float16: (torch.int16, np.uint16, 0x7C00),
    torch.float32: (torch.int32, np.uint32, 0x7F800000),
    torch.float64: (torch.int64, np.uint64, 0x7FF0000000000000),
}


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (integer tensors always are).

    Two integer maxima over the bits instead of ``torch.isfinite(t).all()``: no temporary of
    t's size, and about 10 GB/s on one core for bf16 against 0.4 GB/s (a stamp checks every byte
    it writes). Positive NaN/inf are the signed bit patterns at or above the exponent mask;
    negative ones the unsigned patterns at or above sign bit | mask.
    """
    if not t.dtype.is_floating_point:
        return True
    if t.numel() == 0:
        return True
    if t.dtype not in _FLOAT_BITS or t.device.type != "cpu":
        return bool(torch.isfinite(t.to(torch.float32)).all())
    signed, unsigned, mask = _FLOAT_BITS[t.dtype]
    bits = t.detach().view(signed).numpy()
    if int(bits.max()) >= mask:
        return False
    sign = 1 << (8 * bits.itemsize - 1)
    return int(bits.view(unsigned).max()) < (sign | mask)


def seal_of(doc_json: str, vocab_json: str, hashes_json: str) -> str:
    """A vector's seal: its three metadata strings, each framed by its length (the tensors are
    covered by their digests in ``hashes_json``, checked as each is read)."""
    return seal_texts(doc_json, vocab_json, hashes_json)


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, float32 scale per row) with t ~= q * scale[:, None]; scale = max |row| / 127."""
    t = t.to(torch.float32)
    scale = t.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(t / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


MAX_SCALE = torch.finfo(torch.float32).max / 127  # a larger scale times q = 127 overflows float32


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale[:, None]


QUANTIZATION_NOTE = "int8 rows: tau = q * scale, scale = max|row| / 127 (float32)"


def stored_plan(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> list[TensorPlan]:
    """The file entries of one tau tensor stored as ``dtype``: an int8 matrix is followed by its
    row scales, so that the pair is produced together."""
    plan = [TensorPlan(name, shape, dtype)]
    if dtype == torch.int8:
        plan.append(TensorPlan(SCALE_PREFIX + name, shape[:1], torch.float32))
    return plan


def factored_plan(name: str, shape: tuple[int, ...], r: int, dtype: torch.dtype) -> list[TensorPlan]:
    """The file entries of one tau matrix stored as rank-``r`` factors: A, then B."""
    return [
        TensorPlan(FACTOR_A + name, (shape[0], r), dtype),
        TensorPlan(FACTOR_B + name, (r, shape[1]), dtype),
    ]


def vector_doc_counts(plan: list[TensorPlan]) -> dict[str, Any]:
    """The doc fields that describe what a plan stores: tensor count and, if any, quantization."""
    doc: dict[str, Any] = {"tensors": sum(not p.name.startswith((SCALE_PREFIX, FACTOR_B)) for p in plan)}
    if any(p.dtype == torch.int8 for p in plan):
        doc["quantization"] = QUANTIZATION_NOTE
    return doc


def storing(tau_of: Callable[[TensorPlan], torch.Tensor]) -> Callable[[TensorPlan], torch.Tensor]:
    """``produce`` for :func:`write_vector` from a function giving each tensor's tau: casts it to
    the planned dtype, or quantizes an int8 entry and hands out its scales next."""
    scales: dict[str, torch.Tensor] = {}

    def produce(p: TensorPlan) -> torch.Tensor:
        if p.name.startswith(SCALE_PREFIX):
            return scales.pop(p.name)
        tau = tau_of(p)
        if p.dtype == torch.int8:
            q, scales[SCALE_PREFIX + p.name] = quantize_rows(tau)
            return q
        return tau.to(p.dtype)

    return produce
