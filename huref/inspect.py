"""What a checkpoint is: architecture, roles, shapes, dtypes, size, tokenizer, file hashes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from huref.arch import load_model


def inspect_checkpoint(path: str | Path, hashes: bool = True) -> dict[str, Any]:
    """A JSON-ready description of one checkpoint (reads headers, and weight files for hashes)."""
    m = load_model(path)
    src = m.ckpt.source
    cfg = m.cfg
    dtypes = Counter(src.info(n).dtype for n in src.names())
    layer0 = {r: list(m_shape) for r in m.roles(0) for m_shape in [_role_shape(m, r, 0)]}
    glob = {r: list(_role_shape(m, r, None)) for r in m.roles(None)}
    return {
        "path": str(Path(path)),
        "format": m.ckpt.format,
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
        },
        "roles": {"global": glob, "layer_0": layer0},
        "tensors": len(src.names()),
        "dtypes": dict(dtypes),
        "parameters": m.parameter_count(),
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
    from huref.arch.model import _expected_shapes

    return _expected_shapes(m.cfg).get(role, tuple(shape))
