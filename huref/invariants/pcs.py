"""Parameter cosine similarity: all parameters matched by name and shape, streamed."""

from __future__ import annotations

from huref.checkpoint import Checkpoint

MIN_MATCHED_FRACTION = 0.5


def parameter_cosine(a: Checkpoint, b: Checkpoint) -> float | None:
    """100 x cosine of the concatenated matched parameters, or None when fewer than half of
    A's parameters have a same-name, same-shape partner (the models' shapes differ)."""
    names_b = set(b.source.names())
    total = sum(a.source.info(n).numel for n in a.source.names())
    dot = na = nb = 0.0
    matched = 0
    for name in a.source.names():
        if name not in names_b:
            continue
        ia, ib = a.source.info(name), b.source.info(name)
        if ia.shape != ib.shape:
            continue
        ta = a.source.read(name).double().flatten()
        tb = b.source.read(name).double().flatten()
        dot += float(ta @ tb)
        na += float(ta @ ta)
        nb += float(tb @ tb)
        matched += ia.numel
    if total == 0 or matched < MIN_MATCHED_FRACTION * total or na == 0 or nb == 0:
        return None
    return 100.0 * dot / (na**0.5 * nb**0.5)
