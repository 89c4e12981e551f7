"""Writing a sealed vector file: tau tensors streamed in, hashed as they pass, sealed at the end.

The header is written first with placeholder hashes and seal of their final length; each tensor
is hashed as it is produced, and the header is patched in place at the end, so the tensors are
produced once and never held together. The file is written under a temporary name and renamed.
The format itself is described in huref.fpvec.vector and declared in huref.fpvec.vector_format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from huref.checkpoint.atomic import atomic_file
from huref.checkpoint.sealed import PLACEHOLDER, SEAL_KEY
from huref.checkpoint.writer import TensorPlan, write_safetensors_file
from huref.fpvec.vector_format import (
    FINGERPRINT_TENSOR,
    HASHES_KEY,
    META_KEY,
    TENSOR_HASH,
    VOCAB_KEY,
    seal_of,
    tensor_digest,
)


def write_vector(
    out: Path,
    plan: list[TensorPlan],
    produce: Callable[[TensorPlan], torch.Tensor],
    doc: dict[str, Any],
    vocab: list[str] | None,
    fingerprint: bytes,
) -> Path:
    """Stream tau tensors into a sealed vector file (atomically).

    The header is written first with placeholder hashes of their final length; each tensor is
    hashed as it is produced, and the header is patched in place at the end, so the tensors are
    produced once and never held together.
    """
    fp_tensor = torch.frombuffer(bytearray(fingerprint), dtype=torch.uint8)
    plan = [*plan, TensorPlan(FINGERPRINT_TENSOR, (len(fingerprint),), torch.uint8)]
    hashes = {p.name: PLACEHOLDER for p in plan}
    doc = {**doc, "tensor_hash": TENSOR_HASH}  # the algorithm of the digests below, inside the seal
    # ASCII, as fingerprint files: lone surrogates in tokens stay inside the metadata strings
    doc_json = json.dumps(doc, sort_keys=True, ensure_ascii=True)
    vocab_json = json.dumps(vocab, ensure_ascii=True)
    meta = {META_KEY: doc_json, VOCAB_KEY: vocab_json, HASHES_KEY: json.dumps(hashes), SEAL_KEY: PLACEHOLDER}

    def hashed(p: TensorPlan) -> torch.Tensor:
        t = fp_tensor if p.name == FINGERPRINT_TENSOR else produce(p)
        hashes[p.name] = tensor_digest(t, TENSOR_HASH)
        return t

    with atomic_file(out, overwrite=False) as tmp:
        write_safetensors_file(tmp, plan, hashed, meta)
        hashes_json = json.dumps(hashes)
        _patch_metadata(tmp, {HASHES_KEY: hashes_json, SEAL_KEY: seal_of(doc_json, vocab_json, hashes_json)})
    return out


def _patch_metadata(path: Path, values: dict[str, str]) -> None:
    """Replace placeholder metadata values of equal length in a written safetensors header."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        for k, v in values.items():
            header["__metadata__"][k] = v
        new = json.dumps(header, separators=(",", ":")).encode()
        if len(new) > n:
            raise RuntimeError("patched safetensors header grew")  # placeholders have the final length
        f.seek(8)
        f.write(new + b" " * (n - len(new)))
