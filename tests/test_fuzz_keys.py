"""Property-based fuzzing of the FP-Vec key-file and vector-file readers.

Random mutations of a valid key file (byte flips, truncations, any field replaced by any JSON
value, deep nesting) and of a valid vector file (byte flips anywhere, header included, and
truncations) must give either a correct read or one ``HurefError``: never another exception.
A mutated vector that opens must still have every tensor either read back bit-identical to the
original (the mutation touched nothing it reads) or refused by its recorded hash.

The seal and the hashes stop almost every random byte change, but anyone can recompute them, so
two more tests reseal what they mutate: any field of the sealed metadata replaced by any JSON
value (nested up to 3,000 deep), and any tensor bytes (NaN and infinity included) with their hash
recomputed. A vector that opens must then read as finite float tensors, or be refused.

The runs are derandomized. ``HUREF_FUZZ_EXAMPLES`` sets the cases per reader for a longer run,
e.g. ``HUREF_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz_keys.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from huref.cli import main
from huref.errors import HurefError
from huref.fpvec.keys import KeySet, load_keys, make_keys, save_keys
from huref.fpvec.vector import (
    FINGERPRINT_TENSOR,
    HASHES_KEY,
    META_KEY,
    SEAL_KEY,
    VOCAB_KEY,
    describe,
    open_vector,
    seal_of,
    stored_plan,
    storing,
    tensor_digest,
    write_vector,
)

EXAMPLES = int(os.environ.get("HUREF_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases on every run: a CI failure reproduces
    database=None,  # nothing written into the working tree
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEY_FIELDS = ("format", "keys", "target", "salt", "pool", "commitment")

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def seeds(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A valid key file and a vector extracted from llama-a and a slightly moved copy of it."""
    tmp = tmp_path_factory.mktemp("fuzz-keys")
    ks = make_keys(4, seed=5)
    keys = save_keys(ks, tmp / "keys.json")
    fp = tmp / "llama-a-fp"
    shutil.copytree(tiny_zoo / "llama-a", fp)
    tensors = load_file(str(fp / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for t in tensors.values():
        t.add_(torch.randn(t.shape, generator=g) * 1e-3)
    save_file(tensors, str(fp / "model.safetensors"), metadata={"format": "pt"})
    (fp / "huref_fpvec.json").write_text(json.dumps({"key_commitment": ks.commitment}))
    vec = tmp / "llama-a.fpvec.safetensors"
    assert main(["fpvec", "extract", str(tiny_zoo / "llama-a"), str(fp), "-o", str(vec)]) == 0
    v = open_vector(vec)
    originals = {n: v.read(n) for n in v.names}
    return {"keys": keys, "keyset": ks, "vector": vec, "originals": originals, "dir": tmp}


def _load_keys_or_refuse(path: Path) -> KeySet | None:
    try:
        return load_keys(path)
    except HurefError as e:
        assert "\n" not in str(e)
        event("refused")
        return None


@FUZZ
@given(data=st.data())
def test_fuzzed_key_file_is_read_or_refused_in_one_error(
    seeds: dict[str, Any], tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(seeds["keys"].read_bytes())
    how = data.draw(st.sampled_from(["flip", "cut", "field", "nest"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    else:
        doc = json.loads(raw)
        field = data.draw(st.sampled_from(KEY_FIELDS))
        if how == "field":
            doc[field] = data.draw(JSON_VALUES)
        else:  # deeper than any JSON parser's recursion limit
            depth = data.draw(st.integers(500, 50_000))
            doc = None
            raw = bytearray(("[" * depth + "]" * depth).encode())
        if doc is not None:
            raw = bytearray(json.dumps(doc).encode())
    path = tmp_path / "keys.json"
    path.write_bytes(bytes(raw))
    ks = _load_keys_or_refuse(path)
    if ks is not None:  # what was read is a consistent key set
        event("read")
        assert ks.keys and all(isinstance(k, str) and k for k in ks.keys)
        assert isinstance(ks.target, str) and ks.target.strip()
        if ks.keys == seeds["keyset"].keys and ks.target == seeds["keyset"].target:
            assert ks.commitment == seeds["keyset"].commitment or ks.salt != seeds["keyset"].salt


@FUZZ
@given(data=st.data())
def test_fuzzed_vector_file_is_read_exactly_or_refused_in_one_error(
    seeds: dict[str, Any], tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(seeds["vector"].read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    if data.draw(st.booleans()):  # the header (length prefix, JSON, sealed metadata)
        where = st.integers(0, header - 1)
    else:  # the tensor bytes
        where = st.integers(header, len(raw) - 1)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(where)] = data.draw(st.integers(0, 255))
    if data.draw(st.integers(0, 9)) == 0:
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    path = tmp_path / "v.fpvec.safetensors"
    path.write_bytes(bytes(raw))
    try:
        v = open_vector(path)
        for name in v.names:
            t = v.read(name)  # hash-checked and finite-checked as read
            original = seeds["originals"][name]
            assert t.dtype == original.dtype and t.shape == original.shape
            assert torch.equal(t.view(-1).view(torch.uint8), original.view(-1).view(torch.uint8)), name
        event("read")
    except HurefError as e:
        assert "\n" not in str(e)
        event("refused")


# ------------------------------------------------------------------ resealed vectors

_NEST = "@nested:"  # a string that _dumps writes as that many nested arrays
META_PATHS = st.lists(
    st.one_of(
        st.integers(0, 20),
        st.sampled_from(
            ["format", "base", "name", "family", "sha256", "vocab_roles", "key_commitment", "dropped_roles",
             "tensor_hash", "fingerprint_sha256", "w.a", "w.c", FINGERPRINT_TENSOR]
        ),
    ),
    max_size=3,
)  # fmt: skip
META_VALUES = (
    JSON_VALUES
    | st.floats()  # NaN and infinities: Python's json writes and reads them
    | st.integers(min_value=1, max_value=3000).map(lambda n: f"{_NEST}{n}")
)


def _dumps(doc: Any) -> str:
    """JSON text of ``doc``, each ``_NEST`` marker spelled as arrays nested that deep (built as
    Python lists, they would overflow the encoder's recursion first)."""
    text = json.dumps(doc)
    while (at := text.find(json.dumps(_NEST)[:-1])) >= 0:
        end = text.index('"', at + 1)
        depth = int(text[at + len(_NEST) + 1 : end])
        text = text[:at] + "[" * depth + "]" * depth + text[end + 1 :]
    return text


def _edit_path(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the value at ``path`` (keys or indices, followed while they lead somewhere)
    replaced by ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = path[0] if path[0] in doc else sorted(doc)[len(str(path[0])) % len(doc)]
        return {**doc, key: _edit_path(doc[key], path[1:], value)}
    i = path[0] % len(doc) if isinstance(path[0], int) else 0
    return [*doc[:i], _edit_path(doc[i], path[1:], value), *doc[i + 1 :]]


@pytest.fixture(scope="module")
def small_vector(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid vector of three tensors, one of each stored kind: float32 and bf16 tau, and int8
    rows with their float32 scales (the fingerprint bytes are not parsed by these readers)."""
    g = torch.Generator().manual_seed(0)
    taus = {
        "w.a": torch.randn(4, 8, generator=g),
        "w.b": torch.randn(8, generator=g),
        "w.c": torch.randn(6, 8, generator=g),
    }
    dtypes = {"w.a": torch.float32, "w.b": torch.bfloat16, "w.c": torch.int8}
    plan = [p for n, t in taus.items() for p in stored_plan(n, tuple(t.shape), dtypes[n])]
    doc = {
        "format": "huref-fpvec/1",
        "key_commitment": "c" * 64,
        "base": {"name": "base", "family": "llama", "sha256": {"model.safetensors": "0" * 64},
                 "vocab_roles": {"embed": "w.a"}, "fingerprint_sha256": "f" * 64},
        "dropped_roles": [],
    }  # fmt: skip
    out = tmp_path_factory.mktemp("fuzz-small") / "v.safetensors"
    write_vector(out, plan, storing(lambda p: taus[p.name]), doc, ["a", "b"], b"fp" * 8)
    v = open_vector(out)
    assert sorted(v.names) == ["w.a", "w.b", "w.c"] and all(torch.isfinite(v.read(n)).all() for n in v.names)
    return out.read_bytes()


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _resealed(header: dict[str, Any], data: bytes) -> bytes:
    meta = header["__metadata__"]
    meta[SEAL_KEY] = seal_of(meta.get(META_KEY, ""), meta.get(VOCAB_KEY, "null"), meta.get(HASHES_KEY, "{}"))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _read_finite_or_refused(path: Path) -> None:
    try:
        v = open_vector(path)
        for name in v.names:
            t = v.read(name)
            assert t.dtype.is_floating_point and bool(torch.isfinite(t).all()), name
        assert describe(v)["tensors"] == len(v.names)
        event("read")
    except HurefError as e:
        assert "\n" not in str(e)
        event("refused")


@FUZZ
@given(which=st.sampled_from([META_KEY, VOCAB_KEY, HASHES_KEY]), path=META_PATHS, value=META_VALUES)
def test_resealed_vector_metadata_is_read_or_refused_in_one_error(
    small_vector: bytes, tmp_path: Path, which: str, path: list[Any], value: Any
) -> None:
    header, data = _split(small_vector)
    meta = header["__metadata__"]
    meta[which] = _dumps(_edit_path(json.loads(meta[which]), path, value))
    target = tmp_path / "meta.safetensors"
    target.write_bytes(_resealed(header, data))
    _read_finite_or_refused(target)


@FUZZ
@given(
    name=st.sampled_from(["w.a", "w.b", "w.c", "__huref__.scale/w.c"]),
    at=st.integers(0, 63),
    patch=st.binary(min_size=1, max_size=8)
    | st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\xff", b"\x80\x7f"]),
)
# a finite scale of 4.3e37 whose row holds q = 127: read back as inf before scales were bounded
@example(name="__huref__.scale/w.c", at=0, patch=b"\x00\x00\x00\x7e")
def test_resealed_vector_tensor_bytes_are_read_finite_or_refused(
    small_vector: bytes, tmp_path: Path, name: str, at: int, patch: bytes
) -> None:
    header, data = _split(small_vector)
    begin, end = header[name]["data_offsets"]
    at = begin + at % (end - begin)
    changed = bytearray(data)
    changed[at : at + len(patch)] = patch[: end - at]
    dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "I8": torch.int8}[header[name]["dtype"]]
    meta = header["__metadata__"]
    hashes = json.loads(meta[HASHES_KEY])
    stored = torch.frombuffer(bytearray(changed[begin:end]), dtype=dtype)
    hashes[name] = tensor_digest(stored, json.loads(meta[META_KEY])["tensor_hash"])
    meta[HASHES_KEY] = json.dumps(hashes)
    target = tmp_path / "tensor.safetensors"
    target.write_bytes(_resealed(header, bytes(changed)))
    _read_finite_or_refused(target)
