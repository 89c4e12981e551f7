"""Each StyleGAN2 building block against an independent computation (numpy / scipy / loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from huref.errors import RenderError
from huref.render.stylegan2 import ops
from huref.render.stylegan2.mapping import FullyConnectedLayer, MappingNetwork

TAPS = [1.0, 3.0, 3.0, 1.0]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _scipy_upsample2x(x: np.ndarray, taps: list[float], full: bool = False) -> np.ndarray:
    """Reference FIR 2x upsampling of one [H, W] image with scipy: zero-stuff + filter (x2 per
    axis to keep the DC level); keep the 2H x 2W window centred on the input grid, or with
    ``full`` the whole (2H+2) x (2W+2) support."""
    h = np.asarray(taps) / np.sum(taps) * 2
    y = scipy.signal.upfirdn(h, x, up=2, axis=0)  # [2H+2, W]
    y = scipy.signal.upfirdn(h, y, up=2, axis=1)  # [2H+2, 2W+2]
    return y if full else y[1 : 2 * x.shape[0] + 1, 1 : 2 * x.shape[1] + 1]


def test_setup_filter_is_normalised_outer_product() -> None:
    f = ops.setup_filter(TAPS)
    t = np.asarray(TAPS) / 8
    np.testing.assert_allclose(f.numpy(), np.outer(t, t), rtol=1e-7)
    assert f.sum().item() == pytest.approx(1.0)


def test_upsample2d_matches_scipy_upfirdn() -> None:
    x = _rng(1).standard_normal((2, 3, 5, 7)).astype(np.float32)
    got = ops.upsample2d(torch.from_numpy(x), ops.setup_filter(TAPS)).numpy()
    assert got.shape == (2, 3, 10, 14)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], _scipy_upsample2x(x[n, c], TAPS), atol=1e-5)


def test_upsample2d_matches_convolve2d_on_zero_stuffed_input() -> None:
    x = _rng(2).standard_normal((6, 6))
    stuffed = np.zeros((12, 12))
    stuffed[::2, ::2] = x
    full = scipy.signal.convolve2d(stuffed, ops.setup_filter(TAPS).double().numpy() * 4)
    want = full[1:13, 1:13]  # the 12x12 window aligned with the input samples
    got = ops.upsample2d(torch.from_numpy(x[None, None]).float(), ops.setup_filter(TAPS))
    np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-5)


def test_upfirdn2d_padding_and_downsampling_match_scipy() -> None:
    x = _rng(3).standard_normal((9, 8))
    f = _rng(4).standard_normal((3, 2))  # asymmetric: catches a missing filter flip
    got = ops.upfirdn2d(
        torch.from_numpy(x[None, None]),
        torch.from_numpy(f),
        down=2,
        padding=(2, 1, 1, -1),
        gain=3.0,
    )[0, 0].numpy()
    padded = np.pad(x, ((1, 0), (2, 1)))[:-1]  # y: pad 1 before, crop 1 after; x: pad 2, 1
    want = scipy.signal.convolve2d(padded, f * 3.0, mode="valid")[::2, ::2]
    np.testing.assert_allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("act", ["linear", "lrelu", "relu"])
def test_bias_act_matches_plain_formula(act: str) -> None:
    x = _rng(5).standard_normal((3, 4, 5, 5)) * 300
    b = _rng(6).standard_normal(4) * 50
    got = ops.bias_act(torch.from_numpy(x), torch.from_numpy(b), act=act, clamp=256.0).numpy()
    y = x + b[None, :, None, None]
    if act == "lrelu":
        y = np.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
    elif act == "relu":
        y = np.maximum(y, 0) * math.sqrt(2)
    want = np.clip(y, -256, 256)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.abs(got).max() == 256  # the clamp was exercised


def test_bias_act_rejects_unknown_activation() -> None:
    with pytest.raises(RenderError, match="unknown activation"):
        ops.bias_act(torch.zeros(2, 2), act="gelu-ish")


def _explicit_modconv(x, weight, styles, noise, demodulate, up):  # type: ignore[no-untyped-def]
    """Per-sample reference: modulate, demodulate, then a plain conv (or scipy for up=2)."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i][None, :, None, None]  # [O, I, k, k]
        if demodulate:
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if up == 1:
            y = F.conv2d(x[i : i + 1].double(), w.double(), padding=weight.shape[-1] // 2)[0]
        else:  # FIR upsample (full support, 2H+2) with scipy, then a valid *true* convolution
            xu = [_scipy_upsample2x(c.double().numpy(), TAPS, full=True) for c in x[i]]
            y = torch.tensor(
                np.stack(
                    [
                        sum(
                            scipy.signal.convolve2d(xu[c], w[o, c].double().numpy(), mode="valid")
                            for c in range(w.shape[1])
                        )
                        for o in range(w.shape[0])
                    ]
                )
            )
        outs.append(y if noise is None else y + noise.double())
    return torch.stack(outs)


@pytest.mark.parametrize(
    ("up", "kernel", "demodulate"),
    [(1, 3, True), (1, 1, False), (2, 3, True)],
)
def test_modulated_conv2d_matches_per_sample_loop(up: int, kernel: int, demodulate: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 6, 6, generator=g)
    weight = torch.randn(5, 4, kernel, kernel, generator=g)
    styles = torch.randn(3, 4, generator=g) + 1
    res = 6 * up
    noise = torch.randn(res, res, generator=g) * 0.3
    got = ops.modulated_conv2d(
        x,
        weight,
        styles,
        noise=noise,
        up=up,
        padding=kernel // 2,
        resample_filter=ops.setup_filter(TAPS),
        demodulate=demodulate,
    )
    want = _explicit_modconv(x, weight, styles, noise, demodulate, up)
    assert got.shape == (3, 5, res, res)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    if demodulate:  # demodulation makes the output invariant to the scale of the style
        again = ops.modulated_conv2d(
            x,
            weight,
            styles * 7,
            noise=noise,
            up=up,
            padding=kernel // 2,
            resample_filter=ops.setup_filter(TAPS),
        )
        torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-5)


def test_fully_connected_equalised_learning_rate() -> None:
    layer = FullyConnectedLayer(16, 8, activation="lrelu", lr_multiplier=0.01)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16, generator=g) * 100)
        assert layer.bias is not None
        layer.bias.copy_(torch.randn(8, generator=g) * 100)
    x = torch.randn(5, 16, generator=g)
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    y = x.double().numpy() @ (w * 0.01 / 4).T + b * 0.01  # gain = lr_mult / sqrt(fan_in)
    want = np.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_normalize_2nd_moment_gives_unit_rms_rows() -> None:
    z = torch.from_numpy(_rng(9).standard_normal((4, 64)) * [[0.1], [1], [10], [1000]])
    got = ops.normalize_2nd_moment(z).numpy()
    want = z.numpy() / np.sqrt((z.numpy() ** 2).mean(axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose((got**2).mean(axis=1), 1.0, rtol=1e-5)  # eps 1e-8


def test_mapping_normalises_z_and_truncates_first_cutoff_ws() -> None:
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=6, num_ws=5, num_layers=2)
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for p in mapping.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 10)
        mapping.w_avg.copy_(torch.randn(6, generator=g))
    z = torch.randn(3, 8, generator=g)
    ws = mapping(z)
    assert ws.shape == (3, 5, 6)
    torch.testing.assert_close(mapping(z * 37.0), ws)  # z is normalised before the first layer
    assert not torch.allclose(mapping(z + 1.0), ws)
    cut = mapping(z, truncation_psi=0.25, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], mapping.w_avg + 0.25 * (ws[:, :2] - mapping.w_avg))
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
