"""Sparse Mixture-of-Experts models: invariants through function-preserving attacks, upcycling.

The tiny zoo's MoE section holds a Mixtral-style MoE *upcycled* from the dense llama-a (its
attention, norms, embeddings and head copied; every expert a copy of llama-a's FFN, as
Qwen1.5-MoE and many others were made; a fresh router) and trained like the zoo's SFT, so its
experts diverge, and an MoE trained from its own random initialisation (moe-a), the unrelated
control. Attacks an adversary can apply without changing the function are written here a second
time, on transformers' in-memory state dict (the zoo's are role edits), checked against
transformers' logits, and must leave the robust invariants in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import load_file
from transformers import MixtralForCausalLM

from huref.cli import main
from huref.invariants import (
    Settings,
    compare_fingerprints,
    fingerprint_model,
    load_fingerprint,
    save_fingerprint,
)

N_EXPERTS, TOP_K = 4, 2
ROBUST = Settings(modes=("robust",))


def _save(model: MixtralForCausalLM, dst: Path, tokenizer_from: Path) -> Path:
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, dst / name)
    return dst


# In memory, transformers' Mixtral keeps each layer's experts stacked: mlp.gate.weight [E, d] (the
# router), mlp.experts.gate_up_proj [E, 2F, d] (gate rows, then up rows) and mlp.experts.down_proj
# [E, d, F]; save_pretrained writes them per expert (block_sparse_moe.experts.e.w1/w3/w2). The
# attacks below are written on that in-memory layout, apart from the zoo's role-based ones.


@pytest.fixture(scope="module")
def moe_zoo(tiny_zoo: Path) -> dict[str, Path]:
    """The zoo's MoE section: llama-a upcycled and trained, and an MoE trained from scratch."""
    return {"upcycled": tiny_zoo / "llama-a-upcycled", "scratch": tiny_zoo / "moe-a"}


# ---------------------------------------------------------------- function-preserving attacks


def _layers(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".layers.")[1].split(".")[0] for k in sd if ".layers." in k}, key=int)


def _moe(L: str) -> str:
    return f"model.layers.{L}.mlp."


def expert_permutation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Experts renumbered together with the router's rows."""
    out = dict(sd)
    for L in _layers(sd):
        p, perm = _moe(L), torch.randperm(N_EXPERTS, generator=g)
        for name in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"):
            out[p + name] = sd[p + name][perm]
    return out


def expert_neuron_permutation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Each expert's hidden neurons reordered (its gate and up rows together, down columns)."""
    out = dict(sd)
    for L in _layers(sd):
        p = _moe(L)
        gate_up, down = sd[p + "experts.gate_up_proj"].clone(), sd[p + "experts.down_proj"].clone()
        f = down.shape[2]
        for e in range(N_EXPERTS):
            perm = torch.randperm(f, generator=g)
            gate_up[e] = torch.cat([gate_up[e, :f][perm], gate_up[e, f:][perm]])
            down[e] = down[e][:, perm]
        out[p + "experts.gate_up_proj"], out[p + "experts.down_proj"] = gate_up, down
    return out


def _fold_gains(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every RMSNorm gain moved into the weights that read its output (router and experts too)."""
    out = dict(sd)
    for L in _layers(sd):
        pre = f"model.layers.{L}."
        g = sd[pre + "input_layernorm.weight"]
        for r in ("q_proj", "k_proj", "v_proj"):
            out[pre + f"self_attn.{r}.weight"] = sd[pre + f"self_attn.{r}.weight"] * g
        out[pre + "input_layernorm.weight"] = torch.ones_like(g)
        g = sd[pre + "post_attention_layernorm.weight"]
        out[pre + "mlp.gate.weight"] = sd[pre + "mlp.gate.weight"] * g
        out[pre + "mlp.experts.gate_up_proj"] = sd[pre + "mlp.experts.gate_up_proj"] * g
        out[pre + "post_attention_layernorm.weight"] = torch.ones_like(g)
    g = sd["model.norm.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"] * g
    out["model.norm.weight"] = torch.ones_like(g)
    return out


def norm_gain_folding(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Gains folded into the router and the experts, then new random gains divided back out."""
    out = _fold_gains(sd)
    for L in _layers(sd):
        pre = f"model.layers.{L}."
        s = torch.rand(out[pre + "post_attention_layernorm.weight"].shape, generator=g) + 0.5
        out[pre + "post_attention_layernorm.weight"] = s
        out[pre + "mlp.gate.weight"] = out[pre + "mlp.gate.weight"] / s
        out[pre + "mlp.experts.gate_up_proj"] = out[pre + "mlp.experts.gate_up_proj"] / s
    return out


def residual_rotation(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """The residual stream rotated by a random orthogonal Q (gains folded first: RMSNorm commutes
    with Q only without them). Read-in weights W -> W Q, write-out weights W -> Q^T W."""
    out = _fold_gains(sd)
    d = out["model.embed_tokens.weight"].shape[1]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q.to(torch.float32)
    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"] @ q
    out["lm_head.weight"] = out["lm_head.weight"] @ q
    for L in _layers(sd):
        pre = f"model.layers.{L}."
        for r in ("q_proj", "k_proj", "v_proj"):
            out[pre + f"self_attn.{r}.weight"] = out[pre + f"self_attn.{r}.weight"] @ q
        out[pre + "self_attn.o_proj.weight"] = q.t() @ out[pre + "self_attn.o_proj.weight"]
        out[pre + "mlp.gate.weight"] = out[pre + "mlp.gate.weight"] @ q
        out[pre + "mlp.experts.gate_up_proj"] = out[pre + "mlp.experts.gate_up_proj"] @ q
        out[pre + "mlp.experts.down_proj"] = q.t() @ out[pre + "mlp.experts.down_proj"]
    return out


ATTACKS = {
    "expert-permutation": expert_permutation,
    "expert-neuron-permutation": expert_neuron_permutation,
    "norm-gain-folding": norm_gain_folding,
    "residual-rotation": residual_rotation,
}


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = MixtralForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def base_print(moe_zoo: dict[str, Path]):  # type: ignore[no-untyped-def]
    return fingerprint_model(moe_zoo["upcycled"], ROBUST)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_moe_attacks_keep_the_function_and_the_invariants(
    moe_zoo: dict[str, Path], base_print, tmp_path: Path, attack: str
) -> None:
    src = moe_zoo["upcycled"]
    model = MixtralForCausalLM.from_pretrained(src, dtype=torch.float32)
    attacked = ATTACKS[attack](model.state_dict(), torch.Generator().manual_seed(3))
    model.load_state_dict(attacked)
    dst = _save(model, tmp_path / attack, src)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(dst, ids), _logits(src, ids), atol=2e-4, rtol=1e-4)  # same function
    c = compare_fingerprints(fingerprint_model(dst, ROBUST), base_print)
    print(f"{attack}: robust ICS {c.ics:.4f}, verdict {c.verdict}")
    assert c.ics >= 99.9, (attack, c.ics)
    assert c.verdict == "derived"


def test_renumbered_experts_are_paired_back_with_their_originals(
    moe_zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Two MoEs: each aligned layer's experts are matched by their neuron tests. The MoE trained
    from scratch has experts that differ (the upcycled one's are still near-copies of one FFN, so
    any pairing of them is as good)."""
    src = moe_zoo["scratch"]
    model = MixtralForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.load_state_dict(expert_permutation(model.state_dict(), torch.Generator().manual_seed(3)))
    dst = _save(model, tmp_path / "renumbered", src)
    c = compare_fingerprints(fingerprint_model(dst, ROBUST), fingerprint_model(src, ROBUST))
    g = torch.Generator().manual_seed(3)
    perms = [torch.randperm(N_EXPERTS, generator=g).tolist() for _ in range(len(c.layer_alignment))]
    assert len(c.expert_matches) == N_EXPERTS * len(perms)
    for r in c.expert_matches:  # attacked expert i is the original's expert perm[i]
        assert r["related"] and int(r["expert_b"]) == perms[r["layer_a"]][int(r["expert_a"])], r
    other = compare_fingerprints(
        fingerprint_model(moe_zoo["upcycled"], ROBUST), fingerprint_model(src, ROBUST)
    )
    assert other.expert_matches and not any(r["related"] for r in other.expert_matches)


def test_an_upcycled_moe_is_derived_from_its_dense_base_only(
    tiny_zoo: Path, moe_zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = fingerprint_model(tiny_zoo / "llama-a", Settings())
    other = fingerprint_model(tiny_zoo / "llama-b", Settings())
    up = fingerprint_model(moe_zoo["upcycled"], Settings())
    same = compare_fingerprints(up, dense)
    print(f"upcycled vs llama-a: robust ICS {same.ics:.3f}, log10 p {same.log10_p_value}")
    assert same.verdict == "derived"
    assert same.log10_p_value is not None and same.log10_p_value < -6
    # every expert of every layer came from llama-a's FFN, each by its own neuron test
    assert len(same.expert_origin) == N_EXPERTS * len(same.layer_alignment)
    assert all(r["from_dense"] for r in same.expert_origin), same.expert_origin
    print("expert log10 p:", [round(r["log10_p"], 1) for r in same.expert_origin])
    assert compare_fingerprints(up, other).verdict == "independent"
    scratch = fingerprint_model(moe_zoo["scratch"], Settings())
    fresh = compare_fingerprints(scratch, dense)
    assert fresh.verdict == "independent"
    assert fresh.expert_origin and not any(r["from_dense"] for r in fresh.expert_origin)
    assert compare_fingerprints(scratch, up).verdict == "independent"
    assert not compare_fingerprints(scratch, up).expert_origin  # MoE against MoE: no dense side
    # the expert groups survive a fingerprint file, and compare names the experts
    files = [save_fingerprint(fp, tmp_path / f"{n}.safetensors") for n, fp in (("up", up), ("dense", dense))]
    assert load_fingerprint(files[0]).responses.groups == up.responses.groups  # type: ignore[union-attr]
    assert main(["compare", str(files[0]), str(files[1])]) == 0
    out = capsys.readouterr().out
    assert "experts from the dense FFN (p < 1e-6): layer 0: 0, 1, 2, 3 of 4; layer 1: 0, 1, 2, 3 of 4" in out


def test_the_audit_report_names_the_experts_that_came_from_the_dense_base(
    tiny_zoo: Path, moe_zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    argv = ["audit", str(moe_zoo["upcycled"]), "--base", str(tiny_zoo / "llama-a"), "--no-dogs", "--no-pcs"]
    assert main([*argv, "-o", str(out)]) == 0
    html = out.read_text()
    assert "Experts that came from the dense FFN" in html
    assert "layer 0: 0, 1, 2, 3 of 4" in html
    from huref.report import load_schema

    evidence = json.loads(out.with_suffix(".json").read_text())
    jsonschema.validate(evidence, load_schema())
    rows = evidence["passive"][0]["expert_origin"]
    assert rows and all(r["from_dense"] for r in rows)


def test_a_nan_in_one_expert_is_found_and_refused(
    moe_zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from huref.errors import ArchitectureError

    bad = tmp_path / "bad"
    shutil.copytree(moe_zoo["upcycled"], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    tensors[name][5, 7] = float("nan")
    save_file(tensors, str(bad / "model.safetensors"))
    assert main(["inspect", str(bad), "--no-hash", "--check-values"]) == 2
    assert name in capsys.readouterr().err
    with pytest.raises(ArchitectureError, match=r"experts\.3\.w2\.weight"):
        fingerprint_model(bad, ROBUST)
