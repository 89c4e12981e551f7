"""Sealed documents (huref.checkpoint.sealed): the two seal schemes, and the bytes of fingerprint
and vector files, which must stay those earlier huref wrote (old files must still verify).

The whole-file SHA-256s below were measured on files written by huref before both file kinds
shared the sealed-document module, from the same inputs; a change to what is hashed, to the JSON
spelling or to the file layout changes them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from huref.checkpoint.sealed import SEAL_KEY, Seal, canonical_json, seal_arrays, seal_matches, seal_texts
from huref.checkpoint.writer import TensorPlan
from huref.errors import CheckpointError, FingerprintError
from huref.fpvec.vector import open_vector, write_vector
from huref.fpvec.vector_format import stored_plan, storing, vector_doc_counts
from huref.invariants.fingerprint import Fingerprint, ModeTerms, Responses
from huref.invariants.fpfile import load_fingerprint, save_fingerprint

FINGERPRINT_SHA256 = "e4c7257ec9eb360e27967d5bd9b440fa0dd472b13548774583fb927ed2aea433"
VECTOR_SHA256 = "8ea7d4710b76df40797c18c1e70eb78ad78eeabd52e643bc4da45489aaf961d0"
TOKENS = ["the", "\ud800x", "é"]  # a lone surrogate and a non-ASCII token: the escapes are part of the bytes


def _fingerprint() -> Fingerprint:
    rng = np.random.default_rng(7)
    robust = ModeTerms(
        "robust", [0, 1], [5, 9, 2], TOKENS, "tokenizer", rng.standard_normal((2, 3, 3, 3)), "k" * 16
    )
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    resp = Responses(("gate", "up"), TOKENS, [1], [a], [b], {1: [("0", 2), ("1", 2)]})
    meta = {
        "format": "huref-fingerprint/1",
        "tool_version": "0.0-golden",
        "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": "golden", "sha256": {"model.safetensors": "ab" * 32}},
        "architecture": {"n_layers": 2, "family": "llama"},
        "settings": {"n": 3},
    }
    return Fingerprint(meta, robust, None, resp, {"robust": 0.25})


def _vector(out: Path, fp_bytes: bytes) -> Path:
    g = torch.Generator().manual_seed(3)
    taus = {
        "model.embed_tokens.weight": torch.randn(4, 3, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(3, 5, generator=g),
        "model.norm.weight": torch.randn(3, generator=g),
    }
    plan = [
        TensorPlan("model.embed_tokens.weight", (4, 3), torch.float32),
        *stored_plan("model.layers.0.mlp.up_proj.weight", (3, 5), torch.int8),  # int8 rows + scales
        TensorPlan("model.norm.weight", (3,), torch.bfloat16),
    ]
    base = {
        "name": "golden",
        "family": "llama",
        "sha256": {"model.safetensors": "ab" * 32},
        "vocab_roles": {},
        "fingerprint_sha256": hashlib.sha256(fp_bytes).hexdigest(),
    }
    doc = {
        "format": "huref-fpvec/1",
        "tool_version": "0.0-golden",
        "created": "2026-01-01T00:00:00+00:00",
        "key_commitment": "c" * 64,
        "base": base,
        "dropped_roles": [],
        **vector_doc_counts(plan),
    }
    return write_vector(out, plan, storing(lambda p: taus[p.name]), doc, ["a", "\ud800b", "ü"], fp_bytes)


def test_fingerprint_and_vector_files_keep_the_bytes_earlier_huref_wrote(tmp_path: Path) -> None:
    fp_path = save_fingerprint(_fingerprint(), tmp_path / "fp.safetensors")
    assert hashlib.sha256(fp_path.read_bytes()).hexdigest() == FINGERPRINT_SHA256
    vec_path = _vector(tmp_path / "vec.safetensors", fp_path.read_bytes())
    assert hashlib.sha256(vec_path.read_bytes()).hexdigest() == VECTOR_SHA256
    # and they read back: seals verify, tokens with surrogates survive, every tensor hash checks
    fp = load_fingerprint(fp_path)
    assert fp.robust is not None and fp.robust.token_strings == TOKENS
    v = open_vector(vec_path)
    assert v.vocab == ["a", "\ud800b", "ü"]
    assert [tuple(v.read(n).shape) for n in v.names] == [(4, 3), (3, 5), (3,)]
    assert v.base_fingerprint().responses.groups == {1: [("0", 2), ("1", 2)]}


def test_a_fingerprint_seal_covers_names_dtypes_shapes_and_bytes() -> None:
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    base = seal_arrays("{}", {"x": a})
    assert seal_arrays("{}", {"y": a}) != base  # the name
    assert seal_arrays("{}", {"x": a.view(np.int16)}) != base  # same bytes, another dtype
    assert seal_arrays("{}", {"x": a.reshape(3, 2)}) != base  # same bytes, another shape
    assert seal_arrays('{"k": 1}', {"x": a}) != base  # the metadata
    b = a.copy()
    b[1, 2] = 7
    assert seal_arrays("{}", {"x": b}) != base  # one value
    # file order: a big-endian or Fortran-ordered copy of the same values seals alike
    assert seal_arrays("{}", {"x": a.astype(">f2")}) == base
    assert seal_arrays("{}", {"x": np.asfortranarray(a)}) == base
    # arrays are taken by sorted name, whatever order the mapping holds them in
    two = {"b": a, "a": a[:1]}
    assert seal_arrays("{}", two) == seal_arrays("{}", dict(sorted(two.items())))
    assert seal_arrays("{}", two) == Seal().text("{}").array("a", a[:1]).array("b", a).hexdigest()


def test_an_unsealable_dtype_is_the_callers_error() -> None:
    z = np.zeros(2, dtype=np.complex64)
    with pytest.raises(FingerprintError, match="dtype complex64 has no place in a fingerprint"):
        seal_arrays("{}", {"z": z}, FingerprintError, "a fingerprint")
    with pytest.raises(CheckpointError):
        seal_arrays("{}", {"z": z})


def test_a_text_seal_frames_each_text_by_its_length() -> None:
    assert seal_texts("ab", "c") != seal_texts("a", "bc")  # unframed, both would hash "abc"
    assert seal_texts("ab", "c") == seal_texts("ab", "c")
    expected = hashlib.sha256()
    for t in ("é", ""):
        b = t.encode()
        expected.update(len(b).to_bytes(8, "little") + b)
    assert seal_texts("é", "") == expected.hexdigest()
    assert seal_matches({SEAL_KEY: seal_texts("x")}, seal_texts("x"))
    assert not seal_matches({SEAL_KEY: seal_texts("x")}, seal_texts("y"))
    assert not seal_matches({}, seal_texts("x"))


def test_canonical_json_sorts_keys_and_escapes_everything_but_ascii() -> None:
    text = canonical_json({"b": "\ud800", "a": "é"})
    assert text == '{"a": "\\u00e9", "b": "\\ud800"}'
    assert text.isascii()


def test_the_sealed_module_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, huref.checkpoint.sealed; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
