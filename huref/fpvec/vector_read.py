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
from huref.checkpoint.sealed import seal_matches
from huref.checkpoint.source import DTYPE_NAMES, DTYPES, BufferPool
from huref.errors import CheckpointError, FPVecError, HurefError
from huref.fpvec.jsonfile import loads_bounded
from huref.fpvec.vector_format import (
    FACTOR_A,
    FACTOR_B,
    FINGERPRINT_TENSOR,
    HASHES_KEY,
    LEGACY_TENSOR_HASH,
    LOWRANK_FORMAT,
    MAX_SCALE,
    META_KEY,
    SCALE_PREFIX,
    TENSOR_HASHES,
    VECTOR_FORMATS,
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
    factored: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (out, in, rank)
    _checked: set[str] = field(default_factory=set)

    @property
    def names(self) -> list[str]:
        """The tau tensors, in file order (a factored one where its A factor is)."""
        out = []
        for n in self.file.names():
            if n.startswith(FACTOR_A):
                out.append(n[len(FACTOR_A) :])
            elif n != FINGERPRINT_TENSOR and not n.startswith((SCALE_PREFIX, FACTOR_B)):
                out.append(n)
        return out

    def rank(self, name: str) -> int | None:
        """The rank of a tau stored as factors; None for a tensor stored whole."""
        f = self.factored.get(name)
        return None if f is None else f[2]

    @property
    def commitment(self) -> str:
        return str(self.doc["key_commitment"])

    def shape(self, name: str) -> tuple[int, ...]:
        f = self.factored.get(name)
        return self.file.info(name).shape if f is None else f[:2]

    def read(self, name: str, check: bool = True) -> torch.Tensor:
        """One tau tensor (int8 rows dequantized to float32, factors multiplied out in float32);
        its stored bytes must hash to the values recorded at extraction."""
        if name in self.factored:
            a, b = self.read_factors(name, check)
            return a.to(torch.float32) @ b.to(torch.float32)
        t, scale = self.read_stored(name, check)
        return t if scale is None else dequantize_rows(t, scale)

    def read_factors(self, name: str, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [out x r], B [r x in]) of a low-rank tau, as stored; each must hash to its recorded
        value (with ``check``) and be finite (always: the factors are small)."""
        try:
            a, b = self.file.read(FACTOR_A + name), self.file.read(FACTOR_B + name)
        except CheckpointError as e:
            raise FPVecError(f"{shown(self.path)}: corrupt vector ({e})") from None
        for prefix, t in ((FACTOR_A, a), (FACTOR_B, b)):
            if check:
                self.check(prefix + name, self.digest(t))
            self.check_finite(prefix + name, t)
        return a, b

    def read_stored(
        self, name: str, check: bool = True, pool: BufferPool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(stored tensor, per-row scales or None). With ``check=False`` the caller checks the
        stored tensor's hash itself (the scales, being small, are always checked here); ``pool``
        supplies the buffer the tensor is read into. A low-rank tau has no stored tensor of its
        own: :meth:`read_factors`."""
        if name in self.factored:
            raise FPVecError(f"{shown(self.path)}: tensor {shown(name)} is stored as low-rank factors")
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
    if not seal_matches(meta, seal_of(doc_json, vocab_json, hashes_json)):
        raise FPVecError(f"{p}: vector seal does not verify: its metadata was modified after it was written")
    doc, vocab, hashes = (
        loads_bounded(text, f"{p}: corrupt vector metadata") for text in (doc_json, vocab_json, hashes_json)
    )
    if not isinstance(doc, dict):
        raise FPVecError(f"{p}: corrupt vector metadata (not a JSON object)")
    if doc.get("format") not in VECTOR_FORMATS:
        raise FPVecError(
            f"{p}: vector format {doc.get('format')!r} is not one of {', '.join(map(repr, VECTOR_FORMATS))}"
        )
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
        if n == FINGERPRINT_TENSOR or n.startswith((FACTOR_A, FACTOR_B)):
            continue  # factors: checked below, against the sealed shapes
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
    return Vector(p, sf, doc, vocab, hashes, _factored(p, sf, doc, names))


def _factored(
    p: Path, sf: SafetensorsFile, doc: dict[str, Any], names: set[str]
) -> dict[str, tuple[int, int, int]]:
    """The low-rank tensors of a huref-fpvec/2 file, from its sealed ``lowrank.tensors``, each
    checked against its two factors: A [out x r], B [r x in], float. A /1 file holds none."""
    factors = {n for n in names if n.startswith((FACTOR_A, FACTOR_B))}
    if doc["format"] != LOWRANK_FORMAT:
        if factors:
            raise FPVecError(f"{p}: corrupt vector (factor tensors in a {doc['format']} file)")
        return {}
    lr = doc.get("lowrank")
    declared = lr.get("tensors") if isinstance(lr, dict) else None
    if not isinstance(declared, dict):
        raise FPVecError(f"{p}: corrupt vector metadata ('lowrank.tensors' is not an object)")
    out: dict[str, tuple[int, int, int]] = {}
    for name, rec in declared.items():
        shape: Any = rec.get("shape") if isinstance(rec, dict) else None
        r: Any = rec.get("rank") if isinstance(rec, dict) else None
        a, b = FACTOR_A + name, FACTOR_B + name
        ok = (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(x, int) and x > 0 for x in shape)
            and isinstance(r, int)
            and r > 0
            and a in names
            and b in names
            and name not in names
            and sf.info(a).shape == (shape[0], r)
            and sf.info(b).shape == (r, shape[1])
            and all(sf.info(x).dtype.startswith(("F", "BF")) for x in (a, b))
        )
        if not ok:
            raise FPVecError(
                f"{p}: corrupt vector (low-rank tensor {shown(name)} does not match its factors)"
            )
        out[name] = (shape[0], shape[1], r)
    stray = sorted(factors - {FACTOR_A + n for n in out} - {FACTOR_B + n for n in out})
    if stray:
        raise FPVecError(f"{p}: corrupt vector (stray factor tensor {shown(stray[0])})")
    return out


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
        "dtypes": sorted(
            {DTYPE_NAMES[DTYPES[v.file.info(FACTOR_A + n if n in v.factored else n).dtype]] for n in v.names}
        ),
        "dropped_roles": v.doc.get("dropped_roles", []),
        "quantization": v.doc.get("quantization"),
        "rank": _rank_summary(v),
        "bytes": v.path.stat().st_size,
    }


def _rank_summary(v: Vector) -> dict[str, Any] | None:
    """For a low-rank vector: its rank, how many tensors are factored, the energy of tau kept,
    and, for ``--rank auto``, the FSR measured per rank tried ([{"rank", "fsr"}])."""
    if not v.factored:
        return None
    lr = v.doc.get("lowrank", {})
    return {
        "rank": lr.get("rank"),
        "requested": lr.get("requested"),
        "factored_tensors": len(v.factored),
        "energy_kept": lr.get("energy_kept"),
        "checked": lr.get("checked"),
        "tried": lr.get("tried"),
        "dense_roles": lr.get("dense_roles", []),
        "reference_fsr": lr.get("reference_fsr"),
    }
