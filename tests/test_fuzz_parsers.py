"""Property-based fuzzing of huref's own checkpoint readers (safetensors, GGUF, llama2.c, and the
config.json readers behind them): a small valid file, mutated at random (bytes flipped, cut
short, header fields replaced by random JSON or binary values, length prefixes changed), is either
read correctly or refused with one ``HurefError``; never another exception, never a hang, never an
allocation beyond a few times the file's size.

"Correctly" is checked against an oracle where one exists: for safetensors, whatever the reference
parser (``safetensors.safe_open``) refuses huref refuses too, and where both read a file they read
the same bytes; for GGUF and llama2.c, a mutation that touches only tensor data leaves the file
readable and the tensors equal to the mutated bytes.

The runs are derandomized (the same cases on every CI run). ``HUREF_FUZZ_EXAMPLES`` sets the cases
per reader for a longer run, e.g. ``HUREF_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz_parsers.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from formatkit import write_gguf, write_llama2c
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from huref.arch import Model
from huref.checkpoint import open_checkpoint
from huref.errors import HurefError

EXAMPLES = int(os.environ.get("HUREF_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases on every run: a CI failure reproduces
    database=None,  # nothing written into the working tree
    deadline=timedelta(seconds=10),  # one case reads a ~30 KB model: ~50 ms, a loaded CI ~10x that
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CASE_SECONDS = 30  # a case still running after this is a hang (an alarm ends it)
READ_FACTOR = 16  # tensors read per case: at most this times the file's bytes (Q8_0 -> F32 is ~4x)


# ------------------------------------------------------------------ seeds: a 1-layer LLaMA


def _seed_model() -> tuple[SimpleNamespace, dict[str, torch.Tensor]]:
    """A 1-layer LLaMA (d 32, 4 heads, 2 KV heads, vocab 16): every format's smallest valid file."""
    cfg = SimpleNamespace(
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=16,
        max_position_embeddings=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    g = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (16, 32),
        "model.norm.weight": (32,),
        "lm_head.weight": (16, 32),
        "model.layers.0.input_layernorm.weight": (32,),
        "model.layers.0.post_attention_layernorm.weight": (32,),
        "model.layers.0.self_attn.q_proj.weight": (32, 32),
        "model.layers.0.self_attn.k_proj.weight": (16, 32),
        "model.layers.0.self_attn.v_proj.weight": (16, 32),
        "model.layers.0.self_attn.o_proj.weight": (32, 32),
        "model.layers.0.mlp.gate_proj.weight": (32, 32),
        "model.layers.0.mlp.up_proj.weight": (32, 32),
        "model.layers.0.mlp.down_proj.weight": (32, 32),
    }
    return cfg, {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def _hf_config(cfg: SimpleNamespace) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **vars(cfg),
        "tie_word_embeddings": False,
    }


@dataclass(frozen=True)
class Seeds:
    safetensors: Path  # a folder: config.json + model.safetensors
    gguf: Path
    llama2c: Path
    config: dict[str, Any]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    root = tmp_path_factory.mktemp("seeds")
    cfg, sd = _seed_model()
    folder = root / "st"
    folder.mkdir()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(_hf_config(cfg)))
    tokens = ["<unk>", "<s>", "</s>", "<0x0A>", *(f"▁w{i}" for i in range(12))]
    g = write_gguf(root / "seed.gguf", sd, cfg, qtype="Q8_0", tokens=tokens)
    l2c = write_llama2c(root / "seed.bin", sd, cfg)
    for p in (folder, g, l2c):
        assert _outcome(p, note=_ignore) is not None, f"the seed {p} does not read"
    return Seeds(folder, g, l2c, _hf_config(cfg))


# ------------------------------------------------------------------ running one case


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise in this thread after ``seconds``: a blocking open or an endless loop fails the case
    instead of hanging the suite (signals interrupt blocking system calls too)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"case still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _outcome(path: Path, note: Callable[[str], None] = event) -> dict[str, torch.Tensor] | None:
    """Every tensor huref reads from ``path`` (after binding it to its architecture), or None
    when huref refuses the file with a HurefError. Any other exception fails the case."""
    size = sum(p.stat().st_size for p in (path.iterdir() if path.is_dir() else [path]))
    with _time_limit(CASE_SECONDS):
        try:
            ck = open_checkpoint(path)
            read: dict[str, torch.Tensor] = {}
            for name in ck.source.names():
                info = ck.source.info(name)
                t = ck.source.read(name)
                assert tuple(t.shape) == tuple(info.shape), (name, t.shape, info.shape)
                if t.dim() and t.shape[0]:
                    rows = ck.source.read_rows(name, [t.shape[0] - 1, 0])
                    assert torch.equal(rows.view(torch.uint8), t[[t.shape[0] - 1, 0]].view(torch.uint8))
                read[name] = t
            total = sum(t.numel() * t.element_size() for t in read.values())
            assert total <= READ_FACTOR * size + 4096, f"read {total} bytes from a file of {size}"
            Model(ck)  # the config reader and the both-way check
            note("read")  # the share of each outcome shows in --hypothesis-show-statistics
            return read
        except HurefError as e:
            assert "\n" not in str(e) and "\x1b" not in str(e), f"message not on one line: {e!r}"
            note(f"refused ({type(e).__name__})")
            return None


def _ignore(_: str) -> None:
    """Outside a Hypothesis test there are no statistics to note an outcome in."""


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


@contextlib.contextmanager
def _peak_memory_bounded(limit_bytes: int) -> Iterator[None]:
    """The process's peak resident memory grows by less than ``limit_bytes`` over the block."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < limit_bytes, f"peak memory grew by {grown / 2**20:.0f} MiB"


# ------------------------------------------------------------------ mutations


INTERESTING = [
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    255,
    256,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
]


@st.composite
def _flips(draw: st.DrawFn, n: int, focus: int) -> Callable[[bytearray], None]:
    """Up to 4 bytes xor-ed, mostly within the first ``focus`` bytes (the header)."""
    spots = draw(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, min(focus, n) - 1), st.integers(0, n - 1)), st.integers(1, 255)
            ),
            min_size=1,
            max_size=4,
        )
    )

    def apply(raw: bytearray) -> None:
        for i, x in spots:
            raw[i % len(raw)] ^= x  # after a cut, the spot wraps into what is left

    return apply


def _cut(n: int) -> st.SearchStrategy[Callable[[bytearray], None]]:
    return st.integers(0, n - 1).map(lambda k: lambda raw: raw.__delitem__(slice(k, None)))


def _tail() -> st.SearchStrategy[Callable[[bytearray], None]]:
    return st.binary(min_size=1, max_size=64).map(lambda extra: lambda raw: raw.extend(extra))


def _uint_bytes(size: int) -> st.SearchStrategy[bytes]:
    """``size`` bytes: a boundary integer (either byte order) or random bytes."""
    limit = 2 ** (8 * size)
    boundary = st.sampled_from([v % limit for v in INTERESTING])
    order = st.sampled_from(["little", "big"])
    return st.one_of(
        st.tuples(boundary, order).map(lambda vo: vo[0].to_bytes(size, vo[1])),
        st.binary(min_size=size, max_size=size),
    )


def _mutated(raw: bytes, edits: list[Callable[[bytearray], None]]) -> bytes:
    out = bytearray(raw)
    for edit in edits:
        if out:
            edit(out)
    return bytes(out)


# JSON values of every kind, numbers at and beyond the edges a reader must refuse
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(INTERESTING),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["F32", "F16", "I32", "U8", "BF16", "F64", "x\n\x1b[2J"]),
)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)


# ------------------------------------------------------------------ safetensors


def _st_parts(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _st_pack(header: dict[str, Any], data: bytes) -> bytes:
    h = json.dumps(header).encode()  # NaN and Infinity written as such: the reader must refuse them
    return len(h).to_bytes(8, "little") + h + data


@st.composite
def _st_header_edit(draw: st.DrawFn, header: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """One field of one entry (or an entry, or the metadata) replaced by random JSON, or by a
    value near the real one (offsets shifted a little, a shape re-arranged, another dtype)."""
    names = sorted(header)
    name = draw(st.sampled_from(names))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole", "metadata", "drop"]))
    entry = header[name] if name != "__metadata__" else {}
    near: dict[str, st.SearchStrategy[Any]] = {
        "dtype": st.sampled_from(["F32", "I32", "F16", "U8", "F64", "BOOL"]),
        "shape": st.permutations(entry.get("shape", [1])).map(list)
        | st.lists(st.integers(0, 64), max_size=3),
        "data_offsets": st.tuples(st.integers(-4, 4), st.integers(-4, 4)).map(
            lambda d: [
                entry.get("data_offsets", [0, 0])[0] + d[0],
                entry.get("data_offsets", [0, 0])[1] + d[1],
            ]
        ),
    }
    value = draw(st.one_of(JSON_VALUES, near.get(field, JSON_VALUES)))

    def apply(h: dict[str, Any]) -> None:
        if field == "metadata":
            h["__metadata__"] = value
        elif field == "drop":
            h.pop(name, None)
        elif field == "whole" or not isinstance(h.get(name), dict):
            h[name] = value
        else:
            h[name][field] = value

    return apply


def _reference_read(path: Path) -> dict[str, torch.Tensor] | None:
    """What the reference parser reads from ``path`` (None: it refuses)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a mapping
    except Exception:  # the reference raises its own error types, and torch's
        return None


@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_is_read_as_the_reference_reads_it_or_refused(
    seeds: Seeds, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    f = seeds.safetensors / "model.safetensors"
    raw = f.read_bytes()
    header, body = _st_parts(raw)
    n_header = 8 + len(raw) - len(body)
    how = data.draw(st.sampled_from(["header-field", "bytes", "length-prefix"]), label="how")
    if how == "header-field":
        edits = data.draw(st.lists(_st_header_edit(header), min_size=1, max_size=3), label="edits")
        for edit in edits:
            edit(header)
        mutated = _st_pack(header, body)
    elif how == "length-prefix":
        prefix = data.draw(
            st.one_of(
                _uint_bytes(8),
                st.integers(-16, 16).map(lambda d: max(0, n_header - 8 + d).to_bytes(8, "little")),
            )
        )
        mutated = prefix + raw[8:]
    else:
        edits = data.draw(
            st.lists(_flips(len(raw), n_header) | _cut(len(raw)) | _tail(), min_size=1, max_size=3)
        )
        mutated = _mutated(raw, edits)
    folder = tmp_path_factory.mktemp("st")
    (folder / "config.json").write_text(json.dumps(seeds.config))
    (folder / "model.safetensors").write_bytes(mutated)
    ours = _outcome(folder)
    theirs = _reference_read(folder / "model.safetensors")
    if theirs is None:
        assert ours is None, "huref read a file the reference parser refuses"
    elif ours is not None:
        assert set(ours) == set(theirs)
        for name, t in ours.items():
            assert _bytes_equal(t, theirs[name]), name


# ------------------------------------------------------------------ GGUF


def _gguf_slots(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(every header field as (offset, bytes): lengths, counts, type codes, names, values, dims,
    tensor offsets; the 4- and 8-byte metadata values as (type-code offset, value bytes); the
    offset of tensor data) of a GGUF file, from gguf's reader of the seed."""
    r = gguf.GGUFReader(path)
    slots: list[tuple[int, int]] = []
    scalars: list[tuple[int, int]] = []
    for field in [*r.fields.values(), *(t.field for t in r.tensors)]:
        offset = field.offset
        for part in field.parts:
            slots.append((offset, int(part.nbytes)))
            offset += int(part.nbytes)
        scalar = len(field.parts) == 4 and field.types and field.types[0] != gguf.GGUFValueType.STRING
        if scalar and int(field.parts[3].nbytes) in (4, 8):  # key length, key, type code, value
            type_at = field.offset + sum(int(p.nbytes) for p in field.parts[:2])
            scalars.append((type_at, int(field.parts[3].nbytes)))
    return slots, scalars, int(r.data_offset)


_SAME_SIZE_TYPES = {4: [4, 5, 6], 8: [10, 11, 12]}  # UINT32, INT32, FLOAT32 / UINT64, INT64, FLOAT64
_FLOAT_EDGES = {
    4: [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"],
    8: [struct.pack("<d", math.nan), struct.pack("<d", math.inf)],
}


@st.composite
def _gguf_edit(
    draw: st.DrawFn, slots: list[tuple[int, int]], scalars: list[tuple[int, int]]
) -> Callable[[bytearray], None]:
    """A header field overwritten in place (a length prefix, a count, a type code, a dimension, a
    tensor offset, a value), or a metadata value given another type of its size and new bits."""
    if scalars and draw(st.booleans()):
        type_at, size = draw(st.sampled_from(scalars))
        vtype = draw(st.sampled_from(_SAME_SIZE_TYPES[size]))
        value = draw(st.one_of(_uint_bytes(size), st.sampled_from(_FLOAT_EDGES[size])))

        def retype(raw: bytearray) -> None:
            raw[type_at : type_at + 4] = struct.pack("<I", vtype)
            raw[type_at + 4 : type_at + 4 + size] = value

        return retype
    offset, size = draw(st.sampled_from(slots))
    value = draw(_uint_bytes(size) if size in (4, 8) else st.binary(min_size=size, max_size=size))

    def overwrite(raw: bytearray) -> None:
        raw[offset : offset + size] = value

    return overwrite


@FUZZ
@given(data=st.data())
def test_fuzzed_gguf_is_read_or_refused_in_one_error(
    seeds: Seeds, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    raw = seeds.gguf.read_bytes()
    slots, scalars, data_start = _gguf_slots(seeds.gguf)
    how = data.draw(st.sampled_from(["header-field", "bytes", "data-only"]), label="how")
    if how == "header-field":
        edits = data.draw(st.lists(_gguf_edit(slots, scalars), min_size=1, max_size=3), label="edits")
    elif how == "data-only":
        edits = data.draw(st.lists(_flips(len(raw) - data_start, len(raw)), min_size=1, max_size=4))
        edits = [_shifted(e, data_start) for e in edits]
    else:
        edits = data.draw(
            st.lists(_flips(len(raw), data_start) | _cut(len(raw)) | _tail(), min_size=1, max_size=3)
        )
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    path.write_bytes(_mutated(raw, edits))
    ours = _outcome(path)
    if how == "data-only":  # the header is intact: the file reads, and the norms are the new bytes
        assert ours is not None, "a file whose header is intact was refused"
        r = gguf.GGUFReader(path)
        for t in r.tensors:
            if t.name.endswith("norm.weight"):  # F32 vectors: stored as read, no row reorder
                hf = "model.norm.weight" if t.name == "output_norm.weight" else None
                if hf is not None:
                    assert _bytes_equal(ours[hf], torch.from_numpy(np.array(t.data)))


def _shifted(edit: Callable[[bytearray], None], start: int) -> Callable[[bytearray], None]:
    """``edit`` applied to the bytes from ``start`` on (the tensor data) only."""

    def apply(raw: bytearray) -> None:
        tail = bytearray(raw[start:])
        edit(tail)
        raw[start:] = tail

    return apply


# ------------------------------------------------------------------ llama2.c


@FUZZ
@given(data=st.data())
def test_fuzzed_llama2c_is_read_or_refused_in_one_error(
    seeds: Seeds, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    raw = seeds.llama2c.read_bytes()
    how = data.draw(st.sampled_from(["header-field", "bytes", "data-only"]), label="how")
    if how == "header-field":
        fields = data.draw(
            st.lists(
                st.tuples(
                    st.integers(0, 6),
                    st.sampled_from([v - 2**31 for v in (0, 1, 2**31 - 1)])
                    | st.integers(-(2**31), 2**31 - 1)
                    | st.integers(-4, 64),
                ),
                min_size=1,
                max_size=3,
            ),
            label="fields",
        )
        edits = [_header_int(i, v) for i, v in fields]
    elif how == "data-only":
        edits = [
            _shifted(e, 28)
            for e in data.draw(st.lists(_flips(len(raw) - 28, len(raw)), min_size=1, max_size=4))
        ]
    else:
        edits = data.draw(st.lists(_flips(len(raw), 28) | _cut(len(raw)) | _tail(), min_size=1, max_size=3))
    path = tmp_path_factory.mktemp("l2c") / "m.bin"
    mutated = _mutated(raw, edits)
    path.write_bytes(mutated)
    ours = _outcome(path)
    if how == "data-only":
        assert ours is not None, "a file whose header is intact was refused"
        embed = torch.from_numpy(np.frombuffer(mutated, dtype="<f4", count=16 * 32, offset=28).copy())
        assert _bytes_equal(ours["model.embed_tokens.weight"], embed.reshape(16, 32))


def _header_int(index: int, value: int) -> Callable[[bytearray], None]:
    def apply(raw: bytearray) -> None:
        raw[4 * index : 4 * index + 4] = struct.pack("<i", value)

    return apply


# ------------------------------------------------------------------ config.json


@FUZZ
@given(
    key=st.sampled_from(
        [
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "rms_norm_eps",
            "head_dim",
            "tie_word_embeddings",
            "attention_bias",
            "model_type",
            "hidden_act",
            "mlp_bias",
        ]
    ),
    value=JSON_VALUES,
)
def test_fuzzed_config_value_is_used_or_refused_in_one_error(
    seeds: Seeds, tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "model.safetensors").symlink_to(seeds.safetensors / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**seeds.config, key: value}))
    _outcome(folder)


def test_fuzzing_stays_within_memory(seeds: Seeds, tmp_path: Path) -> None:
    """The hostile extremes the fuzzer draws from, in one place: a GGUF length prefix of 2**64-1
    and a safetensors length prefix of 2**64-1 are refused without the process growing."""
    with _peak_memory_bounded(256 * 2**20):
        raw = bytearray(seeds.gguf.read_bytes())
        slots, _, _ = _gguf_slots(seeds.gguf)
        for offset, size in slots:
            if size == 8:
                bomb = bytearray(raw)
                bomb[offset : offset + 8] = (2**64 - 1).to_bytes(8, "little")
                (tmp_path / "m.gguf").write_bytes(bomb)
                assert _outcome(tmp_path / "m.gguf", note=_ignore) is None
        st_raw = (seeds.safetensors / "model.safetensors").read_bytes()
        (tmp_path / "m.safetensors").write_bytes((2**64 - 1).to_bytes(8, "little") + st_raw[8:])
        (tmp_path / "config.json").write_text(json.dumps(seeds.config))
        assert _outcome(tmp_path / "m.safetensors", note=_ignore) is None
