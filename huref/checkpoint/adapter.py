"""PEFT LoRA and DoRA adapters read as the models they make, merged tensor by tensor when read.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``; the model it
stands for is its base with every targeted weight replaced by the merged weight (in the base's
storage orientation, ``fan_in_fan_out`` = stored [in, out] as GPT-2's Conv1D does):

    linear     W' = W + s * B @ A              (fan_in_fan_out: W' = W + s * (B @ A)^T)
    embedding  W' = W + s * (B_e @ A_e)^T      (A_e [r, vocab], B_e [dim, r])
    s          = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (per-module alpha_pattern
                 and rank_pattern overrides)
    DoRA       W' = (m / ||W + s B A||) * (W + s B A), the norm taken per output feature of a
               linear layer and per embedding dimension (over the vocabulary) of an embedding

Tensors the adapter stores whole (``modules_to_save`` such as lm_head, and an embedding's
``base_layer.weight``) replace the base's. Nothing is merged up front: ``read`` merges one
tensor, ``read_rows`` merges only the rows asked for (a DoRA norm that spans rows is computed
once per tensor and kept, one vector), so peak memory stays one tensor as for any source.

The base comes from ``base_model_name_or_path`` through ``resolve_base_reference`` (the one
place a reference becomes a local path), or from an explicit override.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huref.checkpoint.core import Checkpoint, Opener
from huref.checkpoint.files import read_json
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.source import BufferPool, TensorInfo, TensorSource, check_rows
from huref.checkpoint.vocab import load_vocab
from huref.errors import CheckpointError
from huref.paths import refuse_special, shown

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# Pattern keys (alpha_pattern, rank_pattern) come from a file: bounded, and without groups or
# brace quantifiers, so no nested quantifier can make a match backtrack exponentially.
MAX_PATTERN_CHARS = 256
MAX_PATTERNS = 4096
_SAFE_PATTERN = re.compile(rf"[^(){{}}]{{1,{MAX_PATTERN_CHARS}}}")
# Adapter settings that change the model in ways a per-tensor merge cannot express.
_UNSUPPORTED = {
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token indices",
    "lora_bias": "LoRA biases",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA",
}


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter checkpoint is: recorded in fingerprints' model names and in reports."""

    name: str  # the adapter folder's name
    path: str
    base_name: str
    base_path: str
    base_format: str
    base_reference: str | None  # base_model_name_or_path as written in adapter_config.json
    base_from: str  # "adapter_config.json" or "override"
    variant: str  # "LoRA" or "DoRA"
    rslora: bool
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]
    merged: tuple[str, ...]  # base tensors the adapter changes by a low-rank update
    replaced: tuple[str, ...]  # base tensors the adapter stores whole

    @property
    def display_name(self) -> str:
        return f"{self.name} ({self.variant} adapter on {self.base_name})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "base": {
                "name": self.base_name,
                "path": self.base_path,
                "format": self.base_format,
                "reference": self.base_reference,
                "from": self.base_from,
            },
            "variant": self.variant,
            "rslora": self.rslora,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "modules_to_save": list(self.modules_to_save),
            "merged_tensors": len(self.merged),
            "replaced_tensors": len(self.replaced),
        }


@dataclass(frozen=True)
class Patch:
    """How one base tensor becomes its merged self.

    ``u`` [rows, r] and ``v`` [r, cols] are adapter tensor names whose product, times ``scale``,
    is the update in the base's storage orientation (``u_t``/``v_t``: transpose the stored
    factor first). ``norm_axis`` is where DoRA's norm runs: 1 = across each row (one magnitude
    per stored row), 0 = down each column (one per stored column).
    """

    u: str | None = None
    v: str | None = None
    u_t: bool = False
    v_t: bool = False
    scale: float = 1.0
    magnitude: str | None = None
    norm_axis: int = 1
    replaced_by: str | None = None  # an adapter tensor that stands in for the base tensor


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter folder (or the adapter weights file inside one)."""
    p = Path(path)
    folder = p.parent if p.name == WEIGHTS_NAME else p
    return folder.is_dir() and (folder / CONFIG_NAME).is_file()


def resolve_base_reference(reference: str, adapter_dir: Path) -> Path:
    """The local checkpoint an adapter's ``base_model_name_or_path`` names.

    Every base reference goes through here. A relative path is tried beside the adapter folder
    first (bundles that ship adapter and base together), then from the working directory; a
    reference that is no local path but a Hugging Face repository id (``owner/name[@rev]``, as
    peft writes for hub bases) is returned as it is, and ``open_checkpoint`` reads it from the hub.
    """
    from huref.checkpoint.hub import parse_repo_id

    ref = Path(reference).expanduser()
    tries = [ref] if ref.is_absolute() else [adapter_dir.parent / ref, adapter_dir / ref, ref]
    for t in tries:
        if t.exists():
            return t
    if parse_repo_id(reference) is not None:
        return Path(reference)
    raise CheckpointError(
        f"{shown(adapter_dir)}: the adapter's base {shown(reference)!r} (base_model_name_or_path) "
        "is not a local checkpoint; give the base explicitly (--adapter-base PATH)"
    )


def _read_config(folder: Path) -> dict[str, Any]:
    cfg = read_json(folder / CONFIG_NAME, CONFIG_NAME)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{shown(folder / CONFIG_NAME)}: not a JSON object")
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(
            f"{shown(folder)}: a {shown(peft_type)} adapter; huref reads LoRA and DoRA adapters only"
        )
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key) not in (None, False, [], {}):
            raise CheckpointError(f"{shown(folder)}: an adapter with {what} ({key}) is not supported")
    return cfg


def _number(cfg: dict[str, Any], key: str, folder: Path, positive: bool = True) -> float:
    v = cfg.get(key)
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or (positive and v <= 0)
    ):
        raise CheckpointError(f"{shown(folder)}: {CONFIG_NAME} has an unusable {key} ({shown(v)})")
    return float(v)


def _patterns(cfg: dict[str, Any], key: str, folder: Path) -> dict[str, float]:
    raw = cfg.get(key) or {}
    if not isinstance(raw, dict) or len(raw) > MAX_PATTERNS:
        raise CheckpointError(f"{shown(folder)}: {CONFIG_NAME} has an unusable {key}")
    out: dict[str, float] = {}
    for k in raw:
        if not isinstance(k, str) or not _SAFE_PATTERN.fullmatch(k):
            raise CheckpointError(
                f"{shown(folder)}: {key} key {shown(k)!r} is not supported (at most {MAX_PATTERN_CHARS} "
                "characters, no groups or brace quantifiers)"
            )
        try:
            re.compile(k)
        except re.error:
            raise CheckpointError(f"{shown(folder)}: {key} key {shown(k)!r} is not a valid pattern") from None
        out[k] = _number(raw, k, folder)
    return out


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """PEFT's rule: the first pattern that matches the module's name at a dot boundary, to its end."""
    for k, v in patterns.items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return default


def _strings(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return tuple(str(x) for x in v)
    return ()


@dataclass
class _Pieces:
    a: str | None = None
    b: str | None = None
    magnitude: str | None = None
    embedding: bool = False
    base_layer: str | None = None
    extra: list[str] = field(default_factory=list)


def _split(adapter_names: Sequence[str], folder: Path) -> tuple[dict[str, _Pieces], dict[str, str]]:
    """Adapter tensor names -> low-rank pieces per module, and whole tensors per base name."""
    modules: dict[str, _Pieces] = {}
    whole: dict[str, str] = {}
    for name in adapter_names:
        key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
        for suffix, attr, emb in (
            (".lora_A.weight", "a", False),
            (".lora_B.weight", "b", False),
            (".lora_embedding_A", "a", True),
            (".lora_embedding_B", "b", True),
            (".lora_magnitude_vector.weight", "magnitude", None),
            (".lora_magnitude_vector", "magnitude", None),
        ):
            if key.endswith(suffix):
                p = modules.setdefault(key[: -len(suffix)], _Pieces())
                setattr(p, attr, name)
                if emb:
                    p.embedding = True
                break
        else:
            if ".lora_" in key:
                raise CheckpointError(f"{shown(folder)}: unsupported adapter tensor {shown(name)!r}")
            whole[key.replace(".base_layer.", ".")] = name
    return modules, whole


class AdapterSource:
    """A base TensorSource with an adapter merged into it, one tensor at a time when read."""

    def __init__(self, base: TensorSource, adapter: SafetensorsSource, patches: dict[str, Patch]) -> None:
        self.base = base
        self.adapter = adapter
        self.patches = patches
        self._norms: dict[str, torch.Tensor] = {}  # DoRA column norms of row-read tensors

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        p = self.patches.get(name)
        if p is not None and p.replaced_by is not None and p.u is None:
            return self.adapter.info(p.replaced_by)
        return self.base.info(name)

    def _factor(self, name: str, transpose: bool) -> torch.Tensor:
        t = self.adapter.read(name).float()
        return t.T if transpose else t

    def _weight(self, name: str, p: Patch, pool: BufferPool | None = None) -> torch.Tensor:
        return self.adapter.read(p.replaced_by) if p.replaced_by else self.base.read(name, pool)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        p = self.patches.get(name)
        if p is None:
            return self.base.read(name, pool)
        w = self._weight(name, p)
        if p.u is None or p.v is None:
            return w
        assert p.u is not None and p.v is not None
        merged = w.float() + p.scale * (self._factor(p.u, p.u_t) @ self._factor(p.v, p.v_t))  # [rows, cols]
        if p.magnitude is not None:
            merged = merged * self._dora_factor(p, merged)
        return merged.to(w.dtype)

    def _dora_factor(self, p: Patch, merged: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
        """m / ||W + s B A||, shaped to broadcast over the stored tensor (or those of its ``rows``)."""
        assert p.magnitude is not None
        m = self.adapter.read(p.magnitude).float()
        if rows is not None:
            m = m[list(rows)]
        norm = torch.linalg.vector_norm(merged, dim=p.norm_axis)
        f = m / norm
        return f[:, None] if p.norm_axis == 1 else f[None, :]

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        p = self.patches.get(name)
        if p is None:
            return self.base.read_rows(name, rows)
        w = self.adapter.read_rows(p.replaced_by, rows) if p.replaced_by else self.base.read_rows(name, rows)
        if p.u is None or p.v is None:
            return w
        check_rows(rows, self.info(name).shape, name)
        u = self._factor(p.u, p.u_t)[list(rows)]  # [len(rows), r]
        merged = w.float() + p.scale * (u @ self._factor(p.v, p.v_t))
        if p.magnitude is not None:
            if p.norm_axis == 1:  # one norm per row: the rows asked for carry their own
                merged = merged * self._dora_factor(p, merged, rows)
            else:  # norms down whole columns: computed once from the full tensor, then kept
                if name not in self._norms:
                    full = self._weight(name, p).float() + p.scale * (
                        self._factor(p.u, p.u_t) @ self._factor(p.v, p.v_t)
                    )
                    self._norms[name] = torch.linalg.vector_norm(full, dim=0)
                m = self.adapter.read(p.magnitude).float()
                merged = merged * (m / self._norms[name])[None, :]
        return merged.to(w.dtype)

    def weight_files(self) -> list[Path]:
        return [*self.adapter.weight_files(), *self.base.weight_files()]

    def metadata(self) -> dict[str, str]:
        return self.base.metadata()


def _plan(
    folder: Path, cfg: dict[str, Any], base: TensorSource, adapter: SafetensorsSource
) -> tuple[dict[str, Patch], list[str], list[str]]:
    """Patches per base tensor, checked against the base's shapes; (patches, merged, replaced)."""
    r_default = _number(cfg, "r", folder)
    alpha_default = _number(cfg, "lora_alpha", folder)
    rank_pat = _patterns(cfg, "rank_pattern", folder)
    alpha_pat = _patterns(cfg, "alpha_pattern", folder)
    rslora = bool(cfg.get("use_rslora"))
    fif_flag = bool(cfg.get("fan_in_fan_out"))
    base_names = set(base.names())
    modules, whole = _split(adapter.names(), folder)
    patches: dict[str, Patch] = {}
    for key, src in whole.items():
        if key not in base_names:
            raise CheckpointError(
                f"{shown(folder)}: the adapter replaces {shown(key)!r}, which the base does not have"
            )
        bs, ws = base.info(key).shape, adapter.info(src).shape
        if bs != ws:
            raise CheckpointError(
                f"{shown(folder)}: the adapter's {shown(key)!r} has shape {list(ws)}, the base's {list(bs)}: "
                "it does not fit the base (nor are resized vocabularies supported)"
            )
        patches[key] = Patch(replaced_by=src)
    merged: list[str] = []
    for module, pc in sorted(modules.items()):
        target = f"{module}.weight"
        if pc.a is None or pc.b is None:
            raise CheckpointError(f"{shown(folder)}: module {shown(module)!r} has only half of its LoRA pair")
        if target not in base_names:
            raise CheckpointError(
                f"{shown(folder)}: the adapter targets {shown(module)!r}, but the base has no tensor "
                f"{shown(target)!r} (wrong base?)"
            )
        a, b = adapter.info(pc.a).shape, adapter.info(pc.b).shape
        w = base.info(target).shape
        r = int(_pattern_value(rank_pat, module, r_default))
        alpha = _pattern_value(alpha_pat, module, alpha_default)
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        if len(a) != 2 or len(b) != 2 or len(w) != 2:
            raise CheckpointError(f"{shown(folder)}: module {shown(module)!r} is not a 2-D weight")
        if pc.embedding:  # A_e [r, vocab], B_e [dim, r]: update (B_e A_e)^T = A_e^T B_e^T
            fit = a[0] == b[1] == r and w == (a[1], b[0])
            patch = Patch(pc.a, pc.b, True, True, scale, pc.magnitude, 0)
            features = w[1]
        else:  # A [r, in], B [out, r]: W [out, in], or [in, out] when stored fan-in first
            plain, flipped = w == (b[0], a[1]), w == (a[1], b[0])
            fif = flipped and (not plain or fif_flag)
            fit = a[0] == b[1] == r and (plain or flipped)
            patch = (
                Patch(pc.a, pc.b, True, True, scale, pc.magnitude, 0)
                if fif
                else Patch(pc.b, pc.a, False, False, scale, pc.magnitude, 1)
            )
            features = b[0]
        if not fit:
            raise CheckpointError(
                f"{shown(folder)}: module {shown(module)!r} does not fit the base: LoRA A {list(a)}, "
                f"B {list(b)} (r {r}) against base weight {list(w)}"
            )
        if pc.magnitude is not None and adapter.info(pc.magnitude).shape != (features,):
            raise CheckpointError(
                f"{shown(folder)}: module {shown(module)!r}: DoRA magnitude of shape "
                f"{list(adapter.info(pc.magnitude).shape)} for {features} features"
            )
        prev = patches.get(target)
        patches[target] = Patch(
            patch.u,
            patch.v,
            patch.u_t,
            patch.v_t,
            patch.scale,
            patch.magnitude,
            patch.norm_axis,
            prev.replaced_by if prev else None,
        )
        merged.append(target)
    replaced = [k for k in whole if k not in merged]
    if not merged and not replaced:
        raise CheckpointError(f"{shown(folder)}: the adapter holds no tensors")
    return patches, merged, replaced


def open_adapter(path: str | Path, base: str | Path | None, open_checkpoint: Opener) -> Checkpoint:
    """The Checkpoint an adapter folder stands for: its base (opened with ``open_checkpoint``),
    merged with it when read.

    ``base`` overrides the adapter's ``base_model_name_or_path``.
    """

    p = Path(path)
    folder = p.parent if p.name == WEIGHTS_NAME else p
    cfg = _read_config(folder)
    weights = folder / WEIGHTS_NAME
    refuse_special(weights, "adapter weights", CheckpointError)
    if not weights.is_file():
        found = "adapter_model.bin (pickle; not read)" if (folder / "adapter_model.bin").exists() else "none"
        raise CheckpointError(f"{shown(folder)}: no {WEIGHTS_NAME} beside {CONFIG_NAME} (found: {found})")
    reference = cfg.get("base_model_name_or_path")
    if base is not None:
        base_path, base_from = Path(base), "override"
    elif isinstance(reference, str) and reference:
        base_path, base_from = resolve_base_reference(reference, folder), CONFIG_NAME
    else:
        raise CheckpointError(
            f"{shown(folder)}: the adapter names no base (base_model_name_or_path); give --adapter-base PATH"
        )
    if is_adapter_folder(base_path):
        raise CheckpointError(
            f"{shown(folder)}: its base {shown(base_path)} is itself an adapter; merge that one first"
        )
    try:
        base_ckpt = open_checkpoint(base_path)
    except CheckpointError as e:
        raise CheckpointError(f"{shown(folder)}: cannot open the adapter's base: {e}") from None
    adapter = SafetensorsSource([weights])
    patches, merged, replaced = _plan(folder, cfg, base_ckpt.source, adapter)
    info = AdapterInfo(
        name=folder.name,
        path=str(folder),
        base_name=base_ckpt.name,
        base_path=str(base_ckpt.path),
        base_format=base_ckpt.format,
        base_reference=reference if isinstance(reference, str) else None,
        base_from=base_from,
        variant="DoRA" if any(pt.magnitude for pt in patches.values()) else "LoRA",
        rslora=bool(cfg.get("use_rslora")),
        r=int(_number(cfg, "r", folder)),
        lora_alpha=_number(cfg, "lora_alpha", folder),
        target_modules=_strings(cfg.get("target_modules")),
        modules_to_save=_strings(cfg.get("modules_to_save")),
        merged=tuple(merged),
        replaced=tuple(replaced),
    )
    vocab = load_vocab(folder) or base_ckpt.vocab
    source = AdapterSource(base_ckpt.source, adapter, patches)
    return Checkpoint(folder, "peft-adapter", source, dict(base_ckpt.config), vocab, adapter=info)
