"""The memory-saving forms of the kernels give the plain formulas' values and leave inputs alone."""

from __future__ import annotations

import pytest
import torch

from huref.invariants import kernels as K


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gated", [True, False])
def test_blocked_hadamard_ffn_equals_plain_formula_over_uneven_blocks(
    gated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # d_ff = 23 over blocks of 5: four full blocks and a tail of 3, all of which must be filled
    monkeypatch.setattr(K, "FFN_BLOCK", 5)
    n, d, f = 9, 8, 23
    x, wg, wu, wd = _rand(n, d), _rand(f, d, seed=1), _rand(f, d, seed=2), _rand(d, f, seed=3)
    w_in = wg * wu if gated else wu
    want = ((x @ w_in.t()) @ wd.t()) @ x.t()
    got = K.hadamard_ffn(x, wu, wg if gated else None, wd)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_hadamard_ffn_widens_bf16_weights_exactly_like_float32_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(K, "FFN_BLOCK", 4)
    n, d, f = 6, 8, 10
    x = _rand(n, d)
    wg, wu, wd = (_rand(*s, seed=i).to(torch.bfloat16) for i, s in enumerate([(f, d), (f, d), (d, f)], 4))
    stored = [t.clone() for t in (wg, wu, wd)]
    got = K.hadamard_ffn(x, wu, wg, wd)
    assert got.dtype == torch.float32
    # bf16 -> float32 is exact, so the stored weights give what their float32 copies give
    assert torch.equal(got, K.hadamard_ffn(x, wu.float(), wg.float(), wd.float()))
    for before, after in zip(stored, (wg, wu, wd), strict=True):
        assert torch.equal(before, after) and after.dtype == torch.bfloat16


def test_in_place_steps_do_not_touch_the_arguments() -> None:
    n, d, f = 7, 6, 11
    x, wg, wu, wd = _rand(n, d), _rand(f, d, seed=7), _rand(f, d, seed=8), _rand(d, f, seed=9)
    args = [t.clone() for t in (x, wg, wu, wd)]
    h = K.ffn_hidden(x, wu, wg)
    torch.testing.assert_close(h, (x @ wg.t()) * (x @ wu.t()))
    m = K.ffn_out(h, wd, x)
    m_before = m.clone()
    s = K.standardise(m)
    assert torch.equal(m, m_before)  # standardise divides its own difference, not its input
    torch.testing.assert_close(s, (m - m.mean()) / m.std())
    for before, after in zip(args, (x, wg, wu, wd), strict=True):
        assert torch.equal(before, after)
