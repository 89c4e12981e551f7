"""GPT-OSS read as data: its biased router, its in-features-first gate/up-interleaved expert
stacks with their biases, and its attention sinks, checked against transformers' own modules.

A tiny random GPT-OSS (tests/archkit.py) is saved with save_pretrained; huref must bind it both
ways, route as GptOssTopKRouter does (the router's Linear bias in the logits), give each expert's
gate, up and down in canonical [out, in] orientation, and with them and the model's own clamped
SwiGLU reproduce the whole MoE block. An expert permutation keeps the function and the robust
invariants.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from archkit import gpt_oss_config, randomise_
from safetensors.torch import load_file, save_file

from huref.arch import Model
from huref.arch.config import MoEConfig
from huref.arch.validate import missing_roles
from huref.checkpoint import open_checkpoint
from huref.cli import main
from huref.errors import ArchitectureError
from huref.invariants import Settings, compare_fingerprints, fingerprint_model
from huref.invariants.layer_terms import LayerWeights, routing

SETTINGS = Settings(modes=("robust",), n=64, n_responses=32)
E, TOP_K, F, D = 4, 2, 24, 32


def _build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(gpt_oss_config()).eval()
    randomise_(model, seed)  # router and expert biases away from zero: every path shows
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = _build(0)
    path = tmp_path_factory.mktemp("gpt_oss")
    model.save_pretrained(path)
    return model, path


def _rows(n: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _rewrite(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    sd = load_file(str(src / "model.safetensors"))
    change(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# ------------------------------------------------------------------ binding, both ways
def test_gpt_oss_binds_every_stored_tensor_to_a_role_and_provides_every_required_one(saved) -> None:  # type: ignore[no-untyped-def]
    _, path = saved
    m = Model(open_checkpoint(path))
    names = set(m.ckpt.source.names())
    bound = {b.name for b in m._bind.values()} | {b.name for b in m._experts.values()}
    assert names == bound
    assert missing_roles(m.cfg, m.has) == []
    assert m.cfg.moe == MoEConfig(
        n_experts=E, top_k=TOP_K, d_expert=F, renormalise=True, sparse_layers=(0, 1), router_logit_bias=True
    )
    assert m.summary()["moe"]["router_logit_bias"] is True  # type: ignore[index]
    for L in range(2):
        assert m.expert_roles(L) == [
            *("expert_down", "expert_down_bias", "expert_gate", "expert_gate_bias"),
            *("expert_up", "expert_up_bias"),
        ]
        assert {"attn_sinks", "moe_router", "moe_router_bias", "attn_q_bias", "attn_o_bias"} <= set(
            m.roles(L)
        )


def test_gpt_oss_sinks_and_router_bias_are_the_modules_tensors(saved) -> None:  # type: ignore[no-untyped-def]
    model, path = saved
    m = Model(open_checkpoint(path))
    for L, layer in enumerate(model.model.layers):
        torch.testing.assert_close(m.tensor("attn_sinks", L), layer.self_attn.sinks.detach())
        torch.testing.assert_close(m.tensor("moe_router_bias", L), layer.mlp.router.bias.detach())


@pytest.mark.parametrize("name", ["mlp.router.bias", "mlp.experts.gate_up_proj_bias", "self_attn.sinks"])
def test_gpt_oss_missing_tensor_is_named(saved, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    _, path = saved
    bad = _rewrite(path, tmp_path / "bad", lambda sd: sd.pop(f"model.layers.1.{name}"))
    with pytest.raises(ArchitectureError, match=f"missing tensors model.layers.1.{name}"):
        Model(open_checkpoint(bad))


def test_gpt_oss_stray_tensor_is_named(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path = saved
    stray = "model.layers.0.mlp.experts.up_proj_bias"

    def add(sd: dict[str, torch.Tensor]) -> None:
        sd[stray] = torch.zeros(E, F)

    bad = _rewrite(path, tmp_path / "bad", add)
    with pytest.raises(ArchitectureError, match=f"not claimed by the llama definition: {stray}"):
        Model(open_checkpoint(bad))


def test_gpt_oss_out_features_first_stack_is_refused_by_shape(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The stacks are [E, in, out]: one written [E, out, in] must not bind (and be misread)."""
    _, path = saved
    key = "model.layers.0.mlp.experts.gate_up_proj"

    def flip(sd: dict[str, torch.Tensor]) -> None:
        sd[key] = sd[key].transpose(1, 2).contiguous()

    bad = _rewrite(path, tmp_path / "bad", flip)
    with pytest.raises(
        ArchitectureError, match=r"has shape \[4, 48, 32\], but config.json implies \[4, 32, 48\]"
    ):
        Model(open_checkpoint(bad))


def test_a_router_bias_cannot_be_both_a_selection_and_a_logit_bias() -> None:
    with pytest.raises(ArchitectureError, match="not both"):
        MoEConfig(
            n_experts=4, top_k=2, d_expert=8, renormalise=True, router_bias=True, router_logit_bias=True
        )


# ------------------------------------------------------------------ routing and experts vs the modules
def test_gpt_oss_routing_equals_the_router_module_bias_included(saved) -> None:  # type: ignore[no-untyped-def]
    model, path = saved
    m = Model(open_checkpoint(path))
    x = _rows()
    for L, layer in enumerate(model.model.layers):
        w_r, b_r = m.tensor("moe_router", L), m.tensor("moe_router_bias", L)
        with torch.no_grad():
            logits, scores, idx = layer.mlp.router(x)
        torch.testing.assert_close(x @ w_r.t() + b_r, logits)
        route = routing(m, LayerWeights(m, L, {"moe_router": w_r, "moe_router_bias": b_r}, x.device), x)
        want = torch.zeros(x.shape[0], E).scatter_(-1, idx, scores)
        torch.testing.assert_close(route, want)
        # the bias is a real part of the routing here: without it some tokens go elsewhere
        unbiased = routing(
            m, LayerWeights(m, L, {"moe_router": w_r, "moe_router_bias": 0 * b_r}, x.device), x
        )
        assert not torch.equal((unbiased > 0), (route > 0))


def _expert(m: Model, L: int, e: int) -> dict[str, torch.Tensor]:
    roles = (
        "expert_gate",
        "expert_up",
        "expert_down",
        "expert_gate_bias",
        "expert_up_bias",
        "expert_down_bias",
    )
    return {r: m.expert_tensor(r, L, e) for r in roles}


def _clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """GPT-OSS's activation, written from its config: (clamp(up) + 1) * g * sigmoid(alpha g),
    g = gate clamped above at ``limit``."""
    g = gate.clamp(max=limit)
    return (up.clamp(-limit, limit) + 1) * g * torch.sigmoid(alpha * g)


def test_gpt_oss_experts_are_the_modules_linear_maps_in_canonical_orientation(saved) -> None:  # type: ignore[no-untyped-def]
    """Through GptOssExperts.forward (public) with every token sent to expert e at weight 1: the
    output is the clamped SwiGLU of huref's gate and up responses (with their biases) through
    huref's down and its bias. The activation is asymmetric in gate and up, so swapped or
    wrongly de-interleaved roles fail."""
    model, path = saved
    m = Model(open_checkpoint(path))
    x = _rows(16)
    cfg = model.config
    for L, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        for e in range(E):
            w = _expert(m, L, e)
            assert w["expert_gate"].shape == (F, D) and w["expert_down"].shape == (D, F)
            g = x @ w["expert_gate"].t() + w["expert_gate_bias"]
            u = x @ w["expert_up"].t() + w["expert_up_bias"]
            want = _clamped_swiglu(g, u, cfg.swiglu_alpha, cfg.swiglu_limit) @ w["expert_down"].t()
            n = x.shape[0]
            with torch.no_grad():  # a token at a time: an implementation may reorder grouped tokens
                out = torch.cat(
                    [experts(x[i : i + 1], torch.full((1, 1), e), torch.ones(1, 1)) for i in range(n)]
                )
            torch.testing.assert_close(out, want + w["expert_down_bias"], atol=1e-5, rtol=1e-4)


def test_gpt_oss_block_from_huref_weights_and_routing_equals_the_moe_module(saved) -> None:  # type: ignore[no-untyped-def]
    model, path = saved
    m = Model(open_checkpoint(path))
    x = _rows(64, seed=5)
    cfg = model.config
    for L, layer in enumerate(model.model.layers):
        w_r, b_r = m.tensor("moe_router", L), m.tensor("moe_router_bias", L)
        route = routing(m, LayerWeights(m, L, {"moe_router": w_r, "moe_router_bias": b_r}, x.device), x)
        y = torch.zeros_like(x)
        for e in range(E):
            w = _expert(m, L, e)
            h = _clamped_swiglu(
                x @ w["expert_gate"].t() + w["expert_gate_bias"],
                x @ w["expert_up"].t() + w["expert_up_bias"],
                cfg.swiglu_alpha,
                cfg.swiglu_limit,
            )
            y += route[:, e : e + 1] * (h @ w["expert_down"].t() + w["expert_down_bias"])
        with torch.no_grad():
            want, _ = layer.mlp(x[None])
        torch.testing.assert_close(y, want[0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ fingerprints
def _permute_experts(sd: dict[str, torch.Tensor], perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Experts reordered with the router's rows and biases: the same function."""
    out = dict(sd)
    for name, t in sd.items():
        if ".mlp.router." in name or ".mlp.experts." in name:
            out[name] = t[perm].clone()
    return out


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gpt_oss_fingerprint_survives_an_expert_permutation(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, path = saved
    base = fingerprint_model(path, SETTINGS)
    assert base.responses is not None and base.responses.groups[0] == [(str(e), F) for e in range(E)]
    perm = torch.tensor([2, 0, 3, 1])
    permuted = T.AutoModelForCausalLM.from_config(model.config).eval()
    permuted.load_state_dict(_permute_experts(model.state_dict(), perm))
    dst = tmp_path / "permuted"
    permuted.save_pretrained(dst)
    assert not torch.equal(
        load_file(str(dst / "model.safetensors"))["model.layers.0.mlp.router.bias"],
        load_file(str(path / "model.safetensors"))["model.layers.0.mlp.router.bias"],
    )
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(dst, ids), _logits(path, ids), atol=2e-4, rtol=1e-4)
    c = compare_fingerprints(fingerprint_model(dst, SETTINGS), base)
    assert c.ics >= 99.9, c.ics
    assert c.verdict == "derived"
    # control: an unrelated GPT-OSS of the same shape is not derived
    other = tmp_path / "other"
    _build(7).save_pretrained(other)
    u = compare_fingerprints(fingerprint_model(other, SETTINGS), base)
    assert u.verdict != "derived" and u.ics < 90, (u.ics, u.verdict)


def test_gpt_oss_config_json_round_trip_reads_the_same(saved) -> None:  # type: ignore[no-untyped-def]
    """The saved config.json (not the in-memory config) gives the MoE values: defaults unused."""
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_local_experts"], cfg["num_experts_per_tok"]) == ("gpt_oss", E, TOP_K)
    assert Model(open_checkpoint(path)).cfg.moe.n_experts == E  # type: ignore[union-attr]


def test_arch_validate_reports_the_router_logit_bias(saved, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    _, path = saved
    assert main(["arch", "validate", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["moe"]["router_logit_bias"] is True and doc["config"]["moe"]["router_bias"] is False
    assert doc["extra"]["attn_sinks"] is True and doc["extra"]["moe_names"] == "gpt_oss"
