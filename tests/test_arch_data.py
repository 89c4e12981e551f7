"""Architecture families are data, checked when defined and checked both ways when bound: a
misspelt role or config entry is refused at definition, every family's tiny model binds with no
unclaimed tensor and every required role, GGUF names come from the family table, and
``huref arch ls / validate`` show and check the definitions from the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch
from archkit import FAMILIES, Family
from safetensors.torch import load_file, save_file

from huref.arch import ARCHITECTURES, Rule, spec_for
from huref.arch.keys import ConfigKeys, Ref, count
from huref.arch.model import Model
from huref.arch.roles import GLOBAL_ROLES, LAYER_ROLES, Role
from huref.arch.spec import GGUFNames
from huref.arch.validate import declared_tensors, missing_roles, validate_checkpoint
from huref.checkpoint import open_checkpoint
from huref.cli import main
from huref.errors import ArchitectureError

# The role names stored in fingerprint files and caches: the enum must keep them as they were.
STORED_ROLE_NAMES = {
    *("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "attn_norm", "mlp_norm"),
    *("attn_out_norm", "mlp_out_norm", "attn_q_norm", "attn_k_norm", "embed", "pos_embed", "type_embed"),
    *("embed_norm", "embed_proj_in", "embed_proj_out", "final_norm", "lm_head"),
    # sparse (MoE) layers and OLMoE's projection-wide q/k norms
    *("moe_router", "expert_gate", "expert_up", "expert_down", "shared_gate", "shared_up", "shared_down"),
    *("shared_expert_gate", "attn_q_norm_wide", "attn_k_norm_wide"),
    # DeepSeek-V2/V3: Multi-head Latent Attention and the router's selection bias
    *("attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a", "attn_kv_a_norm", "attn_kv_b", "moe_router_bias"),
    "attn_sinks",  # GPT-OSS's per-head attention sinks
}
CASES = [(f, tie) for f in FAMILIES for tie in f.ties]
IDS = [f"{f.name}-{'tied' if t else 'untied'}" for f, t in CASES]


def _save(fam: Family, tie: bool, out: Path) -> Path:
    torch.manual_seed(0)
    config, cls = fam.make(tie)
    model = cls(config).eval()
    if tie and hasattr(model, "tie_weights"):
        model.tie_weights()
    model.save_pretrained(out)
    return out


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error: "), err
    return lines[0]


# ------------------------------------------------------------------ definitions checked when made
@pytest.mark.parametrize("role", ["attn_qq", "mlp_gates", "attn_q_bais", "Attn_Q", "lm_head_biases"])
def test_rule_with_misspelt_role_is_refused(role: str) -> None:
    with pytest.raises(ArchitectureError, match="unknown role"):
        Rule("layers.{L}.x.weight", (role,))


def test_misspelt_role_error_names_the_closest_role() -> None:
    with pytest.raises(ArchitectureError, match="did you mean 'attn_q'"):
        Rule("layers.{L}.x.weight", ("attn_qq",))


def test_bias_roles_stay_expressible_and_are_stored_as_plain_names() -> None:
    rule = Rule("layers.{L}.x.bias", ("attn_q_norm_bias",), "vector")
    assert rule.roles == ("attn_q_norm_bias",) and type(rule.roles[0]) is str
    fused = Rule("h.{L}.qkv.weight", (Role.attn_q, Role.attn_k, Role.attn_v), split="qkv")
    assert fused.roles == ("attn_q", "attn_k", "attn_v") and all(type(r) is str for r in fused.roles)


def test_rule_storage_and_split_are_checked() -> None:
    with pytest.raises(ArchitectureError, match="unknown storage"):
        Rule("x.weight", ("attn_q",), "conv1D")  # type: ignore[arg-type]
    with pytest.raises(ArchitectureError, match="takes 3 role"):
        Rule("x.weight", ("attn_q", "attn_k"), split="qkv")


def test_role_names_are_those_fingerprints_store() -> None:
    assert {r.value for r in Role} == STORED_ROLE_NAMES
    assert set(LAYER_ROLES) | set(GLOBAL_ROLES) == STORED_ROLE_NAMES
    assert LAYER_ROLES["attn_k"] == "[K*hd, d]" and GLOBAL_ROLES["embed"] == "[V, d]"
    assert f"{Role.mlp_up}" == "mlp_up" and json.dumps([Role.mlp_up]) == '["mlp_up"]'


def test_gguf_table_with_misspelt_or_doubled_role_is_refused() -> None:
    with pytest.raises(ArchitectureError, match="unknown role"):
        GGUFNames(archs=(), tensors={"blk.{L}.attn_q.weight": "atn_q"})
    with pytest.raises(ArchitectureError, match="give the role"):  # two GGUF tensors, one checkpoint name
        GGUFNames(archs=(), tensors={"blk.{L}.attn_q.weight": "attn_q", "blk.{L}.wq.weight": "attn_q"})


def _keys(**entries: object) -> dict[str, object]:
    base: dict[str, object] = {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "n_layers": count("num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("intermediate_size"),
        "vocab_size": count("vocab_size"),
        "norm": "rms",
        "norm_eps": 1e-5,
    }
    return {**base, **entries}


def test_config_keys_with_a_misspelt_entry_are_refused() -> None:
    ConfigKeys(_keys())  # the well-formed declaration is accepted
    with pytest.raises(ArchitectureError, match="'n_layer' is no ArchConfig field"):
        ConfigKeys(_keys(n_layer=count("num_hidden_layers")))
    with pytest.raises(ArchitectureError, match="lack the ArchConfig field vocab_size"):
        ConfigKeys({k: v for k, v in _keys().items() if k != "vocab_size"})
    with pytest.raises(ArchitectureError, match="override for 'qwen2' names unknown entries tide"):
        ConfigKeys(_keys(), overrides={"qwen2": {"tide": True}})
    with pytest.raises(ArchitectureError, match="refers to 'd_ff', which is not read before it"):
        ConfigKeys(_keys(n_kv_heads=Ref("d_ff")))


def test_model_type_override_is_data_not_code() -> None:
    """Gemma's differences from LLaMA are overrides of the llama family's entries, read by the
    one reader: the same config read as gemma gets the (1 + w) norms and sqrt(d) embedding scale."""
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 8,
        "vocab_size": 10,
    }
    spec = spec_for(cfg)
    llama, gemma = spec.read_config(cfg), spec.read_config({**cfg, "model_type": "gemma"})
    assert (llama.norm_offset, llama.extra["embed_scale"], llama.tied) == (0.0, 1.0, False)
    assert (gemma.norm_offset, gemma.extra["embed_scale"], gemma.tied) == (1.0, 8.0, True)
    assert spec.read_config({**cfg, "model_type": "qwen2"}).extra["qkv_bias"] is True


# ------------------------------------------------------------------ every family, both ways
def test_the_tiny_models_cover_every_registered_family() -> None:
    covered = {spec_for(fam.make(False)[0].to_dict()).name for fam in FAMILIES}
    assert covered == set(ARCHITECTURES.names())


@pytest.mark.parametrize("fam,tie", CASES, ids=IDS)
def test_every_family_binds_its_tiny_model_with_no_unclaimed_tensor_and_every_required_role(
    fam: Family, tie: bool, tmp_path: Path
) -> None:
    path = _save(fam, tie, tmp_path)
    model = Model(open_checkpoint(path))
    names = set(model.ckpt.source.names())
    bound = {b.name for b in model._bind.values()}
    ignored = {n for n in names if any(re.search(p, n) for p in model.spec.ignored)}
    assert names - bound - ignored <= model.buffers, "a stored tensor is bound to no role"
    assert missing_roles(model.cfg, model.has) == []
    # every bound tensor is one the definition declares for this config
    assert bound <= set(declared_tensors(model.spec, model.cfg, model.prefix))
    result = validate_checkpoint(path)
    assert result.tensors == len(names) and result.spec.name == model.spec.name


def test_a_definition_that_forgot_a_role_is_caught_by_the_role_check(tmp_path: Path) -> None:
    """Binding alone cannot see a role the definition never declares (its tensor ignored): the
    required-role check does."""
    path = _save(FAMILIES[0], False, tmp_path)
    spec = ARCHITECTURES.get("llama")
    rules = tuple(r for r in spec.rules if r.roles != ("attn_k",))
    forgetful = dataclasses.replace(spec, rules=rules, ignored=(r"\.k_proj\.weight$",), gguf=None)
    model = Model(open_checkpoint(path), forgetful)  # binds: the k projections are 'ignored'
    assert missing_roles(model.cfg, model.has) == ["attn_k (layer 0)", "attn_k (layer 1)"]


def test_gguf_names_are_read_from_the_family_table() -> None:
    from huref.arch.families import gguf_archs

    archs = gguf_archs()
    assert list(archs) == ["llama", "qwen2", "qwen2moe", "qwen3moe"]
    spec = ARCHITECTURES.get("llama")
    assert all(s is spec for s, _ in archs.values())
    assert archs["llama"][1].rotary_interleaved and not archs["qwen2"][1].rotary_interleaved
    names = spec.gguf_names()
    assert names["blk.{L}.attn_q.weight"] == ("model.layers.{L}.self_attn.q_proj.weight", "attn_q")
    assert names["blk.{L}.ffn_norm.weight"] == (
        "model.layers.{L}.post_attention_layernorm.weight",
        "mlp_norm",
    )
    assert names["output.weight"] == ("lm_head.weight", "lm_head")


# ------------------------------------------------------------------ the command line
def test_arch_ls_lists_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "ls", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(ARCHITECTURES.names())
    for name, spec in ARCHITECTURES.items():
        assert rows[name]["model_types"] == list(spec.model_types)
        assert {"embed", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"} <= set(
            rows[name]["roles"]
        )
    assert rows["llama"]["gguf"] == ["llama", "qwen2", "qwen2moe", "qwen3moe"] and rows["gpt2"]["gguf"] == []
    assert main(["arch", "ls"]) == 0
    out = capsys.readouterr().out
    for name, spec in ARCHITECTURES.items():
        assert f"{name}: model_types {', '.join(spec.model_types)}" in out


def test_arch_validate_accepts_a_tiny_model_and_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fam = next(f for f in FAMILIES if f.name == "falcon-new")
    path = _save(fam, True, tmp_path / "m")
    assert main(["arch", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "family falcon" in out and "n_kv_heads = 2" in out and "qkv_layout = per_kv_group" in out
    assert "checked both ways" in out and "every required role present" in out
    assert main(["arch", "validate", str(path / "config.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["family"] == "falcon" and doc["checked"] == "config" and doc["extra"]["two_ln"] is True


def test_arch_validate_refuses_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(FAMILIES[0], False, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 2.5}))
    capsys.readouterr()
    for target in (path, path / "config.json"):
        assert main(["arch", "validate", str(target)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "'num_attention_heads' must be a whole number from 1 to 2147483647, not 2.5" in line


def test_arch_validate_refuses_an_unclaimed_tensor_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(FAMILIES[0], False, tmp_path / "m")
    sd = load_file(str(path / "model.safetensors"))
    sd["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["arch", "validate", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not claimed by the llama definition: model.layers.0.mlp.extra_proj.weight" in line


def test_arch_validate_refuses_a_fifo_config_without_opening_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    assert main(["arch", "validate", str(fifo)]) == 2
    assert "is a FIFO" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_arch_validate_reads_a_gguf_file_through_the_family_gguf_names(
    arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GGUF names resolve through the llama family's table to roles: the file binds both ways,
    Qwen2's q/k/v biases included."""
    from formatkit import tiny_llama, tiny_qwen2, write_gguf

    model, sd = tiny_qwen2() if arch == "qwen2" else tiny_llama()
    path = write_gguf(tmp_path / "m.gguf", sd, model.config, arch=arch)
    result = validate_checkpoint(path)
    assert result.spec.name == "llama" and result.cfg.model_type == arch and result.tensors == len(sd)
    m = Model(open_checkpoint(path))
    assert m.has("attn_q_bias", 0) == (arch == "qwen2") and m.has("mlp_gate", 1)
    assert main(["arch", "validate", str(path)]) == 0
    assert "checked both ways" in capsys.readouterr().out
