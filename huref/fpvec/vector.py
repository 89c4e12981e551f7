"""Fingerprint vectors: tau = theta_fp - theta_base, extracted, stored and validated.

File format (``huref-fpvec/1``): one safetensors file.

- Tensors: tau for every tensor of the base, under the base's own checkpoint names, matched
  by name and shape (fused and transposed layouts need no special case: both sides store the same
  layout). Optionally without the token-embedding and/or lm_head deltas.
- Optionally (``extract --dtype int8``) each matrix is stored as int8 with one float32 scale per
  row under ``__huref__.scale/NAME`` (scale = max |row| / 127, tau = q x scale): half the bytes
  of bf16, so a stamp reads half as much, at a relative rms error of about 1% of tau. Vectors
  (1-D tensors) stay in float32.
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

The keys never appear: only their salted commitment does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from huref import __version__
from huref.arch import Model, load_model
from huref.checkpoint import open_checkpoint
from huref.checkpoint.atomic import atomic_file
from huref.checkpoint.safetensors_io import SafetensorsFile
from huref.checkpoint.source import DTYPE_NAMES, DTYPES, BufferPool
from huref.checkpoint.writer import TensorPlan, write_safetensors_file
from huref.errors import CheckpointError, FPVecError, HurefError
from huref.fpvec.jsonfile import loads_bounded, read_json_file
from huref.paths import refuse_special, shown

log = logging.getLogger(__name__)

VECTOR_FORMAT = "huref-fpvec/1"
META_KEY = "huref.fpvec"
VOCAB_KEY = "huref.fpvec.vocab"
HASHES_KEY = "huref.fpvec.tensors"
SEAL_KEY = "huref.seal"
FINGERPRINT_TENSOR = "__huref__.base_fingerprint"
SCALE_PREFIX = "__huref__.scale/"  # per-row float32 scales of an int8 tensor
FP_CARD = "huref_fpvec.json"  # written beside config.json in fingerprinted and stamped models
_PLACEHOLDER = "0" * 64


TENSOR_HASH = "blake3"  # of each tensor's bytes in vectors written now; older vectors: "sha256"
TENSOR_HASHES = ("blake3", "sha256")
LEGACY_TENSOR_HASH = "sha256"  # what a vector without ``tensor_hash`` in its document used


def tensor_digest(t: torch.Tensor, algorithm: str = TENSOR_HASH) -> str:
    """Hex digest of a tensor's bytes. BLAKE3 (a cryptographic hash, 256-bit output) runs at
    2-3x SHA-256's speed on one core, and a stamp hashes every byte of the vector."""
    t = t.detach().contiguous().cpu()
    data = t.view(torch.uint8).numpy().data.cast("B") if t.numel() else b""
    if algorithm == "blake3":
        from blake3 import blake3

        return str(blake3(data).hexdigest())
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    raise FPVecError(f"unknown tensor hash {algorithm!r} (known: {', '.join(TENSOR_HASHES)})")


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
    h = hashlib.sha256()
    for part in (doc_json, vocab_json, hashes_json):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


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


def vector_doc_counts(plan: list[TensorPlan]) -> dict[str, Any]:
    """The doc fields that describe what a plan stores: tensor count and, if any, quantization."""
    doc: dict[str, Any] = {"tensors": sum(not p.name.startswith(SCALE_PREFIX) for p in plan)}
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


def extract_vector(
    base: str | Path,
    fp_model: str | Path,
    out: str | Path,
    drop_embeddings: bool = False,
    drop_lm_head: bool = False,
    dtype: str = "auto",
    key_commitment: str | None = None,
) -> Path:
    """Write tau = theta_fp - theta_base (streamed, one tensor at a time) as a vector file."""
    out = Path(out)
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
    vroles = vocab_roles(mb)
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
    skip = {vroles[r] for r in dropped if r in vroles}
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

    t0 = time.perf_counter()
    fp_bytes = base_fingerprint_bytes(mb)
    plan: list[TensorPlan] = []
    for n in names_b:
        if n in skip:
            continue
        info = sb.info(n)
        if info.dtype not in DTYPES or not DTYPES[info.dtype].is_floating_point:
            if info.dtype in DTYPES:  # integer buffers (e.g. position ids) carry no trained delta
                continue
            raise FPVecError(f"tensor {n} has dtype {info.dtype}: cannot subtract quantized weights")
        plan += stored_plan(n, info.shape, _dtype(dtype, DTYPES[info.dtype], len(info.shape)))

    vocab = mb.ckpt.vocab
    doc: dict[str, Any] = {
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

    def tau_of(p: TensorPlan) -> torch.Tensor:
        # the difference is formed in float32: bf16 - bf16 in bf16 would round it twice
        return sf.read(p.name).to(torch.float32) - sb.read(p.name).to(torch.float32)

    write_vector(out, plan, storing(tau_of), doc, list(vocab.tokens) if vocab is not None else None, fp_bytes)
    log.info("wrote %s (%d tensors) in %.1f s", out, len(plan), time.perf_counter() - t0)
    return out


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
    hashes = {p.name: _PLACEHOLDER for p in plan}
    doc = {**doc, "tensor_hash": TENSOR_HASH}  # the algorithm of the digests below, inside the seal
    # ASCII, as fingerprint files: lone surrogates in tokens stay inside the metadata strings
    doc_json = json.dumps(doc, sort_keys=True, ensure_ascii=True)
    vocab_json = json.dumps(vocab, ensure_ascii=True)
    meta = {META_KEY: doc_json, VOCAB_KEY: vocab_json, HASHES_KEY: json.dumps(hashes), SEAL_KEY: _PLACEHOLDER}

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


def _read_card(folder: Path) -> dict[str, Any]:
    p = folder / FP_CARD if folder.is_dir() else folder.parent / FP_CARD
    if not os.path.lexists(p):
        return {}
    doc = read_json_file(p, FP_CARD)  # a FIFO, an oversized or deeply nested card: one line
    return doc if isinstance(doc, dict) else {}


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


def open_checkpoint_or_fail(path: str | Path, what: str) -> Any:
    try:
        return open_checkpoint(path)
    except HurefError as e:
        raise FPVecError(f"{what}: {e}") from None
