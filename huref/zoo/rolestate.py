"""A whole checkpoint held as role tensors, edited by role, saved under its family's names.

The zoo's derivations and attacks speak roles only; this module maps them to checkpoint names
through the architecture definition (non-fused families), so no tensor name appears elsewhere.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huref.arch import Model, load_model
from huref.checkpoint.writer import TensorPlan, write_checkpoint
from huref.errors import ArchitectureError

Key = tuple[str, int | None]
ExpertKey = tuple[str, int, int]  # (role, layer, expert) of a sparse layer's routed expert
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


@dataclass
class RoleState:
    """All role tensors of one model (float32), its HF config, and where they are named.

    A sparse (MoE) layer's routed experts are held apart from the other roles, by (role, layer,
    expert), in ``experts``; its router, shared expert and norms are ordinary layer roles."""

    tensors: dict[Key, torch.Tensor]
    config: dict[str, Any]
    names: dict[Key, str]
    source: Path
    lm_head_name: str
    layer_template: dict[str, str] = field(default_factory=dict)  # role -> template with {L} (and {E})
    n_layers: int = 0
    experts: dict[ExpertKey, torch.Tensor] = field(default_factory=dict)
    expert_names: dict[ExpertKey, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RoleState:
        m = load_model(path)
        bindings = [*m._bind.values(), *m._experts.values()]
        if any(len(b.rule.roles) > 1 or b.rule.expert_stack for b in bindings):
            raise ArchitectureError(f"{path}: role editing supports non-fused, per-expert families only")
        tensors: dict[Key, torch.Tensor] = {}
        names: dict[Key, str] = {}
        templates: dict[str, str] = {}
        for (role, layer), b in m._bind.items():
            tensors[(role, layer)] = m.tensor(role, layer).clone()
            names[(role, layer)] = b.name
            if layer is not None:
                templates[role] = m.prefix + b.rule.template
        experts: dict[ExpertKey, torch.Tensor] = {}
        expert_names: dict[ExpertKey, str] = {}
        for (role, layer, e), b in m._experts.items():
            experts[(role, layer, e)] = m.expert_tensor(role, layer, e).clone()
            expert_names[(role, layer, e)] = b.name
            templates[role] = m.prefix + b.rule.template
        lm_rule = next(r for r in m.spec.outside_prefix if "lm_head" in r.roles)
        return cls(
            tensors,
            dict(m.ckpt.config),
            names,
            Path(path),
            lm_rule.template,
            templates,
            m.cfg.n_layers,
            experts,
            expert_names,
        )

    def model(self) -> Model:
        return load_model(self.source)

    def get(self, role: str, layer: int | None = None) -> torch.Tensor:
        return self.tensors[(role, layer)]

    def has(self, role: str, layer: int | None = None) -> bool:
        return (role, layer) in self.tensors

    def set(self, role: str, layer: int | None, t: torch.Tensor) -> None:
        self.tensors[(role, layer)] = t.contiguous()

    def n_experts(self, layer: int) -> int:
        """Routed experts in ``layer`` (0: a dense layer)."""
        return len({e for (r, at, e) in self.experts if at == layer and r == "expert_up"})

    def expert(self, role: str, layer: int, e: int) -> torch.Tensor:
        return self.experts[(role, layer, e)]

    def set_expert(self, role: str, layer: int, e: int, t: torch.Tensor) -> None:
        self.experts[(role, layer, e)] = t.contiguous()

    def all_tensors(self) -> dict[Key | ExpertKey, torch.Tensor]:
        """Every tensor by its key (layer roles and experts alike): for edits that treat all the
        same (quantization, merges)."""
        out: dict[Key | ExpertKey, torch.Tensor] = {k: t for k, t in self.tensors.items()}
        out.update({k: t for k, t in self.experts.items()})
        return out

    def at(self, key: Key | ExpertKey) -> torch.Tensor:
        """The tensor under a key from ``all_tensors``."""
        return self.experts[key] if len(key) == 3 else self.tensors[key]  # type: ignore[index]

    def put(self, key: Key | ExpertKey, t: torch.Tensor) -> None:
        """Replace the tensor under a key from ``all_tensors``."""
        if len(key) == 3:
            self.experts[key] = t.contiguous()  # type: ignore[index]
        else:
            self.tensors[key] = t.contiguous()  # type: ignore[index]

    def untie(self) -> None:
        """Give the output classifier its own tensor (needed before transforms that split them)."""
        if not self.has("lm_head"):
            self.set("lm_head", None, self.get("embed").clone())
            self.names[("lm_head", None)] = self.lm_head_name
        self.config["tie_word_embeddings"] = False

    def relayer(self, keep: list[int]) -> None:
        """Keep only the listed layers, renumbered 0..len(keep)-1 (depth pruning)."""
        new: dict[Key, torch.Tensor] = {}
        names: dict[Key, str] = {}
        for (role, layer), t in self.tensors.items():
            if layer is None:
                new[(role, None)] = t
                names[(role, None)] = self.names[(role, None)]
            elif layer in keep:
                j = keep.index(layer)
                new[(role, j)] = t
                names[(role, j)] = self.layer_template[role].replace("{L}", str(j))
        experts: dict[ExpertKey, torch.Tensor] = {}
        expert_names: dict[ExpertKey, str] = {}
        for (role, layer, e), t in self.experts.items():
            if layer in keep:
                j = keep.index(layer)
                experts[(role, j, e)] = t
                expert_names[(role, j, e)] = (
                    self.layer_template[role].replace("{L}", str(j)).replace("{E}", str(e))
                )
        self.tensors, self.names = new, names
        self.experts, self.expert_names = experts, expert_names
        self.n_layers = len(keep)
        self.config["num_hidden_layers"] = len(keep)
        for key in ("layer_types",):  # per-layer lists in newer configs follow the kept layers
            if isinstance(self.config.get(key), list):
                self.config[key] = [self.config[key][i] for i in keep]

    def save(
        self,
        dest: Path,
        tokenizer_from: Path | None = None,
        tokenizer_json: dict | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Path:
        by_name = {self.names[k]: t for k, t in self.tensors.items()}
        by_name.update({self.expert_names[k]: t for k, t in self.experts.items()})
        plan = [TensorPlan(name, tuple(t.shape), dtype) for name, t in by_name.items()]
        extra: dict[str, bytes] = {}
        src_tok = tokenizer_from or self.source
        for f in TOKENIZER_FILES:
            if (src_tok / f).is_file():
                extra[f] = (src_tok / f).read_bytes()
        if tokenizer_json is not None:
            extra["tokenizer.json"] = json.dumps(tokenizer_json, ensure_ascii=False).encode()
        cfg = dict(self.config)
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
        cfg.pop("dtype", None)
        if (dest).exists():
            shutil.rmtree(dest)
        return write_checkpoint(
            dest, plan, lambda p: by_name[p.name].to(p.dtype), config=cfg, extra_files=extra
        )
