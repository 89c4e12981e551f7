"""Checking a config or a checkpoint against its family's definition (``huref arch validate``).

A config alone resolves to its ``ArchConfig`` and to the tensors the definition then declares;
those must provide every required role. A checkpoint is in addition bound both ways (every
declared tensor present, every stored tensor claimed, buffered or explicitly ignored: see
huref.arch.model) and its bindings must provide every required role. A definition that forgot a
role would otherwise pass: a missing role only shows when the science code asks for it.
A sparse (MoE) layer requires its router and every expert's projections in place of the MLP's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huref.arch.config import ArchConfig, MoEConfig
from huref.arch.families import ARCHITECTURES, spec_for
from huref.arch.roles import Role
from huref.arch.spec import ArchSpec
from huref.errors import ArchitectureError
from huref.paths import shown

# The roles without which no invariant can be computed: each layer's attention projections,
# MLP projections and input norm, and the token embedding (plus the gate of a gated MLP and an
# output head unless it is tied to the embedding).
REQUIRED_LAYER_ROLES = (Role.attn_q, Role.attn_k, Role.attn_v, Role.attn_o, Role.mlp_up, Role.mlp_down)
REQUIRED_NORM = Role.attn_norm  # post-LN families keep it too: the norm after attention
DENSE_ROLES = (Role.mlp_up, Role.mlp_down)  # REQUIRED_LAYER_ROLES of a dense layer's MLP
# a sparse layer's, in their place: the router, and each expert's projections
REQUIRED_EXPERT_ROLES = (Role.expert_gate, Role.expert_up, Role.expert_down)
# Multi-head Latent Attention's, in place of attn_q/k/v: the key/value latent path, and the query
# as one attn_q (full rank) or its low-rank pair with the norm between
MLA_ROLES = (Role.attn_kv_a, Role.attn_kv_a_norm, Role.attn_kv_b)
MLA_LOW_RANK_Q = (Role.attn_q_a, Role.attn_q_a_norm, Role.attn_q_b)


def required_roles(cfg: ArchConfig) -> list[tuple[str, int | None]]:
    """(role, layer) pairs every checkpoint of ``cfg`` must provide; layer None for global roles.
    Expert roles are not among them (``required_expert_roles``)."""
    out: list[tuple[str, int | None]] = [(str(Role.embed), None)]
    if not cfg.tied:
        out.append((str(Role.lm_head), None))
    for layer in range(cfg.n_layers):
        per_layer: list[Role] = [*REQUIRED_LAYER_ROLES, REQUIRED_NORM]
        if cfg.mla is not None:
            q = [Role.attn_q] if cfg.mla.q_lora_rank is None else list(MLA_LOW_RANK_Q)
            per_layer = q + [r for r in per_layer if r not in (Role.attn_q, Role.attn_k, Role.attn_v)]
            per_layer += MLA_ROLES
        if cfg.is_sparse(layer):
            per_layer = [r for r in per_layer if r not in DENSE_ROLES] + [Role.moe_router]
            if cfg.moe is not None and cfg.moe.d_shared is not None:
                per_layer += [Role.shared_gate, Role.shared_up, Role.shared_down]
            if cfg.moe is not None and cfg.moe.shared_gated:
                per_layer.append(Role.shared_expert_gate)
            if cfg.moe is not None and (cfg.moe.router_bias or cfg.moe.router_logit_bias):
                per_layer.append(Role.moe_router_bias)
        elif cfg.gated:
            per_layer.append(Role.mlp_gate)
        out += [(str(r), layer) for r in per_layer]
    return out


def required_expert_roles(cfg: ArchConfig) -> list[tuple[str, int, int]]:
    """(role, layer, expert) of every routed expert's projections in the sparse layers."""
    if cfg.moe is None:
        return []
    return [
        (str(r), layer, e)
        for layer in cfg.moe.sparse_layers
        if layer < cfg.n_layers
        for e in range(cfg.moe.n_experts)
        for r in REQUIRED_EXPERT_ROLES
    ]


Declared = dict[str, tuple[tuple[str, ...], int | None]]


def _declared(
    spec: ArchSpec, cfg: ArchConfig, prefix: str | None
) -> list[tuple[str, tuple[str, ...], int | None, int | None]]:
    """(name, roles, layer, expert) of every tensor the definition declares for ``cfg``; expert
    None for a tensor holding every expert of its layer (or none)."""
    pre = spec.prefixes[0] if prefix is None else prefix
    out = []
    n_experts = cfg.moe.n_experts if cfg.moe is not None else 0
    for rule, p in [(r, pre) for r in spec.rules] + [(r, "") for r in spec.outside_prefix]:
        layers: Sequence[int | None] = range(cfg.n_layers) if rule.per_layer else [None]
        for layer in layers:
            if not rule.applies(cfg, layer):
                continue
            experts: Sequence[int | None] = range(n_experts) if rule.per_expert else [None]
            out += [(rule.name(p, layer, e), rule.roles, layer, e) for e in experts]
    return out


def declared_tensors(spec: ArchSpec, cfg: ArchConfig, prefix: str | None = None) -> Declared:
    """Checkpoint name -> (roles, layer) of every tensor the definition declares for ``cfg``
    (optional ones included: a layer's stacked experts and their per-expert tensors both),
    named with ``prefix`` (default: the family's first)."""
    return {name: (roles, layer) for name, roles, layer, _e in _declared(spec, cfg, prefix)}


def missing_roles(cfg: ArchConfig, has: Callable[..., bool]) -> list[str]:
    """The required roles ``has(role, layer)`` does not provide, as 'role' or 'role (layer l)',
    then the expert roles ``has(role, layer, expert)`` does not, as 'role (layer l, expert e)'."""
    out = [r if ly is None else f"{r} (layer {ly})" for r, ly in required_roles(cfg) if not has(r, ly)]
    out += [f"{r} (layer {ly}, expert {e})" for r, ly, e in required_expert_roles(cfg) if not has(r, ly, e)]
    return out


def _moe_doc(moe: MoEConfig) -> dict[str, Any]:
    """The MoE config as JSON; ``router_logit_bias`` only where set (GPT-OSS), so the documents
    of every other sparse model stay as they were."""
    doc = dataclasses.asdict(moe)
    if not moe.router_logit_bias:
        del doc["router_logit_bias"]
    return doc


@dataclass(frozen=True)
class Validation:
    """What ``validate`` resolved and checked."""

    path: Path
    spec: ArchSpec
    cfg: ArchConfig
    checkpoint: bool  # tensors were checked (else a config alone)
    tensors: int  # stored tensors (a checkpoint) or declared ones (a config)
    buffers: int = 0
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        c = self.cfg
        config = {k: v for k, v in vars(c).items() if k != "extra"}
        config["moe"] = None if c.moe is None else _moe_doc(c.moe)
        config["mla"] = None if c.mla is None else dataclasses.asdict(c.mla)
        return {
            "path": str(self.path),
            "family": self.spec.name,
            "config": config,
            "extra": dict(c.extra),
            "checked": "checkpoint" if self.checkpoint else "config",
            "tensors": self.tensors,
            "buffers": self.buffers,
            "ignored": self.ignored,
        }


def validate(path: str | Path) -> Validation:
    """``path`` checked against its family: a ``.json`` file as a config alone, anything else as
    a checkpoint (folder or file)."""
    from huref.checkpoint.core import read_config

    p = Path(path)
    return validate_config(read_config(p), p) if p.suffix == ".json" else validate_checkpoint(p)


def validate_config(config: dict[str, Any], path: Path) -> Validation:
    """A config alone: its family, its resolved ArchConfig, and the declared tensors' roles."""
    try:
        spec = spec_for(config)
        cfg = spec.read_config(config)
    except ArchitectureError as e:
        raise ArchitectureError(f"{shown(path)}: {e}") from None
    declared = _declared(spec, cfg, None)
    provided = {(r, layer, e) for _name, roles, layer, e in declared for r in roles}

    def has(role: str, layer: int | None, expert: int | None = None) -> bool:
        # a stacked tensor (expert None) provides the role for every expert of its layer
        return (role, layer, expert) in provided or (expert is not None and (role, layer, None) in provided)

    lacking = missing_roles(cfg, has)
    if lacking:
        raise ArchitectureError(
            f"{shown(path)}: the {spec.name} definition provides no {', '.join(lacking[:5])} for this config"
        )
    return Validation(path, spec, cfg, checkpoint=False, tensors=len(declared))


def validate_checkpoint(path: str | Path) -> Validation:
    """A checkpoint bound to its definition both ways, with every required role present."""
    from huref.arch.model import Model
    from huref.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    model = Model(ckpt)  # raises on a missing declared tensor or an unclaimed stored one
    lacking = missing_roles(model.cfg, model.has)
    if lacking:
        raise ArchitectureError(
            f"{shown(ckpt.path)}: the {model.spec.name} definition binds no {', '.join(lacking[:5])}"
        )
    names = ckpt.source.names()
    patterns = [re.compile(p) for p in model.spec.ignored]
    ignored = [n for n in names if any(p.search(n) for p in patterns)]
    return Validation(Path(ckpt.path), model.spec, model.cfg, True, len(names), len(model.buffers), ignored)


def family_rows() -> list[dict[str, Any]]:
    """One row per registered family: name, model_types, GGUF architectures, roles it provides."""
    return [
        {
            "name": name,
            "model_types": list(spec.model_types),
            "gguf": [a.name for a in spec.gguf.archs] if spec.gguf else [],
            "roles": spec.roles(),
        }
        for name, spec in ARCHITECTURES.items()
    ]
