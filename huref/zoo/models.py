"""Creating, saving and loading the zoo's transformers models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import transformers as T

from huref.checkpoint.atomic import atomic_dir
from huref.zoo.presets import Preset
from huref.zoo.rolestate import TOKENIZER_FILES

ARCH_CLASSES = {
    "llama": T.LlamaForCausalLM,
    "gpt2": T.GPT2LMHeadModel,
    "gpt_neox": T.GPTNeoXForCausalLM,
    "mixtral": T.MixtralForCausalLM,
}


class LlamaDefaults:
    """transformers' LlamaConfig defaults that Mixtral's differ from (1e-5 and 1e6 there)."""

    rms_norm_eps = 1e-6
    rope_theta = 10000.0


def new_model(arch: str, p: Preset, vocab: int, seed: int) -> Any:
    torch.manual_seed(seed)
    ids: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    cfg: Any
    # the LLaMA shape, shared by the dense models and the MoEs (so an MoE can be upcycled from one)
    llama_shape: dict[str, Any] = {
        "hidden_size": p.d_model,
        "intermediate_size": p.d_ff,
        "num_hidden_layers": p.n_layers,
        "num_attention_heads": p.n_heads,
        "num_key_value_heads": p.n_kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        **ids,
    }
    if arch == "llama":
        cfg = T.LlamaConfig(**llama_shape)
    elif arch == "mixtral":  # every FFN a sparse layer of experts as wide as d_ff
        cfg = T.MixtralConfig(
            **llama_shape,
            num_local_experts=p.moe_experts,
            num_experts_per_tok=p.moe_top_k,
            rms_norm_eps=LlamaDefaults.rms_norm_eps,  # as the dense llama models, so upcycling is exact
            rope_parameters={"rope_theta": LlamaDefaults.rope_theta, "rope_type": "default"},
        )
    elif arch == "gpt2":
        cfg = T.GPT2Config(
            n_embd=p.d_model, n_layer=p.n_layers, n_head=p.n_heads, vocab_size=vocab, n_positions=256, **ids
        )
    elif arch == "gpt_neox":
        cfg = T.GPTNeoXConfig(
            hidden_size=p.d_model,
            intermediate_size=4 * p.d_model,
            num_hidden_layers=p.n_layers,
            num_attention_heads=p.n_heads,
            vocab_size=vocab,
            max_position_embeddings=256,
            **ids,
        )
    else:
        raise ValueError(arch)
    return ARCH_CLASSES[arch](cfg).eval()


def save_hf(model: Any, dest: Path, tokenizer_dir: Path | None) -> Path:
    """save_pretrained into a temporary folder, add the tokenizer files, then rename into place."""
    with atomic_dir(Path(dest), overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_dir is not None:
            for f in TOKENIZER_FILES:
                if (tokenizer_dir / f).is_file():
                    shutil.copy2(tokenizer_dir / f, tmp / f)
    return dest


def load_hf(path: Path) -> Any:
    return T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def same_function_error(
    orig: Path, new: Path, id_map: torch.Tensor | None = None, old_vocab: int | None = None, seed: int = 0
) -> float:
    """max |logits_new - logits_orig| / max |logits_orig| on random token sequences.

    For a vocabulary permutation the new model reads the permuted ids and its logits are read
    back in the original order; for an expansion only the original vocabulary is compared.
    """
    a, b = load_hf(orig), load_hf(new)
    V = a.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, 48), generator=g)
    la = a(input_ids=ids).logits
    lb = b(input_ids=id_map[ids] if id_map is not None else ids).logits
    if id_map is not None:
        lb = lb[..., id_map]  # column j <- new logit of old token j
    if old_vocab is not None:
        lb = lb[..., :old_vocab]
    return float((la - lb).abs().max() / la.abs().max())
