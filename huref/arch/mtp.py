"""Multi-token-prediction (MTP) blocks: claimed as declared data, never fingerprinted.

DeepSeek-V3 and R1 releases store ``num_nextn_predict_layers`` MTP blocks after the main layers
(block k is layer ``n_layers + k``; the family declares them in ``ArchSpec.mtp``). A block
predicts a token further ahead from the main model's last hidden state, so the model's
next-token function never reads it: its tensors are claimed, shape-checked and counted, and no
invariant reads them. A block is stored whole or not at all (transformers drops it when it saves
a model); a partial block, a block past the configured count or any tensor the declaration does
not name is refused, so a stray tensor cannot hide under the MTP layer's index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from huref.arch.config import ArchConfig
from huref.arch.spec import MTPRules, Rule
from huref.checkpoint.source import TensorInfo
from huref.errors import ArchitectureError
from huref.paths import shown


@dataclass(frozen=True)
class MTPTensor:
    """One stored tensor of an MTP block."""

    name: str
    block: int
    rule: Rule | None  # the decoder-layer rule it follows; None: one of the block's own tensors
    expert: int | None = None
    shape: tuple[int, ...] = ()  # a block's own tensor: the shape config.json implies


def declared_block(
    mtp: MTPRules, cfg: ArchConfig, prefix: str, block: int, layer_rules: Sequence[Rule], n_experts: int
) -> list[MTPTensor]:
    """Every tensor MTP block ``block`` holds: its decoder layer's, named by ``layer_rules`` (the
    rules the last main layer is stored by) under the block's index, then its own."""
    layer = cfg.n_layers + block
    out: list[MTPTensor] = []
    for rule in layer_rules:
        experts: Sequence[int | None] = range(n_experts) if rule.per_expert else [None]
        out += [MTPTensor(rule.name(prefix, layer, e), block, rule, e) for e in experts]
    for template, shape in mtp.own_shapes(cfg):
        out.append(MTPTensor(prefix + template.replace("{L}", str(layer)), block, None, None, shape))
    return out


def bind_mtp(
    mtp: MTPRules | None,
    cfg: ArchConfig,
    prefix: str,
    layer_rules: Sequence[Rule],
    n_experts: int,
    present: set[str],
    info: Callable[[str], TensorInfo],
    where: str,
) -> tuple[int, list[MTPTensor]]:
    """(MTP blocks stored, their tensors). Each configured block must be stored whole or not at
    all; a block's own tensors must have the shapes config.json implies (its decoder layer's are
    checked with the main layers' rules by the caller)."""
    if mtp is None:
        return 0, []
    stored_blocks, tensors = 0, []
    for k in range(mtp.blocks(cfg)):
        want = declared_block(mtp, cfg, prefix, k, layer_rules, n_experts)
        lacking = [t.name for t in want if t.name not in present]
        if len(lacking) == len(want):
            continue  # not stored: a copy saved without its MTP block
        if lacking:
            more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
            raise ArchitectureError(
                f"{where}: multi-token-prediction block {k} (layer {cfg.n_layers + k}) is incomplete: "
                f"it lacks {', '.join(map(shown, lacking[:5]))}{more}"
            )
        for t in want:
            got = tuple(info(t.name).shape)
            if t.rule is None and got != t.shape:
                raise ArchitectureError(
                    f"{where}: tensor {shown(t.name)} has shape {list(got)}, but config.json implies {list(t.shape)}"
                )
        stored_blocks += 1
        tensors += want
    return stored_blocks, tensors
