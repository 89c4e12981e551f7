"""Every architecture family: read through huref, checked both ways, and shown to reproduce the
projections that the real transformers forward pass computes (activations captured with hooks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from archkit import FAMILIES, Family, randomise_
from transformers import AttentionInterface
from transformers.activations import ACT2FN
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from huref.arch import load_model

_CAPTURED: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


def _capture_attention(module, q, k, v, mask, **kw):
    if kw.get("scaling") == 1.0 and getattr(module, "scaling", 1.0) != 1.0:
        q = q / module.scaling  # OPT multiplies the query by the scale before this call
    _CAPTURED.append((q.detach(), k.detach(), v.detach()))  # each [b, heads, s, hd]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is not None:  # the family's own reference implementation (softcapping etc.)
        return eager(module, q, k, v, mask, **kw)
    return sdpa_attention_forward(module, q, k, v, mask, **kw)


AttentionInterface.register("huref_capture", _capture_attention)

CASES = [(f, tie, sharded) for f in FAMILIES for tie in f.ties for sharded in (False, True)]


def _module_of(model: torch.nn.Module, tensor_name: str) -> torch.nn.Module:
    return model.get_submodule(tensor_name.rsplit(".", 1)[0])


def _alibi_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal ALiBi attention (Press et al.: head h adds slope_h * key position, slopes the
    geometric sequence 2^(-8/n), 2^(-16/n), ... for n heads) from [b, n, s, hd] q/k/v, with the
    heads merged back: [b, s, n * hd], what the output projection reads."""
    b, n, s, hd = q.shape
    assert n & (n - 1) == 0, "the slopes below are those for a power-of-two head count"
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / n) for h in range(n)])
    scores = q @ k.transpose(-1, -2) / hd**0.5 + slopes.view(1, n, 1, 1) * torch.arange(s).view(1, 1, 1, s)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).reshape(b, s, n * hd)


def _build(fam: Family, tie: bool, sharded: bool, out: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    config, cls = fam.make(tie)
    model = cls(config).eval()
    randomise_(model)
    if tie and hasattr(model, "tie_weights"):
        model.tie_weights()
    model.save_pretrained(out, max_shard_size="40KB" if sharded else "1GB")
    return model


@pytest.mark.parametrize(
    "fam,tie,sharded",
    CASES,
    ids=[f"{f.name}-{'tied' if t else 'untied'}-{'sharded' if s else 'single'}" for f, t, s in CASES],
)
def test_family_roles_reproduce_transformers_projections(
    fam: Family, tie: bool, sharded: bool, tmp_path: Path
) -> None:
    hf = _build(fam, tie, sharded, tmp_path)
    if sharded:
        assert (tmp_path / "model.safetensors.index.json").is_file(), (
            "the sharded case must really be sharded"
        )
    m = load_model(tmp_path)  # raises if the both-way check fails
    cfg = m.cfg
    assert cfg.n_layers == 2

    # hooks: inputs/outputs of the modules that own each role's weight
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for layer in range(cfg.n_layers):
        for role in ("attn_q", "attn_o", "mlp_up", "mlp_down", "attn_norm", "mlp_norm"):
            if not m.has(role, layer):
                continue
            mod = _module_of(hf, m.binding(role, layer).name)

            def hook(_mod, args, out, key=f"{role}.{layer}"):
                o = out if isinstance(out, torch.Tensor) else out[0]
                seen[key] = (args[0].detach().clone(), o.detach().clone())  # clone: some callers add in place

            hooks.append(mod.register_forward_hook(hook))
    if fam.capture == "interface":
        hf.set_attn_implementation("huref_capture")  # public API; the function registered above
    _CAPTURED.clear()
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf(ids)
    for h in hooks:
        h.remove()
    assert len(_CAPTURED) == (cfg.n_layers if fam.capture == "interface" else 0)

    act = ACT2FN[cfg.activation]
    for layer in range(cfg.n_layers):
        x = seen[f"attn_q.{layer}"][0]  # [b, s, d] the attention's input

        def heads(x: torch.Tensor, layer: int, w: str, b: str, n: int) -> torch.Tensor:
            y = x @ m.tensor(w, layer).t()
            if m.has(b, layer):
                y = y + m.tensor(b, layer)
            return y.reshape(*x.shape[:2], n, cfg.head_dim).transpose(1, 2)  # [b, n, s, hd]

        q = heads(x, layer, "attn_q", "attn_q_bias", cfg.n_heads)
        k = heads(x, layer, "attn_k", "attn_k_bias", cfg.n_kv_heads)
        v = heads(x, layer, "attn_v", "attn_v_bias", cfg.n_kv_heads)
        a_in, a_out = seen[f"attn_o.{layer}"]
        if fam.capture == "interface":
            q_hf, k_hf, v_hf = _CAPTURED[layer]
            if k_hf.shape[1] != k.shape[1]:  # implementations that broadcast kv heads to all heads
                k, v = (t.repeat_interleave(k_hf.shape[1] // t.shape[1], dim=1) for t in (k, v))
            # position 0 carries no rotary rotation, so q and k compare exactly there
            torch.testing.assert_close(q[:, :, 0], q_hf[:, :, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(k[:, :, 0], k_hf[:, :, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(v, v_hf, rtol=1e-4, atol=1e-5)
        else:  # every position's context depends on q, k and v together
            torch.testing.assert_close(_alibi_context(q, k, v), a_in, rtol=1e-4, atol=1e-5)

        o = a_in @ m.tensor("attn_o", layer).t()
        if m.has("attn_o_bias", layer):
            o = o + m.tensor("attn_o_bias", layer)
        torch.testing.assert_close(o, a_out, rtol=1e-4, atol=1e-5)

        xf = seen[f"mlp_up.{layer}"][0]
        up = xf @ m.tensor("mlp_up", layer).t() + (
            m.tensor("mlp_up_bias", layer) if m.has("mlp_up_bias", layer) else 0
        )
        if cfg.gated:
            gate = xf @ m.tensor("mlp_gate", layer).t()
            if m.has("mlp_gate_bias", layer):
                gate = gate + m.tensor("mlp_gate_bias", layer)
            h = act(gate) * up
        else:
            h = act(up)
        d_in, d_out = seen[f"mlp_down.{layer}"]
        torch.testing.assert_close(h, d_in, rtol=1e-4, atol=1e-5)
        down = h @ m.tensor("mlp_down", layer).t()
        if m.has("mlp_down_bias", layer):
            down = down + m.tensor("mlp_down_bias", layer)
        torch.testing.assert_close(down, d_out, rtol=1e-4, atol=1e-5)

        for role in ("attn_norm", "mlp_norm"):
            if f"{role}.{layer}" in seen:
                s_in, s_out = seen[f"{role}.{layer}"]
                norm = m.norm(role, layer)
                assert norm is not None
                torch.testing.assert_close(norm.apply(s_in), s_out, rtol=1e-4, atol=1e-4)
        # the norm huref says feeds each sub-layer is the one whose output the sub-layer reads
        for sub, reader in (("attn", "attn_q"), ("mlp", "mlp_up")):
            roles = m.input_norm_roles(layer, sub)
            if (
                not roles
            ):  # post-LN without an embedding norm (OPT-350m): the first attention reads the embeddings
                assert (layer, sub, cfg.placement) == (0, "attn", "post")
                continue
            role, ly = roles[-1]
            if f"{role}.{ly}" in seen:
                norm_out, read_in = seen[f"{role}.{ly}"][1], seen[f"{reader}.{layer}"][0]
                d = norm_out.shape[-1]  # OPT's post-LN MLP reads its input flattened to [tokens, d]
                torch.testing.assert_close(norm_out.reshape(-1, d), read_in.reshape(-1, d))
            else:
                assert role == "embed_norm" and layer == 0


def test_stored_buffers_are_neither_parameters_nor_parameter_evidence(tmp_path: Path) -> None:
    """The original gpt2 checkpoint stores each layer's causal mask (attn.bias): a buffer, the
    same in every GPT-2 of that context length. It must not count as parameters, and must not
    make two independent models look alike to the parameter cosine."""
    import transformers as T
    from safetensors.torch import load_file, save_file

    from huref.checkpoint import open_checkpoint
    from huref.invariants.pcs import parameter_cosine

    cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=256)
    paths = []
    for seed in (0, 1):
        model = T.GPT2LMHeadModel(cfg)
        randomise_(model, seed)
        path = tmp_path / f"m{seed}"
        model.save_pretrained(path)
        paths.append(path)
    before = parameter_cosine(open_checkpoint(paths[0]), open_checkpoint(paths[1]))
    n_params = load_model(paths[0]).parameter_count()
    assert n_params == sum(p.numel() for p in model.parameters())  # tied: counted once, as stored
    for path in paths:
        sd = load_file(str(path / "model.safetensors"))
        for layer in range(2):
            sd[f"transformer.h.{layer}.attn.bias"] = torch.tril(torch.ones(256, 256)).view(1, 1, 256, 256)
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert load_model(paths[0]).parameter_count() == n_params
    after = parameter_cosine(open_checkpoint(paths[0]), open_checkpoint(paths[1]))
    assert before is not None and after is not None and abs(after - before) < 1e-9
