"""Sealed documents: JSON metadata and tensors in one safetensors file, bound by a SHA-256 seal.

huref writes two kinds of such files, and both keep the seal under one metadata key
(``huref.seal``) and check it the same way: recompute it from what was read, refuse the file
when it differs. They differ in what the seal covers, and both schemes are kept (files already
written must still verify):

- **fingerprint files** (:mod:`huref.invariants.fpfile`): :func:`seal_arrays`, the metadata
  string then, by name, each tensor's name, dtype, shape and little-endian bytes. The tensors
  are small (a few MB), so the seal covers every byte;
- **FP-Vec vector files** (:mod:`huref.fpvec.vector`): :func:`seal_texts`, the metadata strings
  only, each framed by its length (so that no two splits of the same characters seal alike).
  One of those strings records each tensor's own digest (:func:`digest_bytes`), checked as the
  tensor is streamed: a vector can be larger than memory.

A seal is recomputable by anyone: it proves the file was not changed by accident or by a tool
that ignores it, not who wrote it. Readers still check every type and value they use.

Torch-free: arrays are numpy arrays (or anything with numpy's ``dtype``, ``shape`` and
``tobytes``), and neither numpy nor blake3 is imported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from huref.errors import CheckpointError, HurefError

SEAL_KEY = "huref.seal"
PLACEHOLDER = "0" * 64  # a seal's length, written first where the seal is known only at the end
DIGESTS = ("blake3", "sha256")  # per-tensor digests (BLAKE3: 2-3x SHA-256's speed on one core)

# numpy dtype -> safetensors dtype name, as a seal spells it
DTYPE_NAMES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "float16": "F16",
    "uint32": "U32",
    "int32": "I32",
    "float32": "F32",
    "uint64": "U64",
    "int64": "I64",
    "float64": "F64",
}


def canonical_json(doc: Any) -> str:
    """The one spelling of a document that its seal covers: keys sorted, ASCII only (a token
    holding a lone surrogate becomes a ``\\ud800`` escape inside a JSON string, which every JSON
    reader takes, instead of a raw surrogate that no UTF-8 header can hold)."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=True)


def _utf8(text: str) -> bytes:
    # surrogatepass: the same bytes as strict UTF-8 for every valid string; a lone surrogate in a
    # text read back gives a seal that does not verify instead of an encoding error
    return text.encode("utf-8", "surrogatepass")


class Seal:
    """A SHA-256 fed in the order a scheme defines; :meth:`hexdigest` is the seal."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def text(self, text: str) -> Seal:
        """The text's UTF-8 bytes, unframed (a scheme with one leading text needs no frame)."""
        self._h.update(_utf8(text))
        return self

    def framed(self, text: str) -> Seal:
        """The text's byte length (8 bytes, little-endian), then its UTF-8 bytes."""
        b = _utf8(text)
        self._h.update(len(b).to_bytes(8, "little"))
        self._h.update(b)
        return self

    def array(
        self, name: str, a: Any, error: type[HurefError] = CheckpointError, what: str = "a sealed file"
    ) -> Seal:
        """An array by name: name, safetensors dtype name, JSON shape, then its bytes in file
        order (C order, little-endian). A dtype with no safetensors name is ``error``."""
        dtype = DTYPE_NAMES.get(a.dtype.name)
        if dtype is None:
            raise error(f"tensor {name}: dtype {a.dtype.name} has no place in {what}")
        self._h.update(name.encode())
        self._h.update(dtype.encode())
        self._h.update(json.dumps(list(a.shape)).encode())
        if a.size:
            self._h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def seal_arrays(
    meta_json: str,
    arrays: Mapping[str, Any],
    error: type[HurefError] = CheckpointError,
    what: str = "a sealed file",
) -> str:
    """The seal of a metadata string and every array (fingerprint files): the metadata's bytes,
    then each array by name in sorted order (:meth:`Seal.array`)."""
    s = Seal().text(meta_json)
    for name in sorted(arrays):
        s.array(name, arrays[name], error, what)
    return s.hexdigest()


def seal_texts(*texts: str) -> str:
    """The seal of metadata strings, each framed by its length (vector files)."""
    s = Seal()
    for t in texts:
        s.framed(t)
    return s.hexdigest()


def seal_matches(meta: Mapping[str, str], seal: str) -> bool:
    """Whether a file's recorded seal (``meta[SEAL_KEY]``) is ``seal``, recomputed from its content."""
    return meta.get(SEAL_KEY) == seal  # no secret to time: anyone can recompute a seal


def digest_bytes(data: bytes | memoryview, algorithm: str) -> str:
    """Hex digest of one tensor's bytes with one of :data:`DIGESTS`."""
    if algorithm == "blake3":
        from blake3 import blake3

        return str(blake3(data).hexdigest())
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    raise CheckpointError(f"unknown tensor digest {algorithm!r} (known: {', '.join(DIGESTS)})")
