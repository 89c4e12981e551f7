"""Fingerprint vectors: tau = theta_fp - theta_base, extracted, stored and validated.

File format (``huref-fpvec/1``; ``huref-fpvec/2`` when it holds low-rank factors): one
safetensors file.

- Tensors: tau for every tensor of the base, under the base's own checkpoint names, matched
  by name and shape (fused and transposed layouts need no special case: both sides store the same
  layout). Optionally without the token-embedding and/or lm_head deltas.
- Optionally (``extract --dtype int8``) each matrix is stored as int8 with one float32 scale per
  row under ``__huref__.scale/NAME`` (scale = max |row| / 127, tau = q x scale): half the bytes
  of bf16, so a stamp reads half as much, at a relative rms error of about 1% of tau. Vectors
  (1-D tensors) stay in float32.
- Optionally (``extract --rank R`` or ``--rank auto``; format ``huref-fpvec/2``) each matrix whose
  factors are smaller (R (out + in) < out x in) is stored as the two factors of its truncated SVD
  instead of under its own name: ``__huref__.lowrank.a/NAME`` = U_R S_R [out x R] and
  ``__huref__.lowrank.b/NAME`` = V_R^T [R x in], tau ~= A @ B, in the tau dtype (int8 does not
  combine with factors). Row i of tau is A[i] @ B, so vocabulary rows are still matched by token.
  1-D tensors, small matrices and, with ``--dense-embeddings``, the token embedding stay whole.
  The document's ``lowrank`` object records the rank, how it was chosen (``requested``: R or
  "auto"; ``checked``; for auto ``tried``: [{"rank", "fsr"}] and ``reference_fsr``, the
  fingerprinted model's FSR), ``energy_kept`` (1 - sum of squared truncation errors / ||tau||^2
  over the whole vector) and per factored tensor ``{"shape", "rank", "rel_error"}`` (the
  truncation's relative Frobenius error, sqrt(sum_{i>R} s_i^2 / sum s_i^2)). Readers of /1 refuse
  /2 files by their format string; this reader reads both and checks every factor pair against
  the sealed shapes. A fixed R is unchecked: only ``auto`` measures that the fingerprint survives.
  The embedded base fingerprint of a /2 file is compact (``lowrank.base_fingerprint``: 4 layers
  from the first to the last, on the 128 probe tokens stamp's check uses) so that it does not
  outweigh the factors (every layer of a 7B: 184 MB at n = 128, beside 82 MB of rank-16 factors).
- One reserved tensor, ``__huref__.base_fingerprint`` (uint8): the bytes of the base's robust
  HuRef fingerprint file (``huref.invariants.save_fingerprint``), so that ``stamp`` can check that a
  downstream model is derived from the base without having the base's weights.
- Metadata (str -> str): ``huref.fpvec`` (JSON: format, tool version, base identity and weight
  hashes, architecture, the fingerprint file's SHA-256, the key commitment, the tensors and their
  dtypes, what was dropped), ``huref.fpvec.vocab`` (JSON list: the base's normalised token strings,
  to match embedding rows by token when the downstream vocabulary differs),
  ``huref.fpvec.tensors`` (JSON: name -> BLAKE3 of the stored bytes; ``tensor_hash`` in the
  document names the algorithm, SHA-256 in vectors written before BLAKE3, which still verify), and
  ``huref.seal``, a SHA-256 over the three JSON strings. A reader refuses a file whose seal does
  not verify (tampered metadata) and, while streaming, any tensor whose bytes do not hash to the
  recorded value.

Anyone can reseal a vector, so the seal proves nothing about the values: every tau tensor is
checked to be finite as it is read (like its hash), and a vector holding NaN or infinity is refused
with one line; ``stamp`` also checks every tensor it writes.

The keys never appear: only their salted commitment does. This module extracts tau; the sealed
file is written by huref.fpvec.vector_write and read by huref.fpvec.vector_read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from huref import __version__
from huref.arch import Model, load_model
from huref.checkpoint import open_checkpoint
from huref.checkpoint.sealed import SEAL_KEY
from huref.checkpoint.source import DTYPES, TensorSource
from huref.checkpoint.writer import TensorPlan
from huref.errors import FPVecError, HurefError
from huref.fpvec.jsonfile import read_json_file
from huref.fpvec.vector_format import (
    FACTOR_A,
    FACTOR_B,
    FINGERPRINT_TENSOR,
    FP_CARD,
    HASHES_KEY,
    LEGACY_TENSOR_HASH,
    LOWRANK_FORMAT,
    MAX_SCALE,
    META_KEY,
    QUANTIZATION_NOTE,
    SCALE_PREFIX,
    TENSOR_HASH,
    TENSOR_HASHES,
    VECTOR_FORMAT,
    VOCAB_KEY,
    all_finite,
    dequantize_rows,
    factored_plan,
    quantize_rows,
    seal_of,
    stored_plan,
    storing,
    tensor_digest,
    vector_doc_counts,
)
from huref.fpvec.vector_read import Vector, describe, open_vector
from huref.fpvec.vector_write import write_vector

__all__ = [
    "FACTOR_A",
    "FACTOR_B",
    "FINGERPRINT_TENSOR",
    "FP_CARD",
    "HASHES_KEY",
    "LEGACY_TENSOR_HASH",
    "LOWRANK_FORMAT",
    "MAX_SCALE",
    "META_KEY",
    "QUANTIZATION_NOTE",
    "SCALE_PREFIX",
    "SEAL_KEY",
    "TENSOR_HASH",
    "TENSOR_HASHES",
    "VECTOR_FORMAT",
    "VOCAB_KEY",
    "Vector",
    "all_finite",
    "base_fingerprint_bytes",
    "dequantize_rows",
    "describe",
    "extract_vector",
    "factored_plan",
    "open_checkpoint_or_fail",
    "open_vector",
    "quantize_rows",
    "seal_of",
    "stored_plan",
    "storing",
    "tensor_digest",
    "vector_doc_counts",
    "vocab_roles",
    "write_vector",
]

log = logging.getLogger(__name__)

TauOf = Callable[[TensorPlan], torch.Tensor]
# (base, planned entries, tau of an entry, document) -> (entries to write, their producer, document)
Transform = Callable[
    [Model, list[TensorPlan], TauOf, dict[str, Any]], tuple[list[TensorPlan], TauOf, dict[str, Any]]
]


def vocab_roles(m: Model) -> dict[str, str]:
    """Checkpoint names of the tensors whose rows are token ids: role -> name."""
    out = {"embed": m.binding("embed").name}
    if m.has("lm_head"):
        out["lm_head"] = m.binding("lm_head").name
    if m.has("lm_head_bias"):
        out["lm_head_bias"] = m.binding("lm_head_bias").name
    return out


def _open_model(path: str | Path, what: str) -> Model:
    try:
        return load_model(path)
    except HurefError as e:
        raise FPVecError(f"{what}: {e}") from None


def base_fingerprint_bytes(m: Model, n: int | None = None) -> bytes:
    """The base's robust fingerprint, serialised exactly as ``huref fingerprint`` writes it."""
    from huref.invariants import Settings, fingerprint_model, save_fingerprint

    fp = fingerprint_model(m, Settings(modes=("robust",)) if n is None else Settings(n=n, modes=("robust",)))
    with tempfile.TemporaryDirectory(prefix="huref-fpvec-") as d:
        p = save_fingerprint(fp, Path(d) / "base.safetensors")
        return p.read_bytes()


def _dtype(name: str, like: torch.dtype, ndim: int) -> torch.dtype:
    if name == "auto":
        return like if like.is_floating_point else torch.float32
    table = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "int8": torch.int8,
    }
    if name not in table:
        raise FPVecError(f"--dtype takes auto, float32, bfloat16, float16 or int8 (got {name!r})")
    if table[name] == torch.int8 and ndim != 2:
        return torch.float32  # norms and biases: too small to be worth quantizing
    return table[name]


def extract_vector(
    base: str | Path,
    fp_model: str | Path,
    out: str | Path,
    drop_embeddings: bool = False,
    drop_lm_head: bool = False,
    dtype: str = "auto",
    key_commitment: str | None = None,
    transform: Transform | None = None,
    fingerprint_of: Callable[[Model], bytes] | None = None,
) -> Path:
    """Write tau = theta_fp - theta_base (streamed, one tensor at a time) as a vector file.

    In stages: check the inputs (:func:`check_extract_inputs`), plan the stored tensors from
    headers (:func:`plan_extract`), fingerprint the base, then stream the differences into the
    sealed file (:func:`write_vector`). ``transform`` rewrites the plan, its ``produce`` and the
    document before anything is written (low-rank vectors: :mod:`huref.fpvec.vector_lowrank`);
    ``fingerprint_of`` gives the embedded base fingerprint's bytes (default: every layer,
    :func:`base_fingerprint_bytes`)."""
    out = Path(out)
    mb, mf = check_extract_inputs(base, fp_model, out)
    vroles = vocab_roles(mb)
    dropped = _dropped_roles(base, vroles, drop_embeddings, drop_lm_head)
    key_commitment = _key_commitment(base, fp_model, mb, key_commitment)
    plan = plan_extract(mb.ckpt.source, {vroles[r] for r in dropped if r in vroles}, dtype)
    t0 = time.perf_counter()
    fp_bytes = (fingerprint_of or base_fingerprint_bytes)(mb)
    doc = _vector_doc(mb, mf, key_commitment, vroles, dropped, fp_bytes, plan)
    sb, sf = mb.ckpt.source, mf.ckpt.source

    def tau_of(p: TensorPlan) -> torch.Tensor:
        # the difference is formed in float32: bf16 - bf16 in bf16 would round it twice
        return sf.read(p.name).to(torch.float32) - sb.read(p.name).to(torch.float32)

    produce = storing(tau_of)
    if transform is not None:
        plan, produce, doc = transform(mb, plan, tau_of, doc)
    vocab = mb.ckpt.vocab
    write_vector(out, plan, produce, doc, list(vocab.tokens) if vocab is not None else None, fp_bytes)
    log.info("wrote %s (%d tensors) in %.1f s", out, len(plan), time.perf_counter() - t0)
    return out


def check_extract_inputs(base: str | Path, fp_model: str | Path, out: Path) -> tuple[Model, Model]:
    """Check stage (headers only): the output is a new ``.safetensors`` path, both models open,
    share one architecture and hold the same tensors with the same shapes. Refusals are one
    :class:`FPVecError` line each, before anything is read or written."""
    if out.suffix != ".safetensors":
        raise FPVecError(f"{out}: the vector file name must end in .safetensors")
    if out.exists():
        raise FPVecError(f"{out} already exists; choose a new output path")
    mb = _open_model(base, "base")
    mf = _open_model(fp_model, "fingerprinted model")
    if mb.spec.name != mf.spec.name:
        raise FPVecError(
            f"base is {mb.spec.name}, fingerprinted model is {mf.spec.name}: not the same architecture"
        )
    sb, sf = mb.ckpt.source, mf.ckpt.source
    names_b, names_f = sb.names(), set(sf.names())
    for n in names_b:
        if n not in names_f:
            raise FPVecError(f"tensor {n} of the base is missing from the fingerprinted model")
        if sb.info(n).shape != sf.info(n).shape:
            raise FPVecError(
                f"tensor {n}: base shape {list(sb.info(n).shape)}, fingerprinted {list(sf.info(n).shape)}"
            )
    extra = sorted(names_f - set(names_b))
    if extra:
        raise FPVecError(f"the fingerprinted model has tensors the base lacks: {', '.join(extra[:5])}")
    return mb, mf


def _dropped_roles(
    base: str | Path, vroles: dict[str, str], drop_embeddings: bool, drop_lm_head: bool
) -> list[str]:
    """The vocabulary roles left out of the vector; an lm_head tied to the embedding cannot be
    dropped alone."""
    dropped = []
    if drop_embeddings:
        dropped.append("embed")
    if drop_lm_head and "lm_head" not in vroles:
        raise FPVecError(
            f"{base}: the output layer is tied to the token embedding (no lm_head of its own); "
            "--drop-embeddings leaves out both"
        )
    if drop_lm_head:
        dropped += ["lm_head", "lm_head_bias"]
    return dropped


def _key_commitment(base: str | Path, fp_model: str | Path, mb: Model, key_commitment: str | None) -> Any:
    """Check stage, provenance: the fingerprinted model's card (if any) must name this base's
    weight files; the key commitment comes from the argument or the card, and one is required."""
    card = _read_card(Path(fp_model))
    trained_from = card.get("base", {}).get("sha256") if isinstance(card.get("base"), dict) else None
    if trained_from and sorted(trained_from.values()) != sorted(mb.ckpt.sha256s().values()):
        raise FPVecError(
            f"{fp_model} was trained from {card['base'].get('name')!r}, whose weight files (recorded in its "
            f"{FP_CARD}) are not those of {base}: tau against another base would carry that model's weights"
        )
    if key_commitment is None:
        key_commitment = card.get("key_commitment")
    if not key_commitment:
        raise FPVecError(
            f"{fp_model}: no {FP_CARD} with the key commitment (was it made by 'huref fpvec train'?); "
            "pass the key file to record it"
        )
    return key_commitment


def plan_extract(sb: TensorSource, skip: set[str], dtype: str) -> list[TensorPlan]:
    """Plan stage (headers only): the file entries of every tau tensor, in the base's order, in
    the stored dtype; integer buffers carry no trained delta and are left out, quantized weights
    and an unknown ``dtype`` are refused with one :class:`FPVecError`."""
    plan: list[TensorPlan] = []
    for n in sb.names():
        if n in skip:
            continue
        info = sb.info(n)
        if info.dtype not in DTYPES or not DTYPES[info.dtype].is_floating_point:
            if info.dtype in DTYPES:  # integer buffers (e.g. position ids) carry no trained delta
                continue
            raise FPVecError(f"tensor {n} has dtype {info.dtype}: cannot subtract quantized weights")
        plan += stored_plan(n, info.shape, _dtype(dtype, DTYPES[info.dtype], len(info.shape)))
    return plan


def _vector_doc(
    mb: Model,
    mf: Model,
    key_commitment: Any,
    vroles: dict[str, str],
    dropped: list[str],
    fp_bytes: bytes,
    plan: list[TensorPlan],
) -> dict[str, Any]:
    """The vector's sealed document: the base's identity and architecture, what was dropped."""
    return {
        "format": VECTOR_FORMAT,
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key_commitment": key_commitment,
        "base": {
            "name": mb.ckpt.name,
            "format": mb.ckpt.format,
            "sha256": mb.ckpt.sha256s(),
            "family": mb.spec.name,
            "model_type": mb.cfg.model_type,
            "n_layers": mb.cfg.n_layers,
            "d_model": mb.cfg.d_model,
            "vocab_size": mb.cfg.vocab_size,
            "vocab_roles": vroles,
            "fingerprint_sha256": hashlib.sha256(fp_bytes).hexdigest(),
        },
        "fingerprinted": {"name": mf.ckpt.name, "sha256": mf.ckpt.sha256s()},
        "dropped_roles": dropped,
        **vector_doc_counts(plan),
    }


def _read_card(folder: Path) -> dict[str, Any]:
    p = folder / FP_CARD if folder.is_dir() else folder.parent / FP_CARD
    if not os.path.lexists(p):
        return {}
    doc = read_json_file(p, FP_CARD)  # a FIFO, an oversized or deeply nested card: one line
    return doc if isinstance(doc, dict) else {}


def open_checkpoint_or_fail(path: str | Path, what: str) -> Any:
    try:
        return open_checkpoint(path)
    except HurefError as e:
        raise FPVecError(f"{what}: {e}") from None
