"""A checkpoint bound to its architecture definition: weights by role, checked both ways.

Binding checks that every tensor the definition declares is present (unless optional) and that
every tensor in the checkpoint is claimed by a rule or explicitly ignored; shapes are checked
against the config from headers alone. In a sparse (MoE) layer that holds every expert of each
layer, by role: a missing expert or a stray one past the configured count is refused. Reads return float32 tensors in canonical [out, in]
orientation with fused layouts already split.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from huref.arch.config import ArchConfig
from huref.arch.families import spec_for
from huref.arch.mtp import MTPTensor, bind_mtp
from huref.arch.roles import EXPERT_ROLES
from huref.arch.shapes import check_shapes, moe_summary, split_fused
from huref.arch.spec import ArchSpec, Rule
from huref.checkpoint import Checkpoint, open_checkpoint
from huref.checkpoint.source import DTYPES, all_finite, empty_tensor
from huref.errors import ArchitectureError
from huref.paths import shown


@dataclass(frozen=True)
class Binding:
    name: str  # checkpoint tensor name
    rule: Rule
    part: int  # index of this role among the rule's fused roles
    expert: int | None = None  # the expert of an expert role (its index in a stacked tensor)


@dataclass(frozen=True)
class Norm:
    """A normalisation layer's parameters, applied to rows of a [n, d] matrix."""

    kind: str  # 'rms' | 'layer'
    weight: torch.Tensor | None  # effective gain (Gemma's 1 + w already applied)
    bias: torch.Tensor | None
    eps: float

    def apply(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        if self.kind == "rms":
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            mu = x.mean(-1, keepdim=True)
            var = (x - mu).pow(2).mean(-1, keepdim=True)
            y = (x - mu) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if with_bias and self.bias is not None:
            y = y + self.bias
        return y


class Model:
    """Role-level, lazy access to one checkpoint."""

    def __init__(self, ckpt: Checkpoint, spec: ArchSpec | None = None) -> None:
        self.ckpt = ckpt
        try:  # name the checkpoint: a batch scan must say which model's config is at fault
            self.spec = spec or spec_for(ckpt.config)
            self.cfg: ArchConfig = self.spec.read_config(ckpt.config)
        except ArchitectureError as e:
            raise ArchitectureError(f"{shown(ckpt.path)}: {e}") from None
        except (
            ValueError,
            TypeError,
            ZeroDivisionError,
            OverflowError,
        ) as e:  # a net under the readers' checks
            raise ArchitectureError(
                f"{shown(ckpt.path)}: config.json has an unusable value ({shown(e)})"
            ) from None
        names = ckpt.source.names()
        present = set(names)
        if self.cfg.n_layers > len(names):  # every layer stores at least one tensor
            raise ArchitectureError(
                f"{shown(ckpt.path)}: config.json declares {self.cfg.n_layers} layers, the checkpoint holds "
                f"{len(names)} tensors in all"
            )
        self.prefix = self._detect_prefix(present)
        self._bind: dict[tuple[str, int | None], Binding] = {}
        # expert roles by (role, layer, expert); apart from _bind, whose (role, layer) keys other
        # modules read
        self._experts: dict[tuple[str, int, int], Binding] = {}
        claimed: set[str] = set()
        missing: list[str] = []
        rules = [(r, self.prefix) for r in self.spec.rules] + [(r, "") for r in self.spec.outside_prefix]
        # a layer's experts stored as one stacked tensor stand in for its per-expert tensors
        rules.sort(key=lambda rp: not rp[0].expert_stack)
        stacked: set[tuple[str, int]] = set()
        n_experts = self.cfg.moe.n_experts if self.cfg.moe is not None else 0
        for rule, prefix in rules:
            if not rule.when(self.cfg):
                continue
            layers: Sequence[int | None] = range(self.cfg.n_layers) if rule.per_layer else [None]
            for layer in layers:
                if not rule.applies(self.cfg, layer):
                    continue
                if rule.per_expert and all((r, layer) in stacked for r in rule.roles):
                    continue
                experts: Sequence[int | None] = range(n_experts) if rule.per_expert else [None]
                for expert in experts:
                    name = rule.name(prefix, layer, expert)
                    if name not in present:
                        if not rule.optional:
                            missing.append(name)
                        continue
                    claimed.add(name)
                    self._bind_one(name, rule, layer, expert, n_experts)
                    if rule.expert_stack and layer is not None:
                        stacked.update((r, layer) for r in rule.roles)
        where = f"{shown(ckpt.path)} ({self.spec.name}, {self.cfg.n_layers} layers)"
        # multi-token-prediction blocks after the main layers, stored like the last main layer
        last = [b.rule for (_r, ly), b in self._bind.items() if ly == self.cfg.n_layers - 1]
        last += [b.rule for (_r, ly, _e), b in self._experts.items() if ly == self.cfg.n_layers - 1]
        layer_rules = list({id(r): r for r in last}.values())
        self.mtp_layers: int  # MTP blocks stored (huref.arch.mtp): claimed, never fingerprinted
        self.mtp_tensors: list[MTPTensor]
        self.mtp_layers, self.mtp_tensors = bind_mtp(
            self.spec.mtp, self.cfg, self.prefix, layer_rules, n_experts, present, ckpt.source.info, where
        )
        claimed.update(t.name for t in self.mtp_tensors)
        ignored = [re.compile(p) for p in self.spec.ignored]
        self.buffers = buffer_names(self.spec, names)
        unclaimed = [
            n
            for n in names
            if n not in claimed and n not in self.buffers and not any(p.search(n) for p in ignored)
        ]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ArchitectureError(f"{where}: missing tensors {', '.join(map(shown, missing[:5]))}{more}")
        if unclaimed:
            more = f" and {len(unclaimed) - 5} more" if len(unclaimed) > 5 else ""
            raise ArchitectureError(
                f"{where}: tensors not claimed by the {self.spec.name} definition: "
                f"{', '.join(map(shown, unclaimed[:5]))}{more}"
            )
        self._check_shapes()
        self._cache: tuple[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ binding
    def _bind_one(self, name: str, rule: Rule, layer: int | None, expert: int | None, n_experts: int) -> None:
        for i, role in enumerate(rule.roles):
            if role not in EXPERT_ROLES:
                self._bind[(role, layer)] = Binding(name, rule, i)
                continue
            assert layer is not None  # checked when the rule was made
            for e in range(n_experts) if expert is None else [expert]:  # a stack: every expert
                self._experts[(role, layer, e)] = Binding(name, rule, i, e)

    def _detect_prefix(self, present: set[str]) -> str:
        embed_rules = [r for r in self.spec.rules if "embed" in r.roles]
        for prefix in self.spec.prefixes:
            if any(prefix + r.template in present for r in embed_rules):
                return prefix
        raise ArchitectureError(
            f"{shown(self.ckpt.path)}: no token embedding found for the {self.spec.name} family "
            f"(looked for {', '.join(p + embed_rules[0].template for p in self.spec.prefixes)})"
        )

    def _check_shapes(self) -> None:
        everything = [(k[0], b) for k, b in self._bind.items()] + [
            (k[0], b) for k, b in self._experts.items()
        ]
        # an MTP block's decoder layer has the shapes of a main layer
        everything += [
            (t.rule.roles[0], Binding(t.name, t.rule, 0, t.expert)) for t in self.mtp_tensors if t.rule
        ]
        check_shapes(self.ckpt, self.cfg, [(role, b.name, b.rule) for role, b in everything])

    # ------------------------------------------------------------------ access
    def has(self, role: str, layer: int | None = None, expert: int | None = None) -> bool:
        if expert is None:
            return (role, layer) in self._bind
        return layer is not None and (role, layer, expert) in self._experts

    def binding(self, role: str, layer: int | None = None, expert: int | None = None) -> Binding:
        try:
            if expert is None:
                return self._bind[(role, layer)]
            return self._experts[(role, layer, expert)]  # type: ignore[index]
        except KeyError:
            where = f" in layer {layer}" if layer is not None else ""
            where += f", expert {expert}" if expert is not None else ""
            raise ArchitectureError(f"{shown(self.ckpt.path)}: no {role!r}{where}") from None

    def roles(self, layer: int | None = None) -> list[str]:
        """The roles bound once in ``layer`` (expert roles: ``expert_roles``)."""
        return sorted(r for (r, ly) in self._bind if ly == layer)

    def expert_roles(self, layer: int) -> list[str]:
        """The expert roles bound in ``layer`` (none in a dense layer)."""
        return sorted({r for (r, ly, _e) in self._experts if ly == layer})

    def n_experts(self, layer: int) -> int:
        """Routed experts in ``layer``: the configured count in a sparse layer, 0 in a dense one."""
        return self.cfg.moe.n_experts if self.cfg.moe is not None and self.is_sparse(layer) else 0

    def is_sparse(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward block is a sparse MoE block (router and experts)."""
        return self.cfg.is_sparse(layer)

    def _raw(self, name: str, keep: bool) -> torch.Tensor:
        """The stored tensor; a fused one is kept for its sibling roles (q, k, v are asked in turn)."""
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        self._cache = None  # released before the next read: peak memory is one stored tensor
        t = self.ckpt.source.read(name)
        if keep:
            self._cache = (name, t)
        return t

    def tensor(
        self,
        role: str,
        layer: int | None = None,
        expert: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """One role's tensor (of ``expert`` for an expert role), canonical orientation, split from
        its fused parent if need be.

        The result is always the caller's own contiguous tensor (never a view of a cached one).
        """
        b = self.binding(role, layer, expert)
        raw = self._raw(b.name, keep=len(b.rule.roles) > 1 or b.rule.expert_stack)
        return self.convert(raw, b, dtype)

    def expert_tensor(
        self, role: str, layer: int, expert: int, dtype: torch.dtype | None = torch.float32
    ) -> torch.Tensor:
        """One expert's tensor (in ``dtype``; None: as stored), reading only that expert: of a
        stacked [E, ...] tensor just its rows (kept for the sibling role of a gate|up stack), so
        peak memory is one expert's weights however many experts the layer has."""
        b = self.binding(role, layer, expert)
        if dtype is None:  # a stored type torch has no dtype for (GGUF's Q8_0 blocks): float32
            dtype = DTYPES.get(self.ckpt.source.info(b.name).dtype, torch.float32)
        if not b.rule.expert_stack:
            return self.tensor(role, layer, expert, dtype)
        key = f"{b.name}\0{expert}"
        if self._cache is not None and self._cache[0] == key:
            raw = self._cache[1]
        else:
            self._cache = None
            raw = self.ckpt.source.read_rows(b.name, [expert])  # [1, out, in]
            self._cache = (key, raw) if len(b.rule.roles) > 1 else None
        return self.convert(raw, dataclasses.replace(b, expert=0), dtype)

    def role_view(self, raw: torch.Tensor, b: Binding) -> torch.Tensor:
        """The role's part of a stored tensor, in [out, in] orientation (a view, no copy)."""
        if b.rule.expert_stack:
            raw = raw[b.expert]  # [E, out, in] -> this expert's [out, in] (conv1d: [in, out])
        t = raw.t() if b.rule.storage == "conv1d" else raw  # [in, out] -> [out, in]
        return split_fused(t, b.rule, self.cfg)[b.part] if len(b.rule.roles) > 1 else t

    def convert(
        self,
        raw: torch.Tensor,
        b: Binding,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Role view of ``raw`` converted to ``dtype`` (into ``out`` when given), checked finite."""
        t = self.role_view(raw, b)
        if out is None and t is raw and t.dtype == dtype and t.is_contiguous():
            res = t  # a source read is a fresh tensor already
        else:
            dest = out if out is not None else empty_tensor(t.shape, dtype)
            res = dest.copy_(t)  # converts; ~2.5x faster than .to() on big ones
        # a widening conversion (bf16/f16 -> f32) keeps finiteness: check the smaller stored tensor
        widening = (
            t.is_floating_point()
            and res.is_floating_point()
            and float(torch.finfo(res.dtype).max) >= float(torch.finfo(t.dtype).max)
        )
        if not all_finite(t if widening else res):
            raise ArchitectureError(
                f"{shown(self.ckpt.path)}: tensor {shown(b.name)} contains NaN or infinite values"
            )
        return res

    def optional(
        self,
        role: str,
        layer: int | None = None,
        expert: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor | None:
        return self.tensor(role, layer, expert, dtype) if self.has(role, layer, expert) else None

    def norm(self, role: str, layer: int | None = None) -> Norm | None:
        if not self.has(role, layer):
            return None
        w = self.tensor(role, layer) + self.cfg.norm_offset
        return Norm(self.cfg.norm, w, self.optional(role + "_bias", layer), self.cfg.norm_eps)

    def embed_rows(self, ids: Sequence[int]) -> torch.Tensor:
        """Token-embedding rows [n, d] for the given ids, read row-wise (projected if OPT-350m style)."""
        b = self.binding("embed")
        x = self.ckpt.source.read_rows(b.name, list(ids)).to(torch.float32)
        if not all_finite(x):
            raise ArchitectureError(
                f"{shown(self.ckpt.path)}: token embedding contains NaN or infinite values"
            )
        if self.has("embed_proj_in"):
            x = x @ self.tensor("embed_proj_in").t()  # [n, d_embed] -> [n, d]
        return x * float(self.cfg.extra.get("embed_scale", 1.0))

    def input_norm_roles(self, layer: int, sub: str) -> list[tuple[str, int | None]]:
        """(role, layer) of the norms applied, in order, to embedding rows to form a sub-layer's input.

        Pre-LN: the stream (after any embedding norm) goes through the sub-layer's own norm; a
        parallel block without an MLP norm feeds the MLP from the attention's norm.
        Post-LN: the stream entering layer l is the output of layer l-1's last norm (or of the
        embedding norm), so that is what the attention reads; the MLP reads the output of the
        attention's norm in the same layer.
        """
        if sub not in ("attn", "mlp"):
            raise ValueError(sub)
        chain: list[tuple[str, int | None]]
        if self.cfg.placement == "pre":
            own: tuple[str, int | None] = ("attn_norm", layer)
            if sub == "mlp" and self.has("mlp_norm", layer):
                own = ("mlp_norm", layer)
            chain = [("embed_norm", None), own]
        elif sub == "attn":
            chain = [("embed_norm", None) if layer == 0 else ("mlp_norm", layer - 1)]
        else:
            chain = [("attn_norm", layer)]
        return [c for c in chain if self.has(*c)]

    def input_norms(self, layer: int, sub: str) -> list[Norm]:
        return [n for r, ly in self.input_norm_roles(layer, sub) if (n := self.norm(r, ly)) is not None]

    def summary(self) -> dict[str, object]:
        """The architecture in role terms, as recorded in fingerprints and reports."""
        c = self.cfg
        return {
            "family": self.spec.name,
            "model_type": c.model_type,
            "n_layers": c.n_layers,
            "d_model": c.d_model,
            "n_heads": c.n_heads,
            "n_kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "d_ff": c.d_ff,
            "vocab_size": c.vocab_size,
            "norm": c.norm,
            "placement": c.placement,
            "gated": c.gated,
            "tied_embeddings": c.tied,
            "parameters": self.parameter_count(),
            **({"moe": self.moe_summary()} if c.moe is not None else {}),
            **({"mla": dataclasses.asdict(c.mla)} if c.mla is not None else {}),
            **({"mtp_layers": self.mtp_layers} if self.mtp_layers else {}),
        }

    def moe_summary(self) -> dict[str, object] | None:
        """The sparse MoE part of the architecture (None for a dense model)."""
        return None if self.cfg.moe is None else moe_summary(self.cfg.moe)

    def parameter_count(self) -> int:
        """Stored parameters; buffers (causal masks, rotary tables, position ids) are not counted."""
        return sum(self.ckpt.source.info(n).numel for n in self.ckpt.source.names() if n not in self.buffers)


def buffer_names(spec: ArchSpec, names: Sequence[str]) -> set[str]:
    """The names among ``names`` that the architecture stores as buffers, not parameters."""
    patterns = [re.compile(p) for p in spec.buffers]
    return {n for n in names if any(p.search(n) for p in patterns)}


def load_model(path_or_ckpt: str | Path | Checkpoint) -> Model:
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, Checkpoint) else open_checkpoint(path_or_ckpt)
    return Model(ckpt)
