"""Sparse Mixture-of-Experts model types (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) as data.

Each is built tiny with transformers and saved; huref binds it both ways with every expert, its
roles reproduce what transformers computes (router logits, each expert, the whole sparse block
with its shared expert, the dense layers between), LayerStream yields every expert's tensors,
and a missing, stray, misspelt or misshapen expert tensor is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from archkit import MOE_FAMILIES, randomise_
from safetensors.torch import load_file, save_file

from huref.arch import ARCHITECTURES, spec_for
from huref.arch.layers import LayerStream, weight_key
from huref.arch.model import load_model
from huref.arch.roles import Role
from huref.arch.spec import Rule
from huref.arch.validate import declared_tensors, missing_roles, validate_checkpoint
from huref.cli import main
from huref.errors import ArchitectureError
from huref.invariants.kernels import moe_out, moe_route

MOE_TYPES = list(MOE_FAMILIES)
EXPERT = ("expert_gate", "expert_up", "expert_down")
SHARED = ("shared_gate", "shared_up", "shared_down", "shared_expert_gate")


def _build(model_type: str, act: str = "silu", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(MOE_FAMILIES[model_type](act)).eval()
    randomise_(model, seed)
    return model


def _save(model_type: str, out: Path, act: str = "silu") -> tuple[torch.nn.Module, Path]:
    model = _build(model_type, act)
    model.save_pretrained(out)
    return model, out


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error: "), err
    return lines[0]


def _sparse_in_transformers(model: torch.nn.Module) -> list[bool]:
    return [hasattr(layer.mlp, "experts") for layer in model.model.layers]


def _ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """A SiLU-gated FFN from huref's role tensors, [n, d] -> [n, d]."""
    return (F.silu(x @ gate.t()) * (x @ up.t())) @ down.t()


# ------------------------------------------------------------------ binding, both ways
@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_model_binds_both_ways_with_every_expert_and_its_config(model_type: str, tmp_path: Path) -> None:
    model, path = _save(model_type, tmp_path / model_type)
    hf = model.config
    m = load_model(path)
    moe = m.cfg.moe
    assert m.spec.name == "llama" and m.cfg.model_type == model_type and moe is not None
    assert moe.n_experts == 4 and moe.top_k == hf.num_experts_per_tok
    assert moe.d_expert == getattr(hf, "moe_intermediate_size", hf.intermediate_size)
    assert moe.renormalise == (model_type == "mixtral" or bool(getattr(hf, "norm_topk_prob", False)))
    assert moe.d_shared == getattr(hf, "shared_expert_intermediate_size", None)
    assert moe.shared_gated == (model_type == "qwen2_moe")
    # the same dense/sparse layers as transformers' own rule (decoder_sparse_step, mlp_only_layers)
    sparse = _sparse_in_transformers(model)
    assert [m.is_sparse(L) for L in range(m.cfg.n_layers)] == sparse
    assert list(moe.sparse_layers) == [L for L, s in enumerate(sparse) if s]
    assert not all(sparse) if model_type in ("qwen2_moe", "qwen3_moe") else all(sparse)
    names = set(m.ckpt.source.names())
    bound = {b.name for b in m._bind.values()} | {b.name for b in m._experts.values()}
    assert bound == names  # every stored tensor claimed, no buffer or ignored one needed
    assert bound <= set(declared_tensors(m.spec, m.cfg, m.prefix))
    assert missing_roles(m.cfg, m.has) == []
    for L in range(m.cfg.n_layers):
        if sparse[L]:
            assert m.expert_roles(L) == sorted(EXPERT) and m.n_experts(L) == 4
            assert m.has("moe_router", L) and not m.has("mlp_up", L)
            assert m.binding("expert_up", L, 3).expert == 3
            assert ".experts.3." in m.binding("expert_up", L, 3).name
            assert not m.has("expert_up", L, 4)
            assert m.has("shared_expert_gate", L) == (model_type == "qwen2_moe")
        else:
            assert m.expert_roles(L) == [] and m.n_experts(L) == 0
            assert m.has("mlp_gate", L) and not m.has("moe_router", L) and not m.has("expert_up", L, 0)
    assert validate_checkpoint(path).tensors == len(names)


def test_dense_models_keep_no_moe_config_and_all_dense_layers(tmp_path: Path) -> None:
    cfg = T.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=96
    )
    T.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    m = load_model(tmp_path)
    assert m.cfg.moe is None and not m.is_sparse(0) and m.expert_roles(0) == []
    assert "moe" not in m.summary() and m.moe_summary() is None


# ------------------------------------------------------------------ roles reproduce transformers
@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_roles_reproduce_transformers_router_experts_and_sparse_block(
    model_type: str, tmp_path: Path
) -> None:
    model, path = _save(model_type, tmp_path / model_type)
    m = load_model(path)
    moe = m.cfg.moe
    assert moe is not None
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for L, layer in enumerate(model.model.layers):
            x = torch.randn(24, m.cfg.d_model, generator=g)
            # the block's input: the stream through the MLP's norm, by huref's and by transformers'
            norms = m.input_norms(L, "mlp")
            xf = x
            for nm in norms:
                xf = nm.apply(xf)
            torch.testing.assert_close(xf, layer.post_attention_layernorm(x[None])[0])
            block = layer.mlp
            y_hf = block(xf[None]).reshape(-1, m.cfg.d_model)
            if not m.is_sparse(L):
                want = _ffn(xf, *(m.tensor(r, L) for r in ("mlp_gate", "mlp_up", "mlp_down")))
                torch.testing.assert_close(want, y_hf, atol=1e-5, rtol=1e-4)
                continue
            logits = xf @ m.tensor("moe_router", L).t()  # [n, E]
            torch.testing.assert_close(logits, block.gate(xf)[0], atol=1e-5, rtol=1e-4)
            experts = [tuple(m.tensor(r, L, e) for r in EXPERT) for e in range(moe.n_experts)]
            n = xf.shape[0]
            for e, (gate, up, down) in enumerate(experts):
                # the experts module run with every token sent to expert e at weight 1
                only_e = block.experts(xf, torch.full((n, 1), e), torch.ones(n, 1))
                torch.testing.assert_close(_ffn(xf, gate, up, down), only_e, atol=1e-5, rtol=1e-4)
            route = moe_route(logits, moe.top_k, moe.renormalise)  # [n, E]
            assert (route > 0).sum(-1).eq(moe.top_k).all()
            want = sum(route[:, e, None] * _ffn(xf, *experts[e]) for e in range(moe.n_experts))
            if moe.d_shared is not None:
                shared = _ffn(xf, *(m.tensor(r, L) for r in SHARED[:3]))
                if moe.shared_gated:
                    shared = torch.sigmoid(xf @ m.tensor("shared_expert_gate", L).t()) * shared
                want = want + shared
            torch.testing.assert_close(want, y_hf, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_out_kernel_over_huref_roles_is_the_sparse_block_of_a_linear_activation_model(
    model_type: str, tmp_path: Path
) -> None:
    """With an identity activation transformers' experts are (x W_gate * x W_up) W_down, which is
    what huref.invariants.kernels.moe_out computes: the kernel fed huref's roles is the block."""
    model, path = _save(model_type, tmp_path / model_type, act="linear")
    m = load_model(path)
    moe = m.cfg.moe
    assert moe is not None and moe.sparse_layers
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for L in moe.sparse_layers:
            xf = torch.randn(16, m.cfg.d_model, generator=g)
            route = moe_route(xf @ m.tensor("moe_router", L).t(), moe.top_k, moe.renormalise)
            experts = [
                (m.tensor("expert_gate", L, e), m.tensor("expert_up", L, e), m.tensor("expert_down", L, e))
                for e in range(moe.n_experts)
            ]
            y = moe_out(xf, route, experts)  # type: ignore[arg-type]
            if moe.d_shared is not None:
                h = (xf @ m.tensor("shared_gate", L).t()) * (xf @ m.tensor("shared_up", L).t())
                s = h @ m.tensor("shared_down", L).t()
                if moe.shared_gated:
                    s = torch.sigmoid(xf @ m.tensor("shared_expert_gate", L).t()) * s
                y = y + s
            y_hf = model.model.layers[L].mlp(xf[None]).reshape(-1, m.cfg.d_model)
            torch.testing.assert_close(y, y_hf, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_layer_stream_yields_every_expert_of_sparse_layers_and_the_mlp_of_dense_ones(
    dtype: torch.dtype | None, tmp_path: Path
) -> None:
    _, path = _save("qwen2_moe", tmp_path / "m")
    m = load_model(path)
    roles = ["attn_q", "mlp_gate", "mlp_up", "mlp_down", "moe_router", *EXPERT, *SHARED]
    seen = []
    for L, weights in LayerStream(m, roles, dtype=dtype, prefetch=True):
        seen.append(L)
        if m.is_sparse(L):
            want = {"attn_q", "moe_router", *SHARED} | {weight_key(r, e) for r in EXPERT for e in range(4)}
        else:
            want = {"attn_q", "mlp_gate", "mlp_up", "mlp_down"}
        assert set(weights) == want
        for key, t in weights.items():
            role, _, e = key.partition(".")
            expert = int(e) if e else None
            assert m.binding(role, L, expert).name in m.ckpt.source.names()
            torch.testing.assert_close(t.to(torch.float32), m.tensor(role, L, expert))
    assert seen == [0, 1, 2, 3]
    assert weight_key("expert_up", 3) == "expert_up.3" and weight_key("attn_q") == "attn_q"


# ------------------------------------------------------------------ the stacked (fused) expert layout
def _stack_experts(path: Path, n_experts: int) -> None:
    """Rewrite each sparse layer's per-expert tensors as gate_up_proj [E, 2F, d] and down_proj
    [E, d, F], as transformers holds them in memory and some tools write them."""
    sd = load_file(str(path / "model.safetensors"))
    layers = sorted({k.split(".layers.")[1].split(".")[0] for k in sd if ".experts.0." in k})
    for L in layers:
        p = f"model.layers.{L}.mlp.experts."
        gu = [
            torch.cat([sd.pop(f"{p}{e}.gate_proj.weight"), sd.pop(f"{p}{e}.up_proj.weight")])
            for e in range(n_experts)
        ]
        sd[p + "gate_up_proj"] = torch.stack(gu)
        sd[p + "down_proj"] = torch.stack([sd.pop(f"{p}{e}.down_proj.weight") for e in range(n_experts)])
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("model_type", ["qwen2_moe", "olmoe"])
def test_stacked_expert_tensors_bind_to_the_same_expert_roles(model_type: str, tmp_path: Path) -> None:
    _, path = _save(model_type, tmp_path / "per_expert")
    per = load_model(path)
    want = {
        (r, L, e): per.tensor(r, L, e)
        for L in per.cfg.moe.sparse_layers  # type: ignore[union-attr]
        for e in range(4)
        for r in EXPERT
    }
    _stack_experts(path, 4)
    m = load_model(path)
    L = m.cfg.moe.sparse_layers[0]  # type: ignore[union-attr]
    assert m.binding("expert_up", L, 2).name == f"model.layers.{L}.mlp.experts.gate_up_proj"
    for (r, L, e), t in want.items():
        assert m.binding(r, L, e).expert == e
        torch.testing.assert_close(m.tensor(r, L, e), t)
    assert missing_roles(m.cfg, m.has) == []
    validate_checkpoint(path)
    for layer, weights in LayerStream(m, list(EXPERT), layers=[L]):
        assert layer == L and len(weights) == 12
        torch.testing.assert_close(weights[weight_key("expert_up", 3)], want[("expert_up", L, 3)])
    # a stray per-expert tensor beside the stack is claimed by nothing
    sd = load_file(str(path / "model.safetensors"))
    sd[f"model.layers.{L}.mlp.experts.0.up_proj.weight"] = torch.zeros(m.cfg.moe.d_expert, 32)  # type: ignore[union-attr]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ArchitectureError, match=rf"not claimed.*layers\.{L}\.mlp\.experts\.0\.up_proj"):
        load_model(path)


# ------------------------------------------------------------------ refusals, one line each
def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    sd = load_file(str(path / "model.safetensors"))
    fn(sd)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


X = "model.layers.1.block_sparse_moe.experts."


def _drop(sd: dict) -> None:
    del sd[X + "3.w2.weight"]


def _stray(sd: dict) -> None:
    for w in ("w1", "w2", "w3"):
        sd[X + f"4.{w}.weight"] = sd[X + f"3.{w}.weight"].clone()


def _misspell(sd: dict) -> None:
    sd[X + "1.w4.weight"] = sd.pop(X + "1.w3.weight")


def _narrow(sd: dict) -> None:
    sd[X + "2.w1.weight"] = sd[X + "2.w1.weight"][:40].clone()


REFUSALS = {
    "missing": (_drop, "missing tensors model.layers.1.block_sparse_moe.experts.3.w2.weight"),
    "stray": (_stray, "not claimed by the llama definition: model.layers.1.block_sparse_moe.experts.4."),
    "misspelt": (_misspell, "missing tensors model.layers.1.block_sparse_moe.experts.1.w3.weight"),
    "misshapen": (_narrow, "experts.2.w1.weight has shape [40, 32], but config.json implies [48, 32]"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_expert_tensor_is_refused_in_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = _save("mixtral", tmp_path / "m")
    load_model(path)  # intact, it binds
    edit, message = REFUSALS[case]
    _edit(path, edit)
    with pytest.raises(ArchitectureError, match="experts"):
        load_model(path)
    capsys.readouterr()
    assert main(["arch", "validate", str(path)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_experts_per_tok": 5}, "5 experts per token, but the model has 4"),
        ({"mlp_only_layers": [0, "1"]}, "'mlp_only_layers' must be a list of layer indices"),
        ({"decoder_sparse_step": 0}, "'decoder_sparse_step' must be a whole number"),
        ({"norm_topk_prob": "true"}, "'norm_topk_prob' must be true or false"),
    ],
)
def test_a_bad_moe_config_value_is_refused_naming_its_key(change: dict, message: str, tmp_path: Path) -> None:
    config = {**MOE_FAMILIES["qwen2_moe"]("silu").to_dict(), **change}
    with pytest.raises(ArchitectureError, match=message):
        spec_for(config).read_config(config)


def test_a_qwen_moe_config_with_no_experts_is_dense() -> None:
    config = {**MOE_FAMILIES["qwen3_moe"]("silu").to_dict(), "num_local_experts": 0, "num_experts": 0}
    cfg = spec_for(config).read_config(config)
    assert cfg.moe is None and not cfg.is_sparse(1)


def test_expert_rules_are_checked_when_made() -> None:
    with pytest.raises(ArchitectureError, match="expert roles need"):
        Rule("layers.{L}.mlp.experts.0.up_proj.weight", ("expert_up",))  # no {E}
    with pytest.raises(ArchitectureError, match="expert roles need"):
        Rule("layers.{L}.mlp.experts.{E}.up_proj.weight", ("mlp_up",))
    with pytest.raises(ArchitectureError, match="only a per-layer rule"):
        Rule("norm.weight", ("final_norm",), "vector", layers="sparse")
    assert Role.expert_up.per_expert and Role.expert_up.per_layer and not Role.moe_router.per_expert


# ------------------------------------------------------------------ the command line
def test_arch_ls_and_inspect_show_the_moe_model_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["arch", "ls", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(MOE_TYPES) <= set(rows["llama"]["model_types"])
    assert {"moe_router", *EXPERT, *SHARED} <= set(rows["llama"]["roles"])
    assert set(rows) == set(ARCHITECTURES.names())
    _, path = _save("qwen2_moe", tmp_path / "m")
    assert main(["inspect", str(path), "--json", "--no-hash"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "qwen2_moe" and info["tensors"] == len(load_model(path).ckpt.source.names())
    assert "mlp_up" in info["roles"]["layer_0"]  # layer 0 is dense in this config
    assert main(["inspect", str(path), "--no-hash"]) == 0
    capsys.readouterr()
    assert main(["arch", "validate", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["moe"] == {
        "n_experts": 4,
        "top_k": 2,
        "d_expert": 24,
        "renormalise": False,
        "d_shared": 40,
        "shared_gated": True,
        "sparse_layers": [1],
        # plain softmax top-k: DeepSeek's routing fields at their defaults
        "scoring": "softmax",
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "routed_scale": 1.0,
        "router_bias": False,
    }


def test_a_stacked_release_fingerprints_exactly_as_its_per_expert_twin(tmp_path: Path) -> None:
    """Fingerprinting reads one expert at a time (rows of a stack): both layouts give the same
    terms, responses and expert groups."""
    from huref.invariants import Settings, fingerprint_model

    _, path = _save("qwen2_moe", tmp_path / "m")
    settings = Settings(modes=("robust", "paper"), n=64, paper_n=64, n_responses=32)
    per = fingerprint_model(path, settings)
    _stack_experts(path, 4)
    stacked = fingerprint_model(path, settings)
    for mode in ("robust", "paper"):
        assert torch.equal(getattr(per, mode).terms, getattr(stacked, mode).terms), mode
    assert per.responses is not None and stacked.responses is not None
    assert per.responses.groups == stacked.responses.groups and per.responses.groups
    for a, b in zip(per.responses.a, stacked.responses.a, strict=True):
        assert torch.equal(a, b)
