"""StyleGAN2 building blocks as pure functions over float32 tensors.

Conventions follow the StyleGAN2 / StyleGAN2-ADA papers and the documented behaviour of the
official implementation, so that checkpoints trained there give the same images here:

- FIR filters are 2-D ``[fh, fw]`` tensors normalised to sum 1 (the separable outer product of
  the 1-D taps, e.g. ``[1, 3, 3, 1]``); applying one is a *true* convolution (the filter is
  flipped), zero-insertion upsampling multiplies by ``gain`` to keep the signal's DC level.
- Equalised learning rate: weights are stored divided by ``lr_multiplier`` and scaled by
  ``lr_multiplier / sqrt(fan_in)`` at run time (paper: He init applied at run time).
- Activations carry the "default gain" that keeps unit variance (sqrt(2) after (leaky) ReLU),
  and an optional symmetric clamp that the official code applies after the gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from huref.errors import RenderError

# name -> (function of (x, alpha), default gain, default alpha)
_ACTIVATIONS = {
    "linear": (lambda x, a: x, 1.0, 0.0),
    "relu": (lambda x, a: F.relu(x), math.sqrt(2), 0.0),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), math.sqrt(2), 0.2),
    "tanh": (lambda x, a: torch.tanh(x), 1.0, 0.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 1.0, 0.0),
}


def activation_default_gain(act: str) -> float:
    """The gain that restores unit variance after ``act`` (sqrt(2) for (leaky) ReLU)."""
    if act not in _ACTIVATIONS:
        raise RenderError(f"unknown activation {act!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[act][1]


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``: bias along ``dim``, activation, gain, then the clamp.

    The clamp (``conv_clamp`` in the checkpoints) bounds activations to +-clamp; it was added
    for fp16 training but the official code applies it on the float32 path too.
    """
    if act not in _ACTIVATIONS:
        raise RenderError(f"unknown activation {act!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    fn, def_gain, def_alpha = _ACTIVATIONS[act]
    if b is not None:
        shape = [-1 if i == dim % x.ndim else 1 for i in range(x.ndim)]
        x = x + b.reshape(shape)  # [C] -> broadcastable along dim
    x = fn(x, def_alpha if alpha is None else alpha)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each z to unit root-mean-square: the mapping network sees points on a sphere."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def fully_connected(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_gain: float,
    bias_gain: float,
    act: str = "linear",
) -> torch.Tensor:
    """Equalised-learning-rate dense layer: ``act(x @ (weight * wg)^T + bias * bg)``.

    The gains are applied at run time (not baked into the stored weights) because that is how
    the checkpoints store them: ``weight`` is N(0, 1) / lr_multiplier at init.
    """
    w = weight * weight_gain  # [out, in]
    b = bias * bias_gain if (bias is not None and bias_gain != 1) else bias
    if act == "linear" and b is not None:
        return torch.addmm(b.unsqueeze(0), x, w.t())
    return bias_act(x.matmul(w.t()), b, act=act)


def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR filter from 1-D taps: outer product, normalised to unit sum (DC gain 1)."""
    # checked in Python, not on the tensor: a generator skeleton is built on the meta device
    try:
        values = [float(t) for t in taps]
    except (TypeError, ValueError):
        values = []
    if not values or sum(values) == 0.0 or not all(math.isfinite(v) for v in values):
        raise RenderError(f"resample filter {list(taps)!r} is not a 1-D list with non-zero sum")
    f = torch.tensor(values, dtype=torch.float32)
    f2 = f.outer(f)  # [k, k]
    return f2 / f2.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Zero-insertion upsample by ``up``, pad (negative = crop), FIR filter, keep every ``down``.

    ``padding`` is (x0, x1, y0, y1). The filter is applied as a true convolution (flipped) and
    multiplied by ``gain``; upsampling callers pass ``up**2`` so a constant image stays constant.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = (int(p) for p in padding)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)  # each sample followed by up-1 zeros, on both axes
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kernel = (f * gain).flip([0, 1]).to(x.dtype)  # flip: conv2d correlates, we want convolution
    kernel = kernel[None, None].repeat(c, 1, 1, 1)  # [C, 1, fh, fw], one filter per channel
    x = F.conv2d(x, kernel, groups=c)
    return x[:, :, ::down, ::down]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1.0) -> torch.Tensor:
    """FIR upsampling to exactly ``up`` times the size, the filter centred on the new grid."""
    fh, fw = f.shape
    pad = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=gain * up * up)


def _conv_transpose_up(
    x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, up: int, padding: int, groups: int
) -> torch.Tensor:
    """2x up-sampling convolution: FIR-upsample ``x`` with its border extended by ``padding``
    filtered samples (not zeros), then a valid *true* convolution with ``w``.

    Done the cheap way: a stride-``up`` transposed convolution is the true convolution of the
    zero-stuffed input with ``w``; it and the FIR filter are linear and shift-invariant on the
    fine grid, so they commute, and only the border bookkeeping (px0/px1) has to be redone.
    """
    out_ch, in_per_group, kh, kw = w.shape
    fh, fw = f.shape
    # Where the reference order (upsample with filter padding, then conv) would start/stop,
    # minus what the transposed convolution already covers (kw - 1 before, kw - up after).
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    # conv_transpose2d wants [in, out/groups, kh, kw] per group
    w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)  # [G, O/G, I, kh, kw]
    w = w.transpose(1, 2).reshape(groups * in_per_group, out_ch // groups, kh, kw)
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution (paper eq. 1-3), one grouped conv for the whole batch.

    Each sample i gets its own kernel ``w_i = weight * s_i`` (scaled per input channel) and, with
    ``demodulate``, each output channel is rescaled to unit expected norm:
    ``w_i /= sqrt(sum(w_i^2 over in, kh, kw) + 1e-8)``. With ``up=2`` the input is first
    FIR-upsampled (border extended by ``padding`` filtered samples) and the kernel applied as a
    valid true convolution: the official up-layer semantics, see :func:`_conv_transpose_up`.
    Shapes: x [N, I, H, W], weight [O, I, kh, kw], styles [N, I], noise broadcastable to output.
    """
    n, in_ch, h, w_ = x.shape
    out_ch, w_in, kh, kw = weight.shape
    if w_in != in_ch or styles.shape != (n, in_ch):
        raise RenderError(
            f"modulated conv: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"styles {tuple(styles.shape)} do not fit together"
        )
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
        w = w * dcoefs.reshape(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, h, w_)  # [1, N*I, H, W]: samples become conv groups
    w = w.reshape(n * out_ch, in_ch, kh, kw)  # [N*O, I, kh, kw]
    if up == 1:
        x = F.conv2d(x, w, padding=padding, groups=n)
    else:
        if resample_filter is None:
            raise RenderError("modulated conv with up > 1 needs a resample filter")
        x = _conv_transpose_up(x, w, resample_filter, up, padding, groups=n)
    x = x.reshape(n, out_ch, *x.shape[2:])  # [N, O, H', W']
    if noise is not None:
        x = x + noise
    return x
