"""Property-based fuzzing of the FP-Vec key-file and vector-file readers.

Random mutations of a valid key file (byte flips, truncations, any field replaced by any JSON
value, deep nesting) and of a valid vector file (byte flips anywhere, header included, and
truncations) must give either a correct read or one ``HurefError``: never another exception.
A mutated vector that opens must still have every tensor either read back bit-identical to the
original (the mutation touched nothing it reads) or refused by its recorded hash.

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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from huref.cli import main
from huref.errors import HurefError
from huref.fpvec.keys import KeySet, load_keys, make_keys, save_keys
from huref.fpvec.vector import open_vector

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
