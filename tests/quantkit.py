"""Writing quantized releases of the tiny zoo's llama-a, shared by the quantized-format tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_linear(name: str) -> bool:
    """A weight a quantized release stores quantized (the layers' linear projections)."""
    return name.endswith(".weight") and name.split(".")[-2] in LINEARS


def write_release(zoo: Path, dst: Path, tensors: dict[str, torch.Tensor], qcfg: dict) -> Path:
    """llama-a's folder with ``tensors`` as its weights and ``qcfg`` as its quantization_config."""
    dst.mkdir()
    for f in (zoo / "llama-a").iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, dst / f.name)
    cfg = json.loads((zoo / "llama-a" / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"))
    return dst


def mutate(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor], dict], None]) -> Path:
    """A copy of release ``src`` whose tensors and config ``edit`` changes in place."""
    shutil.copytree(src, dst)
    t = load_file(str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    edit(t, cfg)
    save_file(t, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst
