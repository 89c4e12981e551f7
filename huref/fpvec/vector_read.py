"""Reading a vector file: :func:`open_vector` checks everything but the tensor bytes (seal,
metadata types, the file's structure); :class:`Vector` reads tensors on demand and checks each
against its recorded hash and for NaN or infinity. The file format is described in
:mod:`huref.fpvec.vector`."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huref.checkpoint.safetensors_io import SafetensorsFile
from huref.checkpoint.source import DTYPE_NAMES, DTYPES, BufferPool
from huref.errors import CheckpointError, FPVecError, HurefError
from huref.fpvec.jsonfile import loads_bounded
from huref.fpvec.vector_format import (
    FINGERPRINT_TENSOR,
    HASHES_KEY,
    LEGACY_TENSOR_HASH,
    MAX_SCALE,
    META_KEY,
    SCALE_PREFIX,
    SEAL_KEY,
    TENSOR_HASHES,
    VECTOR_FORMAT,
    VOCAB_KEY,
    all_finite,
    dequantize_rows,
    seal_of,
    tensor_digest,
)
from huref.paths import refuse_special, shown


@dataclass
class Vector:
    """An opened, metadata-validated vector file; tensors are read (and hash-checked) on demand."""

    path: Path
    file: SafetensorsFile
    doc: dict[str, Any]
    vocab: list[str] | None
    hashes: dict[str, str]
    _checked: set[str] = field(default_factory=set)

    @property
    def names(self) -> list[str]:
        return [n for n in self.file.names() if n != FINGERPRINT_TENSOR and not n.startswith(SCALE_PREFIX)]

    @property
    def commitment(self) -> str:
        return str(self.doc["key_commitment"])

    def shape(self, name: str) -> tuple[int, ...]:
        return self.file.info(name).shape

    def read(self, name: str, check: bool = True) -> torch.Tensor:
        """One tau tensor (int8 rows dequantized to float32); its stored bytes must hash to the
        values recorded at extraction."""
        t, scale = self.read_stored(name, check)
        return t if scale is None else dequantize_rows(t, scale)

    def read_stored(
        self, name: str, check: bool = True, pool: BufferPool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(stored tensor, per-row scales or None). With ``check=False`` the caller checks the
        stored tensor's hash itself (the scales, being small, are always checked here); ``pool``
        supplies the buffer the tensor is read into."""
        try:
            t = self.file.read(name, pool)
            scale = self.file.read(SCALE_PREFIX + name) if t.dtype == torch.int8 else None
        except CheckpointError as e:
            raise FPVecError(f"{shown(self.path)}: corrupt vector ({e})") from None
        if check:
            self.check(name, self.digest(t))
            self.check_finite(name, t)
        if scale is not None:
            self.check(SCALE_PREFIX + name, self.digest(scale))
            self.check_scales(name, scale)
        return t, scale

    def check_scales(self, name: str, scale: torch.Tensor) -> None:
        """Row scales are max|row| / 127 of a finite float32 tau: finite, not negative, and small
        enough that q * scale (|q| <= 127) cannot overflow float32 to infinity (a resealed scale
        of 1e37 passed the finiteness check and read back as inf; found by tests/test_fuzz_keys.py)."""
        self.check_finite(SCALE_PREFIX + name, scale)
        if scale.numel() and not (float(scale.min()) >= 0.0 and float(scale.max()) <= MAX_SCALE):
            raise FPVecError(
                f"{shown(self.path)}: row scales of tensor {shown(name)} are out of range (0..{MAX_SCALE:.3g}; "
                "a corrupt or tampered vector)"
            )

    def check_finite(self, name: str, t: torch.Tensor) -> None:
        """Refuse NaN or infinite values: a resealed vector can carry them past every hash, and
        adding them would stamp a model full of NaN weights."""
        if not all_finite(t):
            raise FPVecError(
                f"{shown(self.path)}: tensor {shown(name)} holds NaN or infinite values (a corrupt or "
                "tampered vector)"
            )

    @property
    def tensor_hash(self) -> str:
        """The hash of the recorded tensor digests (vectors of huref 0.x before BLAKE3: sha256)."""
        return str(self.doc.get("tensor_hash", LEGACY_TENSOR_HASH))

    def digest(self, t: torch.Tensor) -> str:
        return tensor_digest(t, self.tensor_hash)

    def check(self, name: str, digest: str) -> None:
        if digest != self.hashes.get(name):
            raise FPVecError(
                f"{shown(self.path)}: tensor {shown(name)} does not match its recorded hash (corrupt or "
                "tampered vector)"
            )

    def base_fingerprint(self) -> Any:
        from huref.invariants import load_fingerprint

        raw = self.read(FINGERPRINT_TENSOR)
        data = raw.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != self.doc["base"]["fingerprint_sha256"]:
            raise FPVecError(f"{self.path}: embedded base fingerprint does not match its recorded hash")
        fd, name = tempfile.mkstemp(prefix="huref-basefp-", suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                return load_fingerprint(name)
            except HurefError as e:
                raise FPVecError(f"{self.path}: embedded base fingerprint is unreadable ({e})") from None
        finally:
            os.unlink(name)


def open_vector(path: str | Path) -> Vector:
    """Open a vector file and check everything but the tensor bytes (those are checked as read:
    their hashes, and that they are finite)."""
    p = Path(path)
    refuse_special(p, "vector file", FPVecError)  # opening a FIFO would block forever
    if not p.is_file():
        raise FPVecError(f"{shown(p)}: no such vector file")
    try:
        sf = SafetensorsFile(p)
    except CheckpointError as e:
        raise FPVecError(f"{shown(p)}: not a readable vector file ({e})") from None
    meta = sf.metadata()
    if META_KEY not in meta:
        raise FPVecError(f"{shown(p)}: not a huref fingerprint vector (no '{META_KEY}' metadata)")
    doc_json, vocab_json, hashes_json = (
        meta[META_KEY],
        meta.get(VOCAB_KEY, "null"),
        meta.get(HASHES_KEY, "{}"),
    )
    if seal_of(doc_json, vocab_json, hashes_json) != meta.get(SEAL_KEY):
        raise FPVecError(f"{p}: vector seal does not verify: its metadata was modified after it was written")
    doc, vocab, hashes = (
        loads_bounded(text, f"{p}: corrupt vector metadata") for text in (doc_json, vocab_json, hashes_json)
    )
    if not isinstance(doc, dict):
        raise FPVecError(f"{p}: corrupt vector metadata (not a JSON object)")
    if doc.get("format") != VECTOR_FORMAT:
        raise FPVecError(f"{p}: vector format {doc.get('format')!r} is not {VECTOR_FORMAT!r}")
    if doc.get("tensor_hash", LEGACY_TENSOR_HASH) not in TENSOR_HASHES:
        raise FPVecError(
            f"{p}: unknown tensor hash {doc.get('tensor_hash')!r} (known: {', '.join(TENSOR_HASHES)})"
        )
    _check_doc(p, doc, vocab, hashes)
    missing = sorted(set(sf.names()) - set(hashes))
    if missing or FINGERPRINT_TENSOR not in hashes:
        raise FPVecError(
            f"{p}: corrupt vector (no recorded hash for {', '.join(missing[:3]) or FINGERPRINT_TENSOR})"
        )
    names = set(sf.names())
    for n in names:
        info = sf.info(n)
        if n == FINGERPRINT_TENSOR:
            continue
        if n.startswith(SCALE_PREFIX):
            of = n[len(SCALE_PREFIX) :]
            if (
                of not in names
                or sf.info(of).dtype != "I8"
                or info.dtype != "F32"
                or info.shape != sf.info(of).shape[:1]
            ):
                raise FPVecError(f"{p}: corrupt vector (stray or misshapen scale tensor {n})")
        elif info.dtype == "I8":
            if len(info.shape) != 2 or SCALE_PREFIX + n not in names:
                raise FPVecError(f"{p}: corrupt vector (int8 tensor {n} without its row scales)")
        elif not info.dtype.startswith(("F", "BF")):
            raise FPVecError(f"{p}: tensor {n} has non-float dtype {info.dtype}")
    return Vector(p, sf, doc, vocab, hashes)


def _str_map(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_doc(p: Path, doc: dict[str, Any], vocab: object, hashes: object) -> None:
    """Refuse sealed metadata of the wrong types: the seal is recomputable, and stamping, the audit
    report and ``describe`` read these fields as the types checked here."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FPVecError(f"{p}: corrupt vector metadata ({what})")

    need(isinstance(doc.get("key_commitment"), str), "'key_commitment' is not a string")
    base = doc.get("base")
    if not isinstance(base, dict):
        raise FPVecError(f"{p}: corrupt vector metadata ('base' is not an object)")
    for k in ("name", "family", "fingerprint_sha256"):
        need(isinstance(base.get(k), str), f"'base.{k}' is not a string")
    need(_str_map(base.get("sha256")), "'base.sha256' is not an object of strings")
    need(_str_map(base.get("vocab_roles", {})), "'base.vocab_roles' is not an object of strings")
    need(_str_list(doc.get("dropped_roles", [])), "'dropped_roles' is not a list of strings")
    need(vocab is None or _str_list(vocab), "the vocabulary is not a list of strings")
    need(_str_map(hashes), "the tensor hashes are not an object of strings")


def describe(v: Vector) -> dict[str, Any]:
    """What a vector is, without its tensors (for reports and --json)."""
    return {
        "path": str(v.path),
        "format": v.doc["format"],
        "key_commitment": v.commitment,
        "base": {k: v.doc["base"][k] for k in ("name", "family", "sha256", "fingerprint_sha256")},
        "tensors": len(v.names),
        "dtypes": sorted({DTYPE_NAMES[DTYPES[v.file.info(n).dtype]] for n in v.names}),
        "dropped_roles": v.doc.get("dropped_roles", []),
        "quantization": v.doc.get("quantization"),
    }
