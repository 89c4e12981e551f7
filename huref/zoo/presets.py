"""Zoo presets: sizes, training budgets and which sections a zoo holds.

``tiny`` is for tests (< 5 min on 2 cores) and ``demo`` for ``huref demo``: their derivatives are
*stress* cases (SFT a third of pretraining's steps at a third of its rate, CPT as long as all of
pretraining), far more violent than real lineage. ``realistic`` trains its bases ten times longer,
to a loss plateau, and derives models whose size of change is calibrated to published real pairs
(:mod:`huref.zoo.calibration` states the targets; the build records the figures reached).
"""

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
    # (architecture, name, seed) of every base trained from scratch
    bases: tuple[tuple[str, str, int], ...] = (
        ("llama", "llama-a", 1),
        ("llama", "llama-b", 2),
        ("llama", "llama-c", 3),
        ("gpt2", "gpt2-a", 4),
        ("gpt_neox", "neox-a", 5),
        ("mixtral", "moe-a", 6),
        ("mixtral", "moe-b", 7),
    )
    # the zoo's sections beyond the bases and their trained derivatives
    sections: tuple[str, ...] = ("structural", "attacks", "moe", "merges", "disguise")
    regime: str = "stress"  # what the trained derivatives imitate: stress cases, or realistic lineage
    lora_lr: float = 2e-3
    heal_lr: float = 1e-3  # vocabulary expansion's training after the new rows are added
    stories_sft_lr: float = 5e-4
    stories_cpt_lr: float = 2e-3
    # the "light" section, real lineage beside the stress cases: a LLaMA base trained to a loss
    # plateau (the realistic preset's budget) and an SFT of it whose size of change is a real SFT's
    # (see huref.zoo.calibration); the demo fingerprints that base and stamps the SFT
    plateau_base: tuple[str, str, int] = ("llama", "llama-p", 9)
    plateau_steps: int = 3000
    light_sft_steps: int = 200
    light_sft_lr: float = 3e-4
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
        # the light section is the demo's FP-Vec chain: a base at its plateau, a real SFT's size of change
        sections=("structural", "attacks", "moe", "merges", "disguise", "light"),
    ),
    # bases trained to a loss plateau (3000 steps, ten times the others), derivatives calibrated to
    # the size of change of real pairs (huref.zoo.calibration); built for FP-Vec and the dogs
    "realistic": Preset(
        name="realistic",
        vocab=1024,
        corpus_chars=6_000_000,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        d_ff=176,
        base_steps=3000,
        base_lr=3e-3,
        sft_steps=200,
        sft_lr=3e-4,
        cpt_steps=1000,
        cpt_lr=3e-4,
        lora_steps=200,
        heal_steps=100,
        lora_lr=1e-3,
        heal_lr=3e-4,
        stories_sft_lr=3e-4,
        stories_cpt_lr=3e-4,
        # the c and d bases are more independent models of one corpus and tokenizer: convergent
        # learning makes such models share a few neurons (docs/method.md, the p-value), and the
        # neuron test's null and the dog captions are checked on them
        bases=(
            ("llama", "llama-a", 1),
            ("llama", "llama-b", 2),
            ("llama", "llama-c", 13),
            ("gpt2", "gpt2-a", 4),
            ("gpt2", "gpt2-b", 8),
            ("gpt2", "gpt2-c", 12),
            ("gpt2", "gpt2-d", 16),
        ),
        sections=("merges",),
        regime="realistic",
    ),
}
