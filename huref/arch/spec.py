"""Architecture definitions as data: tensor rules, MTP blocks, llama.cpp names and ``ArchSpec``.

A family is one ``ArchSpec``: the checkpoint name of each tensor (``Rule`` templates with ``{L}``
for the layer and ``{E}`` for the expert), the roles it provides (huref.arch.roles) and how a fused
one splits into them. Only this package knows checkpoint names, fused layouts and transposes; the
resolved hyperparameters the rules test are ``ArchConfig`` (huref.arch.config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from huref.arch.config import ArchConfig
from huref.arch.roles import EXPERT_ROLES, check_role
from huref.errors import ArchitectureError

if TYPE_CHECKING:
    from huref.arch.keys import ConfigKeys


Storage = Literal["linear", "conv1d", "vector"]
Split = Literal["none", "qkv", "halves", "expert_halves", "expert_interleaved", "experts"]
EXPERT_STACKS = ("experts", "expert_halves", "expert_interleaved")
Layers = Literal["all", "dense", "sparse"]


Predicate = Callable[[ArchConfig], bool]


def always(_: ArchConfig) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor and the role or roles it provides.

    ``template`` is relative to the family's name prefix, with ``{L}`` for the layer index and
    ``{E}`` for the expert index (expert roles only; such a rule exists in sparse layers only).
    ``layers`` limits a per-layer rule to the dense or the sparse layers of an MoE config (a
    dense config has dense layers only).
    A fused tensor lists several roles and says how to split them (``split``): 'qkv' follows
    ``ArchConfig.qkv_layout``; 'halves' cuts the output dimension in two (Phi-3 gate_up).
    Two splits hold every expert of a layer in one 3-D tensor: 'experts' ([E, out, in], one
    role) and 'expert_halves' ([E, 2F, in], gate rows then up rows of each expert); a third,
    'expert_interleaved', alternates them (GPT-OSS: gate rows 0, 2, 4, ..., up rows 1, 3, 5, ...).
    With ``storage`` 'conv1d' a stack is [E, in, out] (in-features first), each expert transposed;
    with 'vector' it holds the experts' biases ([E, out]).
    Roles, storage and split are checked when the rule is made: a misspelt one is an error at
    import, not a tensor that silently binds to nothing.
    """

    template: str
    roles: tuple[str, ...]
    storage: Storage = "linear"
    split: Split = "none"
    optional: bool = False
    when: Predicate = always  # the rule exists only for configs where this holds
    layers: Layers = "all"

    def __post_init__(self) -> None:
        # stored as plain strings: the names bindings, fingerprints and caches hold are unchanged
        object.__setattr__(self, "roles", tuple(check_role(r) for r in self.roles))
        if self.storage not in get_args(Storage):
            raise ArchitectureError(f"rule {self.template!r}: unknown storage {self.storage!r}")
        if self.split not in get_args(Split):
            raise ArchitectureError(f"rule {self.template!r}: unknown split {self.split!r}")
        n_roles = {
            "none": 1,
            "halves": 2,
            "qkv": 3,
            "experts": 1,
            "expert_halves": 2,
            "expert_interleaved": 2,
        }
        want = n_roles[self.split]
        if len(self.roles) != want:
            raise ArchitectureError(
                f"rule {self.template!r}: split {self.split!r} takes {want} role(s), not {len(self.roles)}"
            )
        if self.layers not in get_args(Layers):
            raise ArchitectureError(f"rule {self.template!r}: unknown layers {self.layers!r}")
        experts = self.per_expert or self.expert_stack
        if experts != all(r in EXPERT_ROLES for r in self.roles) or (experts and not self.per_layer):
            raise ArchitectureError(
                f"rule {self.template!r}: expert roles need a per-layer template with {{E}} or an expert split"
            )
        if self.per_expert and self.split != "none":
            raise ArchitectureError(f"rule {self.template!r}: a per-expert tensor cannot be split")
        if self.layers != "all" and not self.per_layer:
            raise ArchitectureError(f"rule {self.template!r}: only a per-layer rule can be dense or sparse")

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.template

    @property
    def per_expert(self) -> bool:
        return "{E}" in self.template

    @property
    def expert_stack(self) -> bool:
        """One tensor holding every expert of a layer ([E, ...])."""
        return self.split in EXPERT_STACKS

    def applies(self, cfg: ArchConfig, layer: int | None) -> bool:
        """Whether the rule declares a tensor for ``cfg`` (in ``layer``, for a per-layer rule)."""
        if not self.when(cfg):
            return False
        if layer is None:
            return True
        sparse = self.layers == "sparse" or self.per_expert or self.expert_stack
        if sparse:
            return cfg.is_sparse(layer)
        return self.layers == "all" or not cfg.is_sparse(layer)

    def name(self, prefix: str, layer: int | None = None, expert: int | None = None) -> str:
        """The full checkpoint name of the rule's tensor in ``layer`` (and ``expert``)."""
        out = prefix + self.template
        if layer is not None:
            out = out.replace("{L}", str(layer))
        return out if expert is None else out.replace("{E}", str(expert))


# the sizes an MTP block's own tensors are declared in (MTPRules.tensors)
MTP_SIZES: dict[str, Callable[[ArchConfig], int]] = {
    "d": lambda c: c.d_model,
    "2d": lambda c: 2 * c.d_model,
    "V": lambda c: c.vocab_size,
}


@dataclass(frozen=True)
class MTPRules:
    """The multi-token-prediction (MTP) blocks a release may store after its main layers
    (DeepSeek-V3's ``num_nextn_predict_layers``): block k is layer ``n_layers + k``.

    A block holds a decoder layer built like the last main layer (the family's per-layer rules,
    under the block's index) and its own tensors, listed here as templates relative to the
    family's prefix, ``{L}`` for the block's layer, with their canonical shapes in ``MTP_SIZES``
    names. The block predicts a token further ahead from the main model's last hidden state; the
    next-token function never reads it, so huref claims its tensors and fingerprints none.
    ``count`` names the ``ArchConfig.extra`` entry holding the configured number of blocks.
    """

    count: str
    tensors: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        for template, shape in self.tensors:
            if template.count("{L}") != 1 or "{E}" in template:
                raise ArchitectureError(f"MTP tensor {template!r} must hold {{L}} once and no {{E}}")
            if unknown := [s for s in shape if s not in MTP_SIZES]:
                raise ArchitectureError(f"MTP tensor {template!r}: unknown size(s) {', '.join(unknown)}")

    def blocks(self, cfg: ArchConfig) -> int:
        """The configured number of MTP blocks (0 for a config without them)."""
        return int(cfg.extra.get(self.count) or 0)

    def own_shapes(self, cfg: ArchConfig) -> list[tuple[str, tuple[int, ...]]]:
        """(template, shape config.json implies) of each of a block's own tensors."""
        return [(t, tuple(MTP_SIZES[s](cfg) for s in shape)) for t, shape in self.tensors]


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp ``general.architecture`` read as a member of a family."""

    name: str  # e.g. "qwen2"
    model_type: str  # the Hugging Face model_type it stands for
    hf_class: str  # the Hugging Face architecture class written into the synthesised config
    rotary_interleaved: bool  # llama.cpp's converter reorders q/k rows (LLaMA arch only)
    # the model_type and class a file of this architecture with an ``expert_count`` stands for
    # (llama.cpp writes Mixtral as arch "llama" with experts)
    moe_model_type: str | None = None
    moe_hf_class: str | None = None
    # whether llama.cpp renormalises the chosen experts' weights when the file does not say
    # (``expert_weights_norm``): its Qwen3-MoE graph does, its Qwen2-MoE graph does not
    moe_renormalise: bool = False


@dataclass(frozen=True, eq=False)
class GGUFNames:
    """llama.cpp's names for a family, beside its definition (the gguf-py habit): which GGUF
    architectures it reads, and each GGUF tensor name (``{L}`` for the layer) with its role."""

    archs: tuple[GGUFArch, ...]
    tensors: Mapping[str, str]  # GGUF tensor name -> role
    ignored: tuple[str, ...] = ()  # GGUF tensors that hold nothing huref uses (rotary tables)

    def __post_init__(self) -> None:
        roles = list(self.tensors.values())
        if doubled := sorted({r for r in roles if roles.count(r) > 1}):
            raise ArchitectureError(f"GGUF names give the role(s) {', '.join(doubled)} twice")
        for name, role in self.tensors.items():
            check_role(role)
            if name.count("{L}") > 1:
                raise ArchitectureError(f"GGUF name {name!r} holds {{L}} more than once")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture family as data."""

    name: str
    model_types: tuple[str, ...]
    prefixes: tuple[str, ...]  # name prefixes tried in order, e.g. ("model.", "")
    rules: tuple[Rule, ...]
    keys: ConfigKeys  # which config.json keys give each hyperparameter (huref.arch.keys)
    ignored: tuple[str, ...] = ()  # regexes of full names of parameters we do not use (e.g. a pooler)
    buffers: tuple[str, ...] = ()  # regexes of full names of stored buffers: masks, rotary tables, ids
    outside_prefix: tuple[Rule, ...] = ()  # rules whose template is a full name (e.g. lm_head)
    gguf: GGUFNames | None = None  # llama.cpp names, for families that GGUF files are read as
    mtp: MTPRules | None = None  # multi-token-prediction blocks stored after the main layers
    notes: str = ""

    def __post_init__(self) -> None:
        if self.gguf is not None:
            self.gguf_names()  # every GGUF name must land on a tensor of the definition

    def read_config(self, config: dict[str, Any]) -> ArchConfig:
        """The config as an ``ArchConfig``; every value checked (huref.arch.keys)."""
        return self.keys.read(config, self.name)

    def roles(self) -> list[str]:
        """Every role some checkpoint of the family can provide, biases included."""
        return sorted({r for rule in (*self.rules, *self.outside_prefix) for r in rule.roles})

    def template_for(self, role: str, cfg: ArchConfig | None = None) -> str:
        """The full checkpoint name (``{L}`` for the layer, ``{E}`` for the expert) of the first
        rule that stores ``role`` alone (one expert's tensor, not a stack), among those that apply
        to ``cfg`` when given: the family's plain layout, used to name tensors read from other
        formats (Mixtral's and Qwen-MoE's routers are named apart)."""
        for rule, prefix in [(r, self.prefixes[0]) for r in self.rules] + [
            (r, "") for r in self.outside_prefix
        ]:
            if rule.roles == (role,) and not rule.expert_stack and (cfg is None or rule.when(cfg)):
                return prefix + rule.template
        raise ArchitectureError(f"the {self.name} definition stores no tensor of role {role!r} alone")

    def gguf_names(self, cfg: ArchConfig | None = None) -> dict[str, tuple[str, str]]:
        """GGUF tensor name -> (checkpoint name, role), both with ``{L}`` for the layer (and the
        checkpoint name of an expert role with ``{E}``: GGUF stacks a layer's experts). With
        ``cfg``, only the roles some rule stores for it: a GGUF tensor of any other role is then
        not understood, and refused."""
        out: dict[str, tuple[str, str]] = {}
        for gguf_name, role in self.gguf.tensors.items() if self.gguf else ():
            try:
                name = self.template_for(role, cfg)
            except ArchitectureError:
                if cfg is None:
                    raise
                continue
            if ("{L}" in name) != ("{L}" in gguf_name):
                raise ArchitectureError(f"GGUF name {gguf_name!r} and {name!r} disagree on {{L}}")
            out[gguf_name] = (name, role)
        return out
