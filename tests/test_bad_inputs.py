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
from huref.errors import ArchitectureError


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
        "config.json has an unusable value (invalid literal",
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
    assert out == "", "no partial output on stdout"
    assert _tree(inputs) == before, "the input was modified or something was written beside it"
    assert _tree(work) == {}, "something was written in the working directory"
    assert not (inputs / "pwned").exists(), "a pickle payload ran"


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
