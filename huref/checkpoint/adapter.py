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
place a reference becomes a local path), or from an explicit override. The adapter's config and
tensors are checked and planned in huref.checkpoint.adapter_plan; the merge at read time is
huref.checkpoint.adapter_merge's ``AdapterSource``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huref.checkpoint.adapter_merge import AdapterSource
from huref.checkpoint.adapter_plan import CONFIG_NAME, number, plan, read_config, strings
from huref.checkpoint.core import Checkpoint, Opener
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.vocab import load_vocab
from huref.errors import CheckpointError
from huref.paths import refuse_special, shown

WEIGHTS_NAME = "adapter_model.safetensors"


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


def open_adapter(path: str | Path, base: str | Path | None, open_checkpoint: Opener) -> Checkpoint:
    """The Checkpoint an adapter folder stands for: its base (opened with ``open_checkpoint``),
    merged with it when read.

    ``base`` overrides the adapter's ``base_model_name_or_path``.
    """

    p = Path(path)
    folder = p.parent if p.name == WEIGHTS_NAME else p
    cfg = read_config(folder)
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
    patches, merged, replaced = plan(folder, cfg, base_ckpt.source, adapter)
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
        r=int(number(cfg, "r", folder)),
        lora_alpha=number(cfg, "lora_alpha", folder),
        target_modules=strings(cfg.get("target_modules")),
        modules_to_save=strings(cfg.get("modules_to_save")),
        merged=tuple(merged),
        replaced=tuple(replaced),
    )
    vocab = load_vocab(folder) or base_ckpt.vocab
    source = AdapterSource(base_ckpt.source, adapter, patches)
    return Checkpoint(folder, "peft-adapter", source, dict(base_ckpt.config), vocab, adapter=info)
