"""What a checkpoint is: architecture, roles, shapes, dtypes, size, tokenizer, file hashes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from huref.arch import Model, load_model
from huref.checkpoint import open_checkpoint
from huref.checkpoint.source import all_finite
from huref.errors import ArchitectureError


def non_finite_tensors(m: Model) -> list[str]:
    """Checkpoint names of the role tensors that hold NaN or infinite values.

    Tensors are read one at a time in their stored dtype (no float32 copy), so the cost is one
    read of the weights plus one summation, and peak memory is one tensor; tensors no role uses
    are not read.
    """
    names: dict[str, None] = {}  # ordered set: a fused tensor serves several roles
    for layer in [None, *range(m.cfg.n_layers)]:
        for role in m.roles(layer):
            names[m.binding(role, layer).name] = None
        if layer is not None:  # every expert of a sparse layer (a stacked tensor once)
            for role in m.expert_roles(layer):
                for e in range(m.n_experts(layer)):
                    names[m.binding(role, layer, e).name] = None
    bad = []
    for name in names:
        t = m.ckpt.source.read(name)
        if not all_finite(t):
            bad.append(name)
    return bad


def inspect_checkpoint(
    path: str | Path, hashes: bool = True, check_values: bool = False, adapter_base: str | Path | None = None
) -> dict[str, Any]:
    """A JSON-ready description of one checkpoint (reads headers, and weight files for hashes).

    ``check_values`` also reads every role tensor and raises ArchitectureError naming those that
    hold NaN or infinite values; it is off by default because it reads the whole model again.
    ``adapter_base``: the base of a PEFT adapter folder, instead of the one its config names.
    """
    m = load_model(open_checkpoint(path, adapter_base) if adapter_base is not None else path)
    if check_values:
        bad = non_finite_tensors(m)
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ArchitectureError(
                f"{path}: NaN or infinite values in {len(bad)} tensor(s): {', '.join(bad[:5])}{more}"
            )
    src = m.ckpt.source
    cfg = m.cfg
    dtypes = Counter(src.info(n).dtype for n in src.names())
    layer0 = {r: list(m_shape) for r in m.roles(0) for m_shape in [_role_shape(m, r, 0)]}
    glob = {r: list(_role_shape(m, r, None)) for r in m.roles(None)}
    return {
        "path": str(Path(path)),
        "format": m.ckpt.format,
        "adapter": None if m.ckpt.adapter is None else m.ckpt.adapter.to_json(),
        "quantization": src.describe() if hasattr(src, "describe") else None,  # e.g. "gptq 4-bit, group 128"
        "architecture": m.spec.name,
        "model_type": cfg.model_type,
        "config": {
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "d_ff": cfg.d_ff,
            "vocab_size": cfg.vocab_size,
            "norm": cfg.norm,
            "placement": cfg.placement,
            "parallel": cfg.parallel,
            "gated_mlp": cfg.gated,
            "activation": cfg.activation,
            "tied_embeddings": cfg.tied,
            "positions": cfg.positions,
            "qkv_layout": cfg.qkv_layout,
            "moe": m.moe_summary(),  # None for a dense model
            # multi-token-prediction blocks stored after the main layers (DeepSeek-V3): claimed,
            # not part of the next-token function, read by no invariant
            "mtp_layers": m.mtp_layers,
        },
        "mtp_tensors": len(m.mtp_tensors),
        "roles": {"global": glob, "layer_0": layer0},
        "tensors": len(src.names()),
        "dtypes": dict(dtypes),
        "parameters": m.parameter_count(),
        "values_checked": check_values,
        "tokenizer": None
        if m.ckpt.vocab is None
        else {"size": len(m.ckpt.vocab), "style": m.ckpt.vocab.style, "special": len(m.ckpt.vocab.special)},
        "files": [
            {"name": p.name, "bytes": p.stat().st_size, **({"sha256": h} if hashes else {})}
            for p, h in zip(m.ckpt.weight_files(), _hashes(m, hashes), strict=True)
        ],
    }


def _hashes(m: Any, on: bool) -> list[str | None]:
    if not on:
        return [None] * len(m.ckpt.weight_files())
    sums = m.ckpt.sha256s()
    return [sums[p.name] for p in m.ckpt.weight_files()]


def _role_shape(m: Any, role: str, layer: int | None) -> tuple[int, ...]:
    """Shape of a role from headers alone (fused parents are split arithmetically, not read)."""
    b = m.binding(role, layer)
    info = m.ckpt.source.info(b.name)
    shape = info.shape[::-1] if b.rule.storage == "conv1d" else info.shape
    if len(b.rule.roles) == 1:
        return tuple(shape)
    from huref.arch.shapes import expected_shapes

    return expected_shapes(m.cfg).get(role, tuple(shape))
