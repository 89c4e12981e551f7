"""The canonical stack: fixed size and cell meaning for any fingerprint, placed by token string."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from huref.encoder.canonical import (
    CHANNELS,
    GRID,
    canonical_from_terms,
    depth_weights,
    token_bucket,
    token_buckets,
)
from huref.encoder.stackstats import pair_cosine
from huref.errors import FingerprintError

pytestmark = pytest.mark.usefixtures("one_thread")


def _terms(n: int, layers: int = 4, seed: int = 0) -> torch.Tensor:
    """Low-rank standardised terms [L, 3, n, n], like real ones (a few components per matrix)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    out = torch.empty(layers, 3, n, n)
    for layer in range(layers):
        for t in range(3):
            m = x @ torch.randn(16, 16, generator=g) @ x.t()
            out[layer, t] = (m - m.mean()) / m.std()
    return out


def _strings(n: int, prefix: str = "tok") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_bucket_is_a_function_of_the_string_alone() -> None:
    strings = _strings(300)
    b = token_buckets(strings)
    assert b.shape == (300,) and int(b.min()) >= 0 and int(b.max()) < GRID
    assert token_bucket("hello") == token_bucket("hello")
    assert len({token_bucket(s) for s in ("hello", "hello ", "Hello", "hello!", "\u0120hello")}) > 1
    assert token_buckets(strings[::-1]).tolist() == b.tolist()[::-1]
    assert len(set(b.tolist())) > GRID // 2  # spread over the grid, not collapsed


def test_canonical_stack_has_fixed_shape_and_standardised_channels() -> None:
    for n, layers in ((509, 5), (96, 32)):
        stack = canonical_from_terms(_terms(n, layers), _strings(n))
        assert stack.shape == (CHANNELS, GRID, GRID)
        flat = stack.reshape(CHANNELS, -1)
        live = flat != 0
        for ch in range(CHANNELS):
            v = flat[ch][live[ch]]
            assert abs(float(v.mean())) < 1e-4 and abs(float(v.std()) - 1) < 1e-3


def test_token_order_does_not_matter() -> None:
    """Two models with the same tokenizer list their probe tokens in different id orders."""
    terms, strings = _terms(400), _strings(400)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    shuffled = terms[:, :, perm][:, :, :, perm]
    a = canonical_from_terms(terms, strings)
    b = canonical_from_terms(shuffled, [strings[i] for i in perm.tolist()])
    assert np.allclose(a, b, atol=1e-5)


def test_a_few_foreign_tokens_change_the_stack_little_and_others_a_lot() -> None:
    n = 512
    terms = _terms(n + 24)
    base = canonical_from_terms(terms[:, :, :n, :n], _strings(n))
    # vocabulary expansion: 24 new token strings enter the probe set, 24 old ones leave it
    keep = list(range(24, n + 24))
    strings = _strings(n)[24:] + _strings(24, "new")  # the terms of rows n..n+23 belong to new tokens
    expanded = canonical_from_terms(terms[:, :, keep][:, :, :, keep], strings)
    renamed = canonical_from_terms(terms[:, :, :n, :n], _strings(n, "other"))  # same numbers, other tokens
    assert pair_cosine(base, expanded) > 0.85
    assert abs(pair_cosine(base, renamed)) < 0.3


def test_depth_weights_pool_every_layer_and_pruned_models_stay_close() -> None:
    for layers in (1, 2, 3, 4, 5, 32):
        w = depth_weights(layers)
        assert np.allclose(w.sum(1), np.ones(w.shape[0]))
        assert bool((w.sum(0) > 0).all())  # no layer is ignored
    terms, strings = _terms(512, 4), _strings(512)
    base = canonical_from_terms(terms, strings)
    pruned = canonical_from_terms(terms[[0, 1, 3]], strings)  # llama-a-prune-depth keeps [0, 1, 3]
    other = canonical_from_terms(_terms(512, 4, seed=7), strings)
    assert pair_cosine(base, pruned) > 0.75
    assert pair_cosine(base, pruned) > abs(pair_cosine(base, other)) + 0.5


@pytest.mark.parametrize("bad", ["shape", "strings", "nan"])
def test_malformed_terms_are_refused(bad: str) -> None:
    terms, strings = _terms(64, 2), _strings(64)
    if bad == "shape":
        terms = terms[:, :2]
    elif bad == "strings":
        strings = strings[:-1]
    else:
        terms[0, 0, 0, 0] = float("nan")
    with pytest.raises(FingerprintError):
        canonical_from_terms(terms, strings)
