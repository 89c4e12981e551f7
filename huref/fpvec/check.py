"""Is a downstream model derived from a vector's base? The robust invariants decide, cheaply.

The vector carries the base's robust fingerprint (all layers). The downstream model is
fingerprinted on two layers (the first and the last) and ``CHECK_N`` probe tokens only: the comparison's
monotone layer alignment already handles a suspect whose layers are a subsequence of the base's
(that is how depth-pruned models are traced), and the verdict rests on the neuron-matching test,
whose p-value for a derived model is astronomically small from a single layer (two guard against
one layer rewritten on its own). On a 7B model this reads 2 of 32 layers instead of all, so the
check costs seconds, not minutes (measured: ~4.5 s, against ~7 s for 4 layers), and holds one
layer's weights at a time. Models with post-LN placement (whose layer inputs depend on the
previous layer's norm) are fingerprinted on every layer.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from huref.arch import Model
from huref.arch.model import Binding
from huref.errors import HurefError
from huref.fpvec.vector import Vector

log = logging.getLogger(__name__)

CHECK_N = 128  # probe tokens: the first 128 of the base's keyed ranking, hence shared with it
CHECK_LAYERS = 2


def check_layers(n_layers: int, k: int = CHECK_LAYERS) -> list[int]:
    """k layers spread evenly from the first to the last (all of them when there are few)."""
    if n_layers <= k:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


def layer_view(m: Model, layers: list[int]) -> Model:
    """The same checkpoint seen as a model made of ``layers`` only (renumbered 0..k-1)."""
    if m.cfg.placement != "pre" or layers == list(range(m.cfg.n_layers)):
        return m
    v = copy.copy(m)
    v.cfg = dataclasses.replace(m.cfg, n_layers=len(layers))
    v.ckpt = dataclasses.replace(m.ckpt, _hashes={})  # identity hashes are not needed for a check
    new: dict[tuple[str, int | None], Binding] = {}
    for (role, layer), b in m._bind.items():
        if layer is None:
            new[(role, None)] = b
        elif layer in layers:
            new[(role, layers.index(layer))] = b
    v._bind = new
    v._cache = None
    return v


def compatibility(v: Vector, m: Model) -> tuple[str, float | None, float | None]:
    """(verdict, robust ICS, log10 p) of the downstream model against the vector's base fingerprint.

    A comparison that cannot be made (e.g. no probe tokens in common, as for a model without a
    tokenizer against a base with one) is 'inconclusive': nothing shows the model is derived.
    """
    from huref.invariants import Settings, compare_fingerprints, fingerprint_model

    base_fp = v.base_fingerprint()
    n = min(CHECK_N, base_fp.robust.n) if base_fp.robust is not None else CHECK_N
    view = layer_view(m, check_layers(m.cfg.n_layers))
    try:
        # no prefetch: a check reads only a few layers, and one layer less in memory keeps the
        # whole stamp under 2 GB on a 7B model
        down_fp = fingerprint_model(view, Settings(n=n, modes=("robust",), prefetch=False))
        c = compare_fingerprints(base_fp, down_fp)
    except HurefError as e:
        log.warning("cannot compare %s with the vector's base: %s", m.ckpt.path, e)
        return "inconclusive", None, None
    return c.verdict, c.ics, c.log10_p_value
