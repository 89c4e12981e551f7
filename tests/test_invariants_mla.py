"""DeepSeek-V3 (latent attention, grouped sigmoid routing, shared experts, dense first layer):
fingerprints through function-preserving attacks, and an unrelated model stays unrelated.

The model is a tiny deepseek_v3 built with transformers and trained briefly on the tiny zoo's
corpus with its tokenizer. Attacks are written on transformers' in-memory state dict (experts
stacked: mlp.experts.gate_up_proj [E, 2F, d], mlp.experts.down_proj [E, d, F]) and checked
against its logits before huref sees them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from huref.invariants import Settings, compare_fingerprints, fingerprint_model
from huref.lm.train import train_lm

ROBUST = Settings(modes=("robust",))
KV_RANK, Q_RANK, E = 16, 32, 4


def _model(seed: int):  # type: ignore[no-untyped-def]
    cfg = AutoConfig.for_model(
        "deepseek_v3",
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1024,
        n_routed_experts=E,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=Q_RANK,
        kv_lora_rank=KV_RANK,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_group=2,
        topk_group=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def _save(model, dst: Path, tokenizer_from: Path) -> Path:  # type: ignore[no-untyped-def]
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def mla_models(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mla")
    stream = load_file(str(tiny_zoo / "_data" / "streams.safetensors"))["pretrain"]
    made = {}
    for name, seed in (("a", 1), ("b", 2)):
        model = _model(seed)
        train_lm(model, stream, 60, 3e-3, seed, batch=8, seq=64)
        made[name] = _save(model.eval(), root / name, tiny_zoo / "llama-a")
    return made


def _sparse(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".")[2] for k in sd if k.endswith("mlp.gate.weight")}, key=int)


def _all(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".")[2] for k in sd if ".layers." in k}, key=int)


def latent_permutation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Both latents' coordinates reordered (their RMSNorms commute with a permutation)."""
    out = dict(sd)
    for L in _all(sd):
        a = f"model.layers.{L}.self_attn."
        p = torch.randperm(Q_RANK, generator=g)
        out[a + "q_a_proj.weight"] = sd[a + "q_a_proj.weight"][p]
        out[a + "q_a_layernorm.weight"] = sd[a + "q_a_layernorm.weight"][p]
        out[a + "q_b_proj.weight"] = sd[a + "q_b_proj.weight"][:, p]
        p = torch.randperm(KV_RANK, generator=g)
        kv_a = sd[a + "kv_a_proj_with_mqa.weight"]
        out[a + "kv_a_proj_with_mqa.weight"] = torch.cat([kv_a[:KV_RANK][p], kv_a[KV_RANK:]])
        out[a + "kv_a_layernorm.weight"] = sd[a + "kv_a_layernorm.weight"][p]
        out[a + "kv_b_proj.weight"] = sd[a + "kv_b_proj.weight"][:, p]
    return out


def expert_permutation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Experts renumbered with the router's rows and selection bias, within their routing groups
    (two groups of two: group-limited routing picks groups, so only in-group moves keep it)."""
    out = dict(sd)
    perm = torch.tensor([1, 0, 3, 2])
    for L in _sparse(sd):
        m = f"model.layers.{L}.mlp."
        for n in ("gate.weight", "gate.e_score_correction_bias", "experts.gate_up_proj", "experts.down_proj"):
            out[m + n] = sd[m + n][perm]
    return out


def residual_rotation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Gains folded into their readers, then the residual stream rotated by an orthogonal Q."""
    out = dict(sd)
    d = sd["model.embed_tokens.weight"].shape[1]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q.to(torch.float32)
    read_attn = ("self_attn.q_a_proj.weight", "self_attn.kv_a_proj_with_mqa.weight")
    for L in _all(sd):
        p = f"model.layers.{L}."
        gain = sd[p + "input_layernorm.weight"]
        for n in read_attn:
            out[p + n] = sd[p + n] * gain @ q
        out[p + "input_layernorm.weight"] = torch.ones_like(gain)
        out[p + "self_attn.o_proj.weight"] = q.t() @ sd[p + "self_attn.o_proj.weight"]
        gain = sd[p + "post_attention_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = torch.ones_like(gain)
        if p + "mlp.gate.weight" in sd:
            reads = [
                "mlp.gate.weight",
                "mlp.shared_experts.gate_proj.weight",
                "mlp.shared_experts.up_proj.weight",
            ]
            out[p + "mlp.experts.gate_up_proj"] = sd[p + "mlp.experts.gate_up_proj"] * gain @ q
            out[p + "mlp.experts.down_proj"] = q.t() @ sd[p + "mlp.experts.down_proj"]
            out[p + "mlp.shared_experts.down_proj.weight"] = (
                q.t() @ sd[p + "mlp.shared_experts.down_proj.weight"]
            )
        else:
            reads = ["mlp.gate_proj.weight", "mlp.up_proj.weight"]
            out[p + "mlp.down_proj.weight"] = q.t() @ sd[p + "mlp.down_proj.weight"]
        for n in reads:
            out[p + n] = sd[p + n] * gain @ q
    out["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] @ q
    out["lm_head.weight"] = sd["lm_head.weight"] * sd["model.norm.weight"] @ q
    out["model.norm.weight"] = torch.ones_like(sd["model.norm.weight"])
    return out


ATTACKS = {
    "latent-permutation": latent_permutation,
    "expert-permutation": expert_permutation,
    "residual-rotation": residual_rotation,
}


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_mla_attacks_keep_the_function_and_the_invariants(
    mla_models: dict[str, Path], tmp_path: Path, attack: str
) -> None:
    src = mla_models["a"]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.load_state_dict(ATTACKS[attack](model.state_dict(), torch.Generator().manual_seed(5)))
    dst = _save(model, tmp_path / attack, src)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(dst, ids), _logits(src, ids), atol=2e-4, rtol=1e-4)
    c = compare_fingerprints(fingerprint_model(dst, ROBUST), fingerprint_model(src, ROBUST))
    print(f"{attack}: robust ICS {c.ics:.4f}, verdict {c.verdict}")
    assert c.ics is not None and c.ics >= 99.9, (attack, c.ics)
    assert c.verdict == "derived"


def test_independently_trained_deepseek_models_are_independent(mla_models: dict[str, Path]) -> None:
    a, b = (fingerprint_model(mla_models[n], Settings()) for n in ("a", "b"))
    assert a.paper is not None and a.robust is not None  # both modes run on latent attention
    c = compare_fingerprints(a, b)
    print(f"deepseek a vs b: robust ICS {c.ics:.3f}, log10 p {c.log10_p_value}")
    assert c.verdict == "independent"
    assert compare_fingerprints(a, a).verdict == "derived"
