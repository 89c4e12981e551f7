"""Zoo presets: sizes and training budgets. ``tiny`` is for tests (< 3 min on 2 cores)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    vocab: int
    corpus_chars: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    base_steps: int
    base_lr: float
    sft_steps: int
    sft_lr: float
    cpt_steps: int
    cpt_lr: float
    lora_steps: int
    heal_steps: int
    batch: int = 16
    seq: int = 64
    independent_bases: int = 3
    attacks_on: tuple[str, ...] = ("llama-a", "stories260k")
    moe_experts: int = 4  # the MoE section: Mixtral-style, each expert as wide as d_ff
    moe_top_k: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "tiny": Preset(
        name="tiny",
        vocab=1024,
        corpus_chars=1_500_000,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        d_ff=176,
        base_steps=300,
        base_lr=3e-3,
        sft_steps=80,
        sft_lr=1e-3,
        cpt_steps=300,
        cpt_lr=2e-3,
        lora_steps=80,
        heal_steps=40,
    ),
    # the demo: deeper models and a larger vocabulary than the tests use, still a few minutes on 2 cores
    "demo": Preset(
        name="demo",
        vocab=1536,
        corpus_chars=2_000_000,
        d_model=64,
        n_layers=6,
        n_heads=4,
        n_kv_heads=2,
        d_ff=176,
        base_steps=300,
        base_lr=3e-3,
        sft_steps=100,
        sft_lr=1e-3,
        cpt_steps=300,
        cpt_lr=2e-3,
        lora_steps=100,
        heal_steps=50,
    ),
}
