"""The invariant kernels against explicit computations, and their invariances on random weights."""

from __future__ import annotations

import pytest
import torch

from huref.errors import FingerprintError
from huref.invariants import kernels as K
from huref.invariants.similarity import monotone_alignment


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_attn_qk_equals_explicit_gqa_head_sum() -> None:
    n, d, H, KV, hd = 7, 16, 4, 2, 4
    x, wq, wk = _rand(n, d), _rand(H * hd, d, seed=1), _rand(KV * hd, d, seed=2)
    want = torch.zeros(n, n, dtype=torch.float64)
    for h in range(H):
        g = h // (H // KV)  # the KV head that repeat_kv gives query head h
        want += (x @ wq[h * hd : (h + 1) * hd].t()) @ (x @ wk[g * hd : (g + 1) * hd].t()).t()
    torch.testing.assert_close(K.attn_qk(x, x, wq, wk, H, KV, hd), want)


def test_attn_vo_equals_explicit_gqa_head_sum() -> None:
    n, d, H, KV, hd = 5, 12, 6, 3, 2
    x, wv, wo = _rand(n, d), _rand(KV * hd, d, seed=3), _rand(d, H * hd, seed=4)
    want = torch.zeros(n, n, dtype=torch.float64)
    for h in range(H):
        g = h // (H // KV)
        want += (x @ wv[g * hd : (g + 1) * hd].t()) @ wo[:, h * hd : (h + 1) * hd].t() @ x.t()
    torch.testing.assert_close(K.attn_vo(x, x, wv, wo, H, KV, hd), want)


def test_paper_hadamard_ffn_is_elementwise_product_of_weights() -> None:
    n, d, f = 6, 8, 10
    x, wg, wu, wd = _rand(n, d), _rand(f, d, seed=5), _rand(f, d, seed=6), _rand(d, f, seed=7)
    # paper convention: W = weight^T, M_f = X (W_gate ⊙ W_up) W_down X^T
    want = x @ (wg.t() * wu.t()) @ wd.t() @ x.t()
    torch.testing.assert_close(K.hadamard_ffn(x, wu, wg, wd), want)


def test_robust_ffn_invariant_to_neuron_permutation_and_updown_scaling() -> None:
    n, d, f = 9, 8, 12
    x, wg, wu, wd = _rand(n, d), _rand(f, d, seed=8), _rand(f, d, seed=9), _rand(d, f, seed=10)
    p = torch.randperm(f, generator=torch.Generator().manual_seed(0))
    c = torch.exp(_rand(f, seed=11))
    f0 = K.ffn_out(K.ffn_hidden(x, wu, wg), wd, x)
    f1 = K.ffn_out(K.ffn_hidden(x, wu[p] * c[p, None], wg[p]), wd[:, p] / c[None, p], x)
    torch.testing.assert_close(f0, f1)


def test_robust_attention_invariant_to_orthogonal_residual_rotation() -> None:
    n, d, H, hd = 6, 8, 2, 4
    x, wq, wk = _rand(n, d), _rand(H * hd, d, seed=12), _rand(H * hd, d, seed=13)
    q, _ = torch.linalg.qr(_rand(d, d, seed=14))
    a0 = K.attn_qk(x, x, wq, wk, H, H, hd)
    a1 = K.attn_qk(x @ q, x @ q, wq @ q, wk @ q, H, H, hd)  # stream rotated, readers follow
    torch.testing.assert_close(a0, a1)


def test_standardise_gives_zero_mean_unit_std() -> None:
    m = K.standardise(_rand(30, 30) * 5 + 3)
    assert abs(float(m.mean())) < 1e-5 and abs(float(m.std()) - 1) < 1e-5


def test_monotone_alignment_refuses_nan_similarities() -> None:
    """A NaN never wins a comparison, so the trace-back used to walk off the matrix (IndexError)."""
    s = torch.tensor([[90.0, 10.0, 5.0], [10.0, float("nan"), 20.0]])
    with pytest.raises(FingerprintError, match="NaN or infinite"):
        monotone_alignment(s)
    assert [(a, b) for a, b, _ in monotone_alignment(torch.nan_to_num(s))] == [(0, 0), (1, 2)]
