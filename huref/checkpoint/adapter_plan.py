"""Which base tensors a PEFT adapter changes, and how: the plan of an adapter's merge.

``adapter_config.json`` is read and checked (LoRA and DoRA only; settings a per-tensor merge
cannot express are refused, and ``alpha_pattern``/``rank_pattern`` keys are bounded patterns), the
adapter's tensor names are sorted into LoRA pieces per module and tensors stored whole, and every
piece is checked against the base's shapes before a ``Patch`` is made for its base tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from huref.checkpoint.adapter_merge import Patch
from huref.checkpoint.files import read_json
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.source import TensorSource
from huref.errors import CheckpointError
from huref.paths import shown

CONFIG_NAME = "adapter_config.json"
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


def read_config(folder: Path) -> dict[str, Any]:
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


def number(cfg: dict[str, Any], key: str, folder: Path, positive: bool = True) -> float:
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
        out[k] = number(raw, k, folder)
    return out


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """PEFT's rule: the first pattern that matches the module's name at a dot boundary, to its end."""
    for k, v in patterns.items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return default


def strings(v: Any) -> tuple[str, ...]:
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


def plan(
    folder: Path, cfg: dict[str, Any], base: TensorSource, adapter: SafetensorsSource
) -> tuple[dict[str, Patch], list[str], list[str]]:
    """Patches per base tensor, checked against the base's shapes; (patches, merged, replaced)."""
    r_default = number(cfg, "r", folder)
    alpha_default = number(cfg, "lora_alpha", folder)
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
        patches[target] = replace(patch, replaced_by=prev.replaced_by if prev else None)
        merged.append(target)
    replaced = [k for k in whole if k not in merged]
    if not merged and not replaced:
        raise CheckpointError(f"{shown(folder)}: the adapter holds no tensors")
    return patches, merged, replaced
