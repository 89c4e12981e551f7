"""Every bad input a user can hand ``huref inspect`` ends the same way: exit code 2, exactly one
line on stderr that starts with ``huref: error:`` and names the problem, no traceback, nothing on
stdout and nothing written anywhere."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from formatkit import tiny_llama, write_gguf, write_llama2c
from safetensors.torch import load_file, save_file

from huref.arch import load_model
from huref.checkpoint.source import all_finite
from huref.cli import main
from huref.errors import ArchitectureError, HurefError
from huref.paths import shown


@dataclass(frozen=True)
class Base:
    """Known-good checkpoints, built once per module and copied by each case."""

    single: Path  # HF folder: config.json + model.safetensors
    sharded: Path  # HF folder: several shards + model.safetensors.index.json
    config: object  # the transformers config they were built from
    sd: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("base")
    model, sd = tiny_llama()
    model.save_pretrained(root / "single", max_shard_size="1GB")
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    return Base(root / "single", root / "sharded", model.config, sd)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    f = folder / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f, metadata={"format": "pt"})
    return folder


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------ the cases
# Each builder makes one bad input under ``tmp`` and returns (path to inspect, extra CLI args).


def truncated_safetensors(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


def header_bad_length(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = (2**40).to_bytes(8, "little")
    f.write_bytes(bytes(raw))
    return d


def header_invalid_json(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 : 8 + n] = b"{" + b"x" * (n - 1)  # same length, not JSON
    f.write_bytes(bytes(raw))
    return d


def index_missing_shard(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")
    shards = sorted(d.glob("*.safetensors"))
    shards[-1].unlink()
    return d


def index_names_wrong_shard(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")

    def move(idx: dict) -> None:
        wm = idx["weight_map"]
        shards = sorted(set(wm.values()))
        name = next(n for n, s in wm.items() if n == "model.layers.1.mlp.down_proj.weight")
        wm[name] = next(s for s in shards if s != wm[name])

    _edit_json(d / "model.safetensors.index.json", move)
    return d


def shard_tensor_missing_from_index(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")
    _edit_json(d / "model.safetensors.index.json", lambda idx: idx["weight_map"].pop("model.norm.weight"))
    return d


def shape_contradicts_config(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    _edit_json(d / "config.json", lambda c: c.update(intermediate_size=80))
    return d


def unknown_architecture(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    _edit_json(
        d / "config.json", lambda c: c.update(model_type="wombat", architectures=["WombatForCausalLM"])
    )
    return d


def missing_config(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    (d / "config.json").unlink()
    return d


def corrupt_config(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    (d / "config.json").write_text('{"model_type": "llama",')
    return d


def config_unusable_value(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    _edit_json(d / "config.json", lambda c: c.update(hidden_size="big"))
    return d


def unclaimed_extra_tensor(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    return _edit_tensors(d, lambda t: t.update({"model.layers.0.mlp.sneaky_proj.weight": torch.zeros(4, 32)}))


def missing_declared_tensor(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    return _edit_tensors(d, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))


def nan_in_q_proj(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    return _edit_tensors(
        d, lambda t: t["model.layers.1.self_attn.q_proj.weight"].__setitem__((3, 5), float("nan"))
    )


def empty_folder(tmp: Path, b: Base) -> Path:
    (tmp / "m").mkdir()
    return tmp / "m"


class _Payload:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _pickle_folder(tmp: Path, b: Base, zipped: bool) -> Path:
    d = tmp / "m"
    d.mkdir()
    shutil.copy(b.single / "config.json", d / "config.json")
    payload = _Payload(tmp / "pwned")
    if zipped:  # torch's zip container, pickle inside
        torch.save(
            {"payload": payload, "model.embed_tokens.weight": torch.zeros(96, 32)}, d / "pytorch_model.bin"
        )
    else:  # a bare pickle: no tensors, whose plain pickling would itself call a torch global first
        (d / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": payload, "bias": [0.0]}, protocol=2))
    return d


def pickle_payload_zip(tmp: Path, b: Base) -> Path:
    return _pickle_folder(tmp, b, zipped=True)


def pickle_payload_raw(tmp: Path, b: Base) -> Path:
    return _pickle_folder(tmp, b, zipped=False)


def _torch_bin_folder(tmp: Path, b: Base, zipped: bool) -> Path:
    d = tmp / "m"
    d.mkdir()
    shutil.copy(b.single / "config.json", d / "config.json")
    f = d / "pytorch_model.bin"
    torch.save(b.sd, f, _use_new_zipfile_serialization=zipped)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


def torch_bin_truncated_zip(tmp: Path, b: Base) -> Path:
    return _torch_bin_folder(tmp, b, zipped=True)


def torch_bin_truncated_legacy(tmp: Path, b: Base) -> Path:
    return _torch_bin_folder(tmp, b, zipped=False)


def gguf_unsupported_type(tmp: Path, b: Base) -> Path:
    p = write_gguf(tmp / "m.gguf", b.sd, b.config)
    # rewrite with one tensor stored as IQ4_NL (18-byte blocks of 32 weights), which huref refuses
    w = gguf.GGUFWriter(tmp / "iq.gguf", "llama")
    r = gguf.GGUFReader(p)
    for f in r.fields.values():
        if f.name.startswith("llama.") and f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), f.types[0])
    for t in r.tensors:
        if t.name == "blk.0.ffn_up.weight":
            rows, cols = int(t.shape[1]), int(t.shape[0])
            raw = np.zeros((rows, cols // 32 * 18), dtype=np.uint8)
            w.add_tensor(t.name, raw, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        else:
            w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p.unlink()
    return tmp / "iq.gguf"


def gguf_unsupported_arch(tmp: Path, b: Base) -> Path:
    w = gguf.GGUFWriter(tmp / "m.gguf", "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp / "m.gguf"


def gguf_corrupt(tmp: Path, b: Base) -> Path:
    p = tmp / "m.gguf"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def gguf_truncated(tmp: Path, b: Base) -> Path:
    p = write_gguf(tmp / "m.gguf", b.sd, b.config)
    p.write_bytes(p.read_bytes()[: p.stat().st_size - 1000])
    return p


def llama2c_truncated(tmp: Path, b: Base) -> Path:
    p = write_llama2c(tmp / "m.bin", b.sd, b.config)
    p.write_bytes(p.read_bytes()[:-100])
    return p


def nonexistent_path(tmp: Path, b: Base) -> Path:
    return tmp / "no" / "such" / "model"


def several_safetensors_no_index(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")
    (d / "model.safetensors.index.json").unlink()
    return d


def bare_safetensors_without_config(tmp: Path, b: Base) -> Path:
    d = tmp / "m"
    d.mkdir()
    shutil.copy(b.single / "model.safetensors", d / "weights.safetensors")
    return d / "weights.safetensors"


def unrecognised_file(tmp: Path, b: Base) -> Path:
    p = tmp / "model.onnx"
    p.write_bytes(b"\x08\x07")
    return p


def config_nested_too_deep(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    (d / "config.json").write_text("[" * 200_000)  # exhausts a recursive parser
    return d


def metadata_config_not_an_object(tmp: Path, b: Base) -> Path:
    tensors = load_file(b.single / "model.safetensors")
    save_file(tensors, tmp / "m.safetensors", metadata={"format": "pt", "huref.config": "[1, 2]"})
    return tmp / "m.safetensors"


def index_shard_not_a_name(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")
    _edit_json(
        d / "model.safetensors.index.json", lambda doc: doc["weight_map"].update({"model.norm.weight": ["x"]})
    )
    return d


def _tokenizer_with(tmp: Path, b: Base, edit: Callable[[dict], None]) -> Path:
    d = _copy(b.single, tmp / "m")
    vocab = {f"t{i}": i for i in range(96)}
    doc = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []}
    edit(doc)
    (d / "tokenizer.json").write_text(json.dumps(doc))
    return d


def vocab_huge_id(tmp: Path, b: Base) -> Path:
    return _tokenizer_with(tmp, b, lambda doc: doc["model"]["vocab"].update({"zzz": 50_000_000}))


def vocab_negative_id(tmp: Path, b: Base) -> Path:
    return _tokenizer_with(tmp, b, lambda doc: doc["model"]["vocab"].update({"zzz": -3}))


def added_token_without_content(tmp: Path, b: Base) -> Path:
    return _tokenizer_with(tmp, b, lambda doc: doc.update(added_tokens=[{"id": 5}]))


def vocab_txt_not_utf8(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    (d / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\n")
    return d


def config_absurd_layer_count(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    _edit_json(d / "config.json", lambda cfg: cfg.update(num_hidden_layers=300_000))
    return d


# ------------------------------------------------------------------ hostile numbers, names and nesting
# Numbers in a header or config that are not what the field needs (1e400, NaN, 2.5, true, "two",
# -3), strings that would reach the terminal raw, and nesting deeper than a parser allows.


def _rewrite_safetensors_header(
    tmp: Path,
    b: Base,
    edit: Callable[[dict], None],
    text: Callable[[str], str] = lambda t: t,
    tail: bytes = b"",
) -> Path:
    """The single-file checkpoint with its header edited as a dict, then as JSON text."""
    d = _copy(b.single, tmp / "m")
    f = d / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    h = text(json.dumps(header)).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n :] + tail)
    return d


def _norm_field(field: str, raw_json: str) -> tuple[Callable[[dict], None], Callable[[str], str]]:
    """Edits that set model.norm.weight's ``field`` to ``raw_json`` verbatim (1e400 has no Python
    spelling that json.dumps writes back)."""
    return (
        lambda h: h["model.norm.weight"].__setitem__(field, "@@"),
        lambda t: t.replace('"@@"', raw_json),
    )


def st_offset_beyond_float(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("data_offsets", "[0, 1e400]"))


def st_shape_fraction(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("shape", "[2.5]"))


def st_shape_boolean(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("shape", "[true, 32]"))


def st_offsets_string(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("data_offsets", '"x"'))


def st_shape_negative(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("shape", "[-32]"))


def st_dtype_not_a_string(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, *_norm_field("dtype", '["F32"]'))


def st_trailing_bytes(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, lambda h: None, tail=b"\0" * 4)


def st_overlapping_tensors(tmp: Path, b: Base) -> Path:
    """model.norm.weight moved onto the first 128 bytes of another tensor (its own bytes left as a hole)."""
    return _rewrite_safetensors_header(tmp, b, lambda h: h["model.norm.weight"].update(data_offsets=[0, 128]))


def st_duplicate_name(tmp: Path, b: Base) -> Path:
    """The same name twice, the first entry typed differently: two readers could load two tensors."""
    first = '"model.norm.weight": {"dtype": "I32", "shape": [32], "data_offsets": [0, 128]}, '
    return _rewrite_safetensors_header(tmp, b, lambda h: None, lambda t: "{" + first + t[1:])


def st_metadata_not_a_map(tmp: Path, b: Base) -> Path:
    return _rewrite_safetensors_header(tmp, b, lambda h: h.update(__metadata__=""))


def _gguf_rewritten(tmp: Path, b: Base, overrides: dict[str, tuple[object, gguf.GGUFValueType]]) -> Path:
    """The tiny LLaMA as GGUF, with metadata values replaced (any type, any value)."""
    src = write_gguf(tmp / "src.gguf", b.sd, b.config)
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(tmp / "m.gguf", "llama")
    for f in r.fields.values():
        if f.name.startswith("llama.") and f.name not in overrides:
            w.add_key_value(f.name, f.contents(), f.types[0])
    for key, (value, vtype) in overrides.items():
        w.add_key_value(key, value, vtype)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src.unlink()
    return tmp / "m.gguf"


_V = gguf.GGUFValueType


def gguf_block_count_string(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.block_count": ("two", _V.STRING)})


def gguf_block_count_nan(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.block_count": (float("nan"), _V.FLOAT32)})


def gguf_embedding_length_huge(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.embedding_length": (2**40, _V.UINT64)})


def gguf_head_count_zero(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.attention.head_count": (0, _V.UINT32)})


def gguf_eps_nan(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.attention.layer_norm_rms_epsilon": (float("nan"), _V.FLOAT32)})


def gguf_rope_base_infinite(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.rope.freq_base": (float("inf"), _V.FLOAT32)})


def gguf_context_length_negative(tmp: Path, b: Base) -> Path:
    return _gguf_rewritten(tmp, b, {"llama.context_length": (-5, _V.INT32)})


def gguf_token_not_utf8(tmp: Path, b: Base) -> Path:
    p = write_gguf(tmp / "m.gguf", b.sd, b.config, tokens=["<unk>", "zé", *[f"t{i}" for i in range(94)]])
    raw = p.read_bytes()
    assert raw.count("zé".encode()) == 1
    p.write_bytes(raw.replace("zé".encode(), b"z\xff\xfe"))  # same length, not UTF-8
    return p


def _gguf_bytes(kv: list[bytes], n_tensors: int = 0) -> bytes:
    """A GGUF v3 header with general.architecture = llama and the given raw key/value records."""

    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    arch = text("general.architecture") + struct.pack("<I", 8) + text("llama")
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 1 + len(kv)) + arch + b"".join(kv)


def gguf_arrays_nested_deep(tmp: Path, b: Base) -> Path:
    depth = 5000  # far past Python's recursion limit
    key = struct.pack("<Q", 1) + b"x" + struct.pack("<I", 9)  # "x": ARRAY
    nested = struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)  # ARRAY of ARRAY ... of UINT8[0]
    p = tmp / "m.gguf"
    p.write_bytes(_gguf_bytes([key + nested]))
    return p


def gguf_tensor_name_with_escapes(tmp: Path, b: Base) -> Path:
    w = gguf.GGUFWriter(tmp / "m.gguf", "llama")
    for k, v in (("block_count", 1), ("embedding_length", 32), ("attention.head_count", 4)):
        w.add_uint32(f"llama.{k}", v)
    w.add_tensor("blk.0.evil\nname\x1b[31m", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp / "m.gguf"


def _config_text(tmp: Path, b: Base, key: str, raw_json: str) -> Path:
    d = _copy(b.single, tmp / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = "@@"
    (d / "config.json").write_text(json.dumps(cfg).replace('"@@"', raw_json))
    return d


def tensor_name_with_escapes(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    return _edit_tensors(d, lambda t: t.update({"evil\nname\x1b[31m": torch.zeros(2)}))


def folder_name_with_escapes(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m\n\x1b[2Jx")
    (d / "config.json").write_text("{")
    return d


def config_nested_deep_but_parseable(tmp: Path, b: Base) -> Path:
    return _config_text(tmp, b, "extra", "[" * 500 + "]" * 500)


def tokenizer_nested_too_deep(tmp: Path, b: Base) -> Path:
    d = _copy(b.single, tmp / "m")
    (d / "tokenizer.json").write_text('{"model": ' + "[" * 200_000)
    return d


def index_nested_too_deep(tmp: Path, b: Base) -> Path:
    d = _copy(b.sharded, tmp / "m")
    (d / "model.safetensors.index.json").write_text('{"weight_map": ' + "{" * 200_000)
    return d


def bin_index_names_a_path(tmp: Path, b: Base) -> Path:
    """A pytorch_model.bin index whose shard name leads out of the folder."""
    d = tmp / "m"
    d.mkdir()
    shutil.copy(b.single / "config.json", d / "config.json")
    torch.save(b.sd, tmp / "outside.bin")
    index = {"weight_map": dict.fromkeys(b.sd, "../outside.bin")}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return d


def _config_case(key: str, raw_json: str) -> Callable[[Path, Base], Path]:
    return lambda tmp, b: _config_text(tmp, b, key, raw_json)


_WHOLE = "must be a whole number from 1 to 2147483647, not"
HOSTILE_CASES: list[tuple[str, Callable[[Path, Base], Path], str, list[str]]] = [
    ("st-offset-1e400", st_offset_beyond_float, "data_offsets must be two integers >= 0", []),
    ("st-shape-2.5", st_shape_fraction, "shape must be a list of integers 0..2**63-1", []),
    ("st-shape-boolean", st_shape_boolean, "shape must be a list of integers 0..2**63-1", []),
    ("st-offsets-string", st_offsets_string, "data_offsets must be two integers >= 0", []),
    ("st-shape-negative", st_shape_negative, "shape must be a list of integers 0..2**63-1", []),
    ("st-dtype-not-a-string", st_dtype_not_a_string, "has unsupported dtype of JSON type list", []),
    ("st-trailing-bytes", st_trailing_bytes, "4 bytes after the last tensor belong to no tensor", []),
    ("st-overlap", st_overlapping_tensors, "overlaps the tensor before it", []),
    ("st-duplicate-name", st_duplicate_name, "key 'model.norm.weight' appears twice", []),
    (
        "st-metadata-not-a-map",
        st_metadata_not_a_map,
        "corrupt safetensors metadata (must map str to str)",
        [],
    ),
    (
        "gguf-block-count-string",
        gguf_block_count_string,
        "GGUF metadata llama.block_count must be an integer",
        [],
    ),
    ("gguf-block-count-nan", gguf_block_count_nan, "GGUF metadata llama.block_count must be an integer", []),
    (
        "gguf-embedding-huge",
        gguf_embedding_length_huge,
        "llama.embedding_length = 1099511627776 is outside",
        [],
    ),
    ("gguf-head-count-zero", gguf_head_count_zero, "llama.attention.head_count = 0 is outside 1..", []),
    ("gguf-eps-nan", gguf_eps_nan, "layer_norm_rms_epsilon = nan is not a finite number", []),
    ("gguf-rope-inf", gguf_rope_base_infinite, "llama.rope.freq_base = inf is not a finite number", []),
    ("gguf-context-negative", gguf_context_length_negative, "llama.context_length = -5 is outside 1..", []),
    ("gguf-token-not-utf8", gguf_token_not_utf8, "GGUF metadata tokenizer.ggml.tokens is unreadable", []),
    ("gguf-arrays-nested-deep", gguf_arrays_nested_deep, "'x' nests arrays deeper than 8 levels", []),
    (
        "gguf-tensor-name-escapes",
        gguf_tensor_name_with_escapes,
        r"GGUF tensors not understood: blk.0.evil\nname\x1b[31m",
        [],
    ),
    ("config-1e400", _config_case("hidden_size", "1e400"), f"'hidden_size' {_WHOLE} Infinity", []),
    ("config-nan", _config_case("hidden_size", "NaN"), f"'hidden_size' {_WHOLE} NaN", []),
    ("config-two", _config_case("num_hidden_layers", '"two"'), f"{_WHOLE} the string 'two'", []),
    ("config-true", _config_case("num_hidden_layers", "true"), f"'num_hidden_layers' {_WHOLE} true", []),
    ("config-negative", _config_case("num_hidden_layers", "-3"), f"'num_hidden_layers' {_WHOLE} -3", []),
    ("config-fraction", _config_case("num_hidden_layers", "2.5"), f"'num_hidden_layers' {_WHOLE} 2.5", []),
    (
        "config-eps-infinite",
        _config_case("rms_norm_eps", "Infinity"),
        "'rms_norm_eps' must be a finite number, not Infinity",
        [],
    ),
    (
        "config-eps-negative",
        _config_case("rms_norm_eps", "-1e-05"),
        "'rms_norm_eps' must be between 0.0 and inf, not -1e-05",
        [],
    ),
    (
        "config-flag-string",
        _config_case("tie_word_embeddings", '"false"'),
        "'tie_word_embeddings' must be true or false, not the string 'false'",
        [],
    ),
    (
        "config-model-type-list",
        _config_case("model_type", '["llama"]'),
        "'model_type' must be a string, not a JSON array",
        [],
    ),
    (
        "config-model-type-escapes",
        _config_case("model_type", json.dumps("wombat\n\x1b[2J")),
        r"unknown architecture 'wombat\n\x1b[2J'",
        [],
    ),
    (
        "tensor-name-escapes",
        tensor_name_with_escapes,
        r"not claimed by the llama definition: evil\nname\x1b[31m",
        [],
    ),
    ("folder-name-escapes", folder_name_with_escapes, r"/m\n\x1b[2Jx/config.json: corrupt config.json", []),
    (
        "config-nested-deep",
        config_nested_deep_but_parseable,
        "corrupt config.json (nested deeper than 64 levels)",
        [],
    ),
    ("tokenizer-nested-deep", tokenizer_nested_too_deep, "corrupt tokenizer.json (not valid JSON)", []),
    ("index-nested-deep", index_nested_too_deep, "corrupt index (not valid JSON)", []),
    (
        "bin-index-names-a-path",
        bin_index_names_a_path,
        "shard name '../outside.bin' must be a file name in the folder",
        [],
    ),
]


# (id, builder, distinctive substring of the one error line, extra CLI args)
CASES: list[tuple[str, Callable[[Path, Base], Path], str, list[str]]] = [
    ("truncated-safetensors", truncated_safetensors, "truncated file", []),
    ("header-bad-length", header_bad_length, "corrupt safetensors header (declared length 1099511627776", []),
    ("header-invalid-json", header_invalid_json, "corrupt safetensors header (not valid JSON)", []),
    ("index-missing-shard", index_missing_shard, "-of-00003.safetensors', which is missing", []),
    (
        "index-names-wrong-shard",
        index_names_wrong_shard,
        "'model.layers.1.mlp.down_proj.weight' is indexed in",
        [],
    ),
    (
        "shard-tensor-not-indexed",
        shard_tensor_missing_from_index,
        "missing from the index: model.norm.weight",
        [],
    ),
    (
        "shape-contradicts-config",
        shape_contradicts_config,
        "has shape [32, 64], but config.json implies [32, 80]",
        [],
    ),
    ("unknown-architecture", unknown_architecture, "unknown architecture 'wombat'", []),
    ("missing-config", missing_config, "no config.json", []),
    ("corrupt-config", corrupt_config, "corrupt config.json (not valid JSON)", []),
    (
        "config-unusable-value",
        config_unusable_value,
        "config.json: 'hidden_size' must be a whole number from 1 to 2147483647, not the string 'big'",
        [],
    ),
    (
        "unclaimed-extra-tensor",
        unclaimed_extra_tensor,
        "not claimed by the llama definition: model.layers.0.mlp.sneaky_proj.weight",
        [],
    ),
    (
        "missing-declared-tensor",
        missing_declared_tensor,
        "missing tensors model.layers.1.self_attn.k_proj.weight",
        [],
    ),
    (
        "nan-in-q-proj",
        nan_in_q_proj,
        "NaN or infinite values in 1 tensor(s): model.layers.1.self_attn.q_proj.weight",
        ["--check-values"],
    ),
    ("empty-folder", empty_folder, "no weights (.safetensors or pytorch_model*.bin): empty folder", []),
    (
        "pickle-payload-zip",
        pickle_payload_zip,
        "refused, the pickle asks to run code or build objects other than tensors (posix.system;",
        [],
    ),
    (
        "pickle-payload-raw",
        pickle_payload_raw,
        "(posix.system; loaded with weights_only=True, nothing was executed)",
        [],
    ),
    (
        "torch-bin-truncated-zip",
        torch_bin_truncated_zip,
        "corrupt or truncated PyTorch file (zip without",
        [],
    ),
    ("torch-bin-truncated-legacy", torch_bin_truncated_legacy, "corrupt or truncated PyTorch file", []),
    (
        "gguf-unsupported-type",
        gguf_unsupported_type,
        "'blk.0.ffn_up.weight' has unsupported GGUF type IQ4_NL",
        [],
    ),
    ("gguf-unsupported-arch", gguf_unsupported_arch, "GGUF architecture 'mamba' is not supported", []),
    ("gguf-corrupt", gguf_corrupt, "corrupt GGUF file", []),
    ("gguf-truncated", gguf_truncated, "corrupt GGUF file", []),
    ("llama2c-truncated", llama2c_truncated, "truncated llama2.c export", []),
    ("nonexistent-path", nonexistent_path, "no such file or folder", []),
    (
        "several-safetensors-no-index",
        several_safetensors_no_index,
        "3 safetensors files but no model.safetensors.index.json",
        [],
    ),
    ("bare-safetensors-no-config", bare_safetensors_without_config, "needs a config.json beside it", []),
    ("unrecognised-file", unrecognised_file, "unrecognised checkpoint", []),
    ("config-nested-too-deep", config_nested_too_deep, "corrupt config.json (not valid JSON)", []),
    (
        "metadata-config-not-an-object",
        metadata_config_not_an_object,
        "corrupt config in metadata (not a JSON object)",
        [],
    ),
    ("index-shard-not-a-name", index_shard_not_a_name, "corrupt index (needs a 'weight_map' object", []),
    ("vocab-huge-id", vocab_huge_id, "corrupt vocabulary (token id 50000000 for 97 tokens)", []),
    ("vocab-negative-id", vocab_negative_id, "corrupt vocabulary (token id -3 for 97 tokens)", []),
    ("added-token-without-content", added_token_without_content, "corrupt tokenizer.json", []),
    ("vocab-txt-not-utf8", vocab_txt_not_utf8, "corrupt vocabulary (not UTF-8 text)", []),
    ("config-absurd-layer-count", config_absurd_layer_count, "declares 300000 layers", []),
    *HOSTILE_CASES,
]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")} if root.exists() else {}


@pytest.mark.parametrize("case,build,expected,args", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_exit_2(
    case: str,
    build: Callable[[Path, Base], Path],
    expected: str,
    args: list[str],
    base: Base,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = build(inputs, base)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(inputs)
    capfd.readouterr()

    code = main(["inspect", str(path), "--json", *args])

    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code == 2, (case, code, err)
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert lines[0].startswith("huref: error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    assert "Traceback" not in err
    assert "\x1b" not in err, "a terminal escape code reached the terminal raw"
    assert out == "", "no partial output on stdout"
    assert _tree(inputs) == before, "the input was modified or something was written beside it"
    assert _tree(work) == {}, "something was written in the working directory"
    assert not (inputs / "pwned").exists(), "a pickle payload ran"


@pytest.mark.parametrize("case,build,expected,args", HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_input_error_is_one_printable_line_at_the_api(
    case: str, build: Callable[[Path, Base], Path], expected: str, args: list[str], base: Base, tmp_path: Path
) -> None:
    """The API's own message, before any CLI escaping, is one printable line: names, config
    strings and paths from a file are shown escaped (a batch scan logs these messages as they are)."""
    path = build(tmp_path, base)
    with pytest.raises(HurefError) as err:
        load_model(path)
    message = str(err.value)
    assert message == shown(message), f"control characters in {message!r}"
    assert expected in message


# Run in a child process with a memory cap and a time limit: before special files were refused,
# these inputs blocked forever (FIFOs) or read /dev/zero until memory ran out.
_SPECIAL_FILE_RUNNER = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
from huref.cli import main
from huref.checkpoint import open_checkpoint
from huref.checkpoint.gguf_io import GGUFSource
from huref.checkpoint.llama2c import Llama2cSource
from huref.checkpoint.safetensors_io import SafetensorsFile
from huref.checkpoint.torchbin import load_state_dict_safely
from huref.errors import HurefError
readers = {"open": open_checkpoint, "safetensors": SafetensorsFile, "gguf": GGUFSource,
           "llama2c": Llama2cSource, "torchbin": load_state_dict_safely}
results = []
for how, path in json.loads(sys.argv[1]):
    if how == "cli":
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["inspect", path, "--json", "--no-hash"])
        results.append([code, err.getvalue()])
    else:
        try:
            readers[how](path)
            results.append([0, ""])
        except HurefError as e:
            results.append([2, str(e)])
print(json.dumps(results))
"""


def _special_file_cases(tmp: Path, b: Base) -> list[tuple[str, Path, str]]:
    """(how to open it, path, what the one line says) for every place a checkpoint's file is opened."""

    def fifo(p: Path) -> Path:
        p.unlink(missing_ok=True)
        os.mkfifo(p)
        return p

    def zero(p: Path) -> Path:
        p.unlink(missing_ok=True)
        p.symlink_to("/dev/zero")
        return p

    fifo_weights = _copy(b.single, tmp / "fifo-weights")
    fifo(fifo_weights / "model.safetensors")
    fifo_config = _copy(b.single, tmp / "fifo-config")
    fifo(fifo_config / "config.json")
    fifo_tokenizer = _copy(b.single, tmp / "fifo-tokenizer")
    fifo(fifo_tokenizer / "tokenizer.json")
    fifo_index = _copy(b.sharded, tmp / "fifo-index")
    fifo(fifo_index / "model.safetensors.index.json")
    fifo_shard = _copy(b.sharded, tmp / "fifo-shard")
    fifo(sorted(fifo_shard.glob("*.safetensors"))[0])
    zero_bin = tmp / "zero-bin"
    zero_bin.mkdir()
    shutil.copy(b.single / "config.json", zero_bin / "config.json")
    zero(zero_bin / "pytorch_model.bin")
    bare = tmp / "bare"
    bare.mkdir()
    shutil.copy(b.single / "model.safetensors", bare / "m.safetensors")
    fifo(bare / "config.json")
    bomb = tmp / "bomb.gguf"  # an array of 2**40 bytes declared in a file of 80
    bomb.write_bytes(_gguf_bytes([struct.pack("<Q", 1) + b"x" + struct.pack("<IIQ", 9, 0, 2**40)]))
    strings = tmp / "strings.gguf"  # 2**40 strings declared
    strings.write_bytes(_gguf_bytes([struct.pack("<Q", 1) + b"x" + struct.pack("<IIQ", 9, 8, 2**40)]))
    fifo_state = "is a FIFO, not a regular file"
    return [
        ("cli", fifo_weights, f"safetensors file {fifo_weights}/model.safetensors {fifo_state}"),
        ("open", fifo(tmp / "m.gguf"), f"checkpoint {tmp}/m.gguf {fifo_state}"),
        ("open", fifo(tmp / "m.bin"), f"checkpoint {tmp}/m.bin {fifo_state}"),
        ("cli", fifo_config, f"config.json {fifo_config}/config.json {fifo_state}"),
        ("cli", fifo_tokenizer, f"tokenizer file {fifo_tokenizer}/tokenizer.json {fifo_state}"),
        ("cli", fifo_index, f"index {fifo_index}/model.safetensors.index.json {fifo_state}"),
        ("cli", fifo_shard, "-of-00003.safetensors is a FIFO, not a regular file"),
        ("cli", bare / "m.safetensors", f"config.json {bare}/config.json {fifo_state}"),
        ("cli", zero_bin, "pytorch_model.bin is a character device, not a regular file"),
        ("open", zero(tmp / "zero.bin"), f"checkpoint {tmp}/zero.bin is a character device"),
        ("cli", bomb, "corrupt GGUF file (array 'x' of 1099511627776 elements at byte 94 runs past the end"),
        (
            "cli",
            strings,
            "corrupt GGUF file (array 'x' of 1099511627776 elements at byte 94 runs past the end",
        ),
        ("safetensors", fifo(tmp / "api.safetensors"), fifo_state),
        ("gguf", fifo(tmp / "api.gguf"), fifo_state),
        ("llama2c", fifo(tmp / "api.bin"), fifo_state),
        ("torchbin", zero(tmp / "api-zero.bin"), "is a character device, not a regular file"),
    ]


@pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs FIFOs and /dev/zero"
)
def test_special_files_are_refused_before_opening(base: Base, tmp_path: Path) -> None:
    """A FIFO or a link to /dev/zero wherever a checkpoint's file is opened (weights of each format,
    config.json, tokenizer.json, the index, a shard), and GGUF arrays whose declared length runs
    past the file, are one line and exit 2: nothing blocks, nothing reads without end."""
    cases = _special_file_cases(tmp_path, base)
    arg = json.dumps([[how, str(path)] for how, path, _ in cases])
    r = subprocess.run(
        [sys.executable, "-c", _SPECIAL_FILE_RUNNER, arg], capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for (how, path, expected), (code, err) in zip(cases, json.loads(r.stdout), strict=True):
        assert code == 2, (how, path, err)
        assert err.count("\n") <= 1 and "Traceback" not in err, err
        assert expected in err, (expected, err)


def test_nan_weight_is_refused_when_read_by_role(base: Base, tmp_path: Path) -> None:
    # inspect reads headers only unless --check-values; any role read refuses non-finite weights
    path = nan_in_q_proj(tmp_path, base)
    m = load_model(path)
    m.tensor("attn_q", 0)  # the clean layer reads fine
    with pytest.raises(ArchitectureError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight contains NaN"):
        m.tensor("attn_q", 1)
    assert main(["inspect", str(path), "--no-hash", "--json"]) == 0  # header-only inspection passes


def test_pickle_payload_refused_by_the_console_script(base: Base, tmp_path: Path) -> None:
    """End to end in a fresh process: exit 2, one line, and the payload never ran."""
    path = pickle_payload_zip(tmp_path, base)
    script = Path(sys.executable).with_name("huref")
    cmd = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "import sys; from huref.cli import main; sys.exit(main())"]
    )
    r = subprocess.run(
        [*cmd, "inspect", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("huref: error: "), r.stderr
    assert "refused" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "pwned").exists(), "the pickle payload ran"


def test_pickle_payload_really_is_a_payload(base: Base, tmp_path: Path) -> None:
    """The control: an unrestricted unpickle of the same bytes does run the command, so the
    refusal above is what protects the user."""
    path = pickle_payload_raw(tmp_path, base) / "pytorch_model.bin"
    pickle.loads(path.read_bytes())  # deliberately unsafe, on our own test payload
    assert (tmp_path / "pwned").exists()


def test_llama2c_header_is_checked_before_reading(tmp_path: Path) -> None:
    """A .bin whose 28-byte header claims absurd sizes is not mistaken for a llama2.c export."""
    p = tmp_path / "weird.bin"
    p.write_bytes(struct.pack("<7i", 8, 16, 1, 3, 3, 10, 4) + b"\0" * 64)  # dim 8 not divisible by 3 heads
    assert main(["inspect", str(p)]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_check_is_exact(dtype: torch.dtype) -> None:
    """The fast check (a sum) never misses a NaN or an infinity, and never blames a finite tensor
    whose sum overflows."""
    big = torch.finfo(dtype).max
    x = torch.randn(1000).to(dtype)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[517] = bad
        assert not all_finite(y), bad
    y = x.clone()
    y[3], y[700] = float("inf"), -float("inf")  # the sum is NaN, not a cancellation to finite
    assert not all_finite(y)
    assert all_finite(torch.full((64,), big, dtype=dtype)), "finite values whose sum overflows"
    assert all_finite(torch.arange(5)) and all_finite(torch.empty(0, dtype=dtype))


@pytest.mark.parametrize("modes", ["robust,paper", "paper"])
def test_weights_whose_invariants_overflow_are_refused_naming_the_layer(
    modes: str, base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Weights of 1e38 are finite, so they pass the weight check, but the products of the layer
    overflow float32: the fingerprint is refused with the model and the layer, and not written."""
    d = _edit_tensors(
        _copy(base.single, tmp_path / "m"),
        lambda t: t["model.layers.1.mlp.down_proj.weight"].fill_(1e38),
    )
    out = tmp_path / "fp.safetensors"
    capfd.readouterr()
    assert main(["fingerprint", str(d), "-o", str(out), "--modes", modes]) == 2
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error: "), lines
    assert str(d) in lines[0] and "layer 1 overflows in its" in lines[0] and "ffn term" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
