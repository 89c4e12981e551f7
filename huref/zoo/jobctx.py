"""What every zoo build job shares: the build context, one manifest entry, the loss summary.

A job is a top-level function ``job_*(ctx, ...) -> list[dict]`` that writes model folders under
``ctx.root`` and returns their ``zoo.json`` entries; the context is a frozen record so that jobs
can be sent to worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from huref.zoo.presets import Preset

# the largest relative logits error a function-preserving edit (an attack, upcycling) may show
ATTACK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Ctx:
    root: Path
    preset: Preset
    stories: Path | None

    @property
    def tokenizer_dir(self) -> Path:
        """The zoo's own tokenizer, shared by the bases trained from scratch."""
        return self.root / "_tokenizer"

    def streams(self) -> dict[str, torch.Tensor]:
        """The tokenized corpus slices (pretrain, sft, cpt, heldout) written before the jobs run."""
        return load_file(str(self.root / "_data" / "streams.safetensors"))


def entry(
    name: str, arch: str, parent: str | list[str] | None, relation: str, root: str, **notes: Any
) -> dict:
    """One model's ``zoo.json`` entry; ``root`` is the base its lineage starts from."""
    return {
        "name": name,
        "path": name,
        "arch": arch,
        "parent": parent,
        "relation": relation,
        "root": root,
        "notes": notes,
    }


def loss_notes(losses: list[float]) -> dict[str, float]:
    """First and last training losses, each averaged over up to ten steps."""
    k = max(1, min(10, len(losses) // 5))
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": len(losses)}
