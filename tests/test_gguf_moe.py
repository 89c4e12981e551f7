"""Sparse Mixture-of-Experts models read from GGUF files under llama.cpp's names.

Each tiny Mixtral, Qwen2-MoE and Qwen3-MoE is built with transformers, saved, and written as
llama.cpp's converter writes it (this module's own writer, from llama.cpp's conventions):
``blk.N.ffn_gate_inp`` for the router, a layer's experts stacked in ``ffn_gate_exps`` /
``ffn_up_exps`` ([E, F, d] in numpy order) and ``ffn_down_exps`` ([E, d, F]), Qwen2-MoE's shared
expert in ``ffn_*_shexp`` with its gate ``ffn_gate_inp_shexp`` ([d]), the ``{arch}.expert_*``
metadata, Mixtral as arch ``llama`` with its q/k rows permuted for llama.cpp's rotary layout.
huref must bind the same roles with the same values and the same MoE config as from the
safetensors folder, give the same fingerprint, and refuse a file whose stacks disagree with its
metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import transformers as T
from archkit import MOE_FAMILIES, randomise_
from formatkit import gguf_name
from safetensors.torch import load_file

from huref.arch.model import Model, load_model
from huref.checkpoint.llama2c import half_split_to_interleaved
from huref.errors import CheckpointError, HurefError
from huref.invariants import Settings, compare_fingerprints, fingerprint_model

ROBUST = Settings(modes=("robust",))
ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
# Hugging Face name inside a layer -> llama.cpp's, for the sparse blocks' one-off tensors
MOE_LAYER = {
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
# an expert's projection -> the stack llama.cpp gathers every expert of the layer into
EXPERT_STACK = {
    "w1": "ffn_gate_exps",
    "w3": "ffn_up_exps",
    "w2": "ffn_down_exps",
    "gate_proj": "ffn_gate_exps",
    "up_proj": "ffn_up_exps",
    "down_proj": "ffn_down_exps",
}


def _llama_cpp_tensors(sd: dict[str, torch.Tensor], cfg: Any, arch: str) -> dict[str, np.ndarray]:
    """llama.cpp's tensors of a Hugging Face MoE state dict: experts stacked, q/k rows permuted
    for the llama arch, the shared expert's [1, d] gate stored as [d]."""
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for name, t in sd.items():
        t = t.float()
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = half_split_to_interleaved(t, cfg.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            t = half_split_to_interleaved(t, cfg.num_key_value_heads)
        parts = name.split(".")
        if "experts" in parts:  # model.layers.L.<block>.experts.E.<proj>.weight
            layer, expert, proj = parts[2], int(parts[parts.index("experts") + 1]), parts[-2]
            stacks.setdefault(f"blk.{layer}.{EXPERT_STACK[proj]}.weight", {})[expert] = t.numpy()
        elif len(parts) > 3 and ".".join(parts[3:]) in MOE_LAYER:
            a = t.numpy()
            out[f"blk.{parts[2]}.{MOE_LAYER['.'.join(parts[3:])]}"] = a.reshape(-1) if a.shape[0] == 1 else a
        else:
            out[gguf_name(name)] = t.numpy()
    for name, experts in stacks.items():
        out[name] = np.stack([experts[e] for e in sorted(experts)])  # [E, out, in]
    return out


def write_moe_gguf(
    path: Path, sd: dict[str, torch.Tensor], cfg: Any, qtype: str = "F32", expert_count: int | None = None
) -> Path:
    arch = ARCH[cfg.model_type]
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    n_experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    w.add_expert_count(expert_count or n_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch != "llama":
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if arch == "qwen3moe":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_expert_weights_norm(cfg.norm_topk_prob)
    for name, a in _llama_cpp_tensors(sd, cfg, arch).items():
        q = gguf.GGMLQuantizationType[qtype]
        if a.ndim == 1 or a.shape[-1] % 32 or q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a.astype(np.float32))  # Q8_0 blocks are 32 values of a row
        else:
            w.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("gguf-moe")
    made = {}
    for i, mt in enumerate(ARCH):
        torch.manual_seed(i)
        model = T.AutoModelForCausalLM.from_config(MOE_FAMILIES[mt]("silu")).eval()
        randomise_(model, i)
        model.save_pretrained(root / mt)
        made[mt] = (root / mt, model.config)
    return made


def _roles(m: Model, layer: int | None) -> list[str]:
    return m.roles(layer)


@pytest.mark.parametrize("mt", list(ARCH))
def test_gguf_moe_binds_the_roles_router_and_experts_of_the_hf_model(
    moe_models, tmp_path: Path, mt: str
) -> None:
    folder, cfg = moe_models[mt]
    sd = load_file(str(folder / "model.safetensors"))
    path = write_moe_gguf(tmp_path / f"{mt}.gguf", sd, cfg)
    g, hf = load_model(path), load_model(folder)
    assert g.ckpt.format == "gguf" and g.cfg.model_type == hf.cfg.model_type == mt
    assert g.cfg.moe == hf.cfg.moe and g.cfg.moe is not None
    assert (g.cfg.head_dim, g.cfg.d_ff, g.cfg.n_kv_heads) == (hf.cfg.head_dim, hf.cfg.d_ff, hf.cfg.n_kv_heads)
    assert g.moe_summary() == hf.moe_summary()
    assert _roles(g, None) == _roles(hf, None)
    for layer in range(cfg.num_hidden_layers):
        assert g.is_sparse(layer) == hf.is_sparse(layer)
        assert _roles(g, layer) == _roles(hf, layer) and g.expert_roles(layer) == hf.expert_roles(layer)
        for role in _roles(hf, layer):
            assert torch.equal(g.tensor(role, layer), hf.tensor(role, layer)), (role, layer)
        for role in hf.expert_roles(layer):
            for e in range(hf.n_experts(layer)):
                assert torch.equal(g.tensor(role, layer, e), hf.tensor(role, layer, e)), (role, layer, e)
    sparse = [L for L in range(cfg.num_hidden_layers) if hf.is_sparse(L)]
    assert sparse and g.tensor("moe_router", sparse[0]).shape == (4, 32)
    fp = compare_fingerprints(fingerprint_model(path, ROBUST), fingerprint_model(folder, ROBUST))
    print(f"{mt}: GGUF vs safetensors robust ICS {fp.ics:.4f}")
    assert fp.ics is not None and fp.ics >= 99.99 and fp.verdict == "derived"


def test_quantized_gguf_expert_stacks_dequantize_per_expert(moe_models, tmp_path: Path) -> None:
    """Q8_0 stacks ([E, F, d] with d = 32: one block per row) are dequantized whole and sliced."""
    folder, cfg = moe_models["mixtral"]
    sd = load_file(str(folder / "model.safetensors"))
    path = write_moe_gguf(tmp_path / "mixtral-q8.gguf", sd, cfg, qtype="Q8_0")
    g, hf = load_model(path), load_model(folder)
    assert g.ckpt.source.info("model.layers.1.block_sparse_moe.experts.2.w1.weight").dtype == "Q8_0"
    for e in range(4):
        got, want = g.tensor("expert_gate", 1, e), hf.tensor("expert_gate", 1, e)
        # Q8_0: one float16 scale per 32 values of a row: half a step, plus the scale's rounding
        step = want.abs().amax(dim=1, keepdim=True) / 127
        assert not torch.equal(got, want) and bool(
            ((got - want).abs() <= step * (0.5 + 127 * 2.0**-11) + 1e-6).all()
        )
    c = compare_fingerprints(fingerprint_model(path, ROBUST), fingerprint_model(folder, ROBUST))
    print(f"mixtral Q8_0: GGUF vs safetensors robust ICS {c.ics:.4f}")
    assert c.ics is not None and c.ics >= 99.9


def test_gguf_expert_stacks_that_disagree_with_the_metadata_are_refused(moe_models, tmp_path: Path) -> None:
    folder, cfg = moe_models["qwen3_moe"]
    sd = load_file(str(folder / "model.safetensors"))
    for declared in (3, 5):  # stacks of 4 experts
        with pytest.raises(CheckpointError, match=f"not a stack of the {declared} experts"):
            load_model(write_moe_gguf(tmp_path / f"{declared}.gguf", sd, cfg, expert_count=declared))
    no_router = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.gate.weight"}
    # layer 1's experts without its router: the layer reads as dense, and lacks its MLP
    with pytest.raises(HurefError, match=r"missing tensors model\.layers\.1\.mlp\.down_proj"):
        load_model(write_moe_gguf(tmp_path / "no-router.gguf", no_router, cfg))
