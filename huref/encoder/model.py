"""The dog encoder: a compact CNN from a canonical stack to a 512-d standard-normal vector.

HuRef's encoder is a 341M-parameter CNN over the raw 6 x 4096 x 4096 stack; huref's input is the
6 x 32 x 32 canonical stack, so a small network trains on a CPU:

    [6, 32, 32] --conv 4x4 stride 4--> [64, 8, 8] --conv 2x2 stride 2--> [128, 4, 4]
                --linear--> 512 (raw)

The canonical grid has no spatial order (buckets are hash-placed), so the strided "patchify"
convolutions are fixed groupings of cells. The network has no nonlinearity, on purpose: a
nonlinear version (GELU, GroupNorm, residual blocks, 2.5M parameters) trained with the same
objective learned invariances to the *synthetic* derivations that did not carry over to real
ones and, after whitening, pulled real derived models away from their base (zoo: SFT 0.88,
width pruning 0.80, vocabulary-expansion attack 0.75, against canonical cosines 0.93, 0.89,
0.91). A linear map trained to keep the canonical geometry (train.py) loses none of it, and
the calibration below supplies the non-linear part that Gaussianity needs.

``Calibration`` is the final standardisation (the published method standardised its output): raw
outputs are centred and whitened (ZCA) on a large set of fresh synthetic stacks, then every
coordinate is sent through a monotone piecewise-linear map to N(0, 1) quantiles fitted on the same
set, so z is standard normal coordinate by coordinate on the synthetic distribution.

This module is for training; dogs are drawn with the numpy transcription in infer.py.
"""

from __future__ import annotations

import torch
from torch import nn

from huref.encoder.canonical import CHANNELS, GRID
from huref.encoder.infer import QUANTILE_KNOTS
from huref.render.base import Z_DIM


class DogEncoder(nn.Module):
    """[B, CHANNELS, GRID, GRID] canonical stacks -> [B, Z_DIM] raw (uncalibrated) outputs.

    Three strided convolutions and a linear layer, *without* nonlinearities (see module doc).
    """

    def __init__(self, width: int = 64, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.z_dim = z_dim
        w1, w2 = width, 2 * width
        side = GRID // 8
        self.net = nn.Sequential(
            nn.Conv2d(CHANNELS, w1, 4, stride=4),  # [w1, S/4, S/4]: one cell group of 4 x 4 buckets
            nn.Conv2d(w1, w2, 2, stride=2),  # [w2, S/8, S/8]
            nn.Flatten(),
            nn.Linear(w2 * side * side, z_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (CHANNELS, GRID, GRID):
            raise ValueError(f"expected [B, {CHANNELS}, {GRID}, {GRID}] stacks, got {tuple(x.shape)}")
        return self.net(x)


def normal_quantiles(levels: torch.Tensor) -> torch.Tensor:
    """Phi^-1 of probability levels in (0, 1), in float64."""
    return torch.special.ndtri(levels.to(torch.float64))


def knot_levels(k: int = QUANTILE_KNOTS) -> torch.Tensor:
    """Probability levels of the quantile knots: dense in the tails, (i + 0.5) / k mapped."""
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    return u


class Calibration(nn.Module):
    """Centre and whiten, fix the radius, then map every coordinate through its quantile function.

    Fitted by cross-fitting on fresh synthetic raw outputs: the mean and the ZCA whitening come
    from the first half; the radial and per-coordinate maps from the second half *after* that
    whitening, so they see what whitening does out of sample (a whitening estimated from N
    samples inflates the variance of new samples by about N / (N - dim), 3% at N = 16384 / 2).
    The radial map sends ||w|| through its empirical quantiles to those of a chi distribution
    with z_dim degrees of freedom (the norm of a standard normal vector) and keeps the direction,
    so it leaves every cosine unchanged.
    """

    mean: torch.Tensor
    whiten: torch.Tensor
    radius_in: torch.Tensor
    radius_out: torch.Tensor
    knots_in: torch.Tensor
    knots_out: torch.Tensor

    def __init__(self, z_dim: int = Z_DIM, knots: int = QUANTILE_KNOTS) -> None:
        super().__init__()
        levels = knot_levels(knots)
        self.register_buffer("mean", torch.zeros(z_dim, dtype=torch.float64))
        self.register_buffer("whiten", torch.eye(z_dim, dtype=torch.float64))
        self.register_buffer("radius_in", chi_quantiles(levels, z_dim))
        self.register_buffer("radius_out", chi_quantiles(levels, z_dim))
        self.register_buffer("knots_in", normal_quantiles(levels).repeat(z_dim, 1))
        self.register_buffer("knots_out", normal_quantiles(levels))

    @torch.no_grad()
    def fit(self, raw: torch.Tensor) -> None:
        """Fit on raw outputs [N, z_dim] of fresh synthetic stacks (N / 2 well above z_dim)."""
        r = raw.to(torch.float64)
        half = r.shape[0] // 2
        a, b = r[:half], r[half:]
        mean = a.mean(0)
        evals, evecs = torch.linalg.eigh(torch.cov((a - mean).t()))
        whiten = evecs @ torch.diag(evals.clamp(min=1e-12).rsqrt()) @ evecs.t()  # ZCA: least rotation
        self.mean.copy_(mean)
        self.whiten.copy_(whiten)
        levels = knot_levels(self.knots_out.numel())
        w = (b - mean) @ whiten
        self.radius_in.copy_(_increasing(torch.quantile(w.norm(dim=1), levels)))
        w = self._radial(w)
        self.knots_in.copy_(_increasing(torch.quantile(w, levels, dim=0).t().contiguous()))

    def _radial(self, w: torch.Tensor) -> torch.Tensor:
        r = w.norm(dim=1, keepdim=True)
        target = _interp(r, self.radius_in[None], self.radius_out)
        return w * target / r.clamp(min=1e-12)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        w = (raw.to(torch.float64) - self.mean) @ self.whiten  # [B, z_dim]
        return _interp(self._radial(w), self.knots_in, self.knots_out)


def chi_quantiles(levels: torch.Tensor, dof: int) -> torch.Tensor:
    from scipy import stats

    return torch.as_tensor(stats.chi.ppf(levels.numpy(), dof), dtype=torch.float64)


def _increasing(knots: torch.Tensor) -> torch.Tensor:
    """Strictly increasing knots (along the last dim) keep the maps invertible and continuous."""
    bumped = knots + 1e-9 * torch.arange(knots.shape[-1], dtype=torch.float64)
    return torch.cummax(bumped, dim=-1).values


def _interp(w: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor) -> torch.Tensor:
    """Per-coordinate piecewise-linear map through knots (xk[j], yk), linear beyond the ends."""
    b, z = w.shape
    k = yk.numel()
    idx = torch.searchsorted(xk.contiguous(), w.t().contiguous()).t()  # [B, z]: first knot >= w
    idx = idx.clamp(1, k - 1)
    col = torch.arange(z).expand(b, z)
    x0, x1 = xk[col, idx - 1], xk[col, idx]
    y0, y1 = yk[idx - 1], yk[idx]
    t = (w - x0) / (x1 - x0).clamp(min=1e-12)
    return y0 + t * (y1 - y0)


class CalibratedEncoder(nn.Module):
    """DogEncoder + Calibration: canonical stacks -> z ~ N(0, I) (float64)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.encoder = DogEncoder(width)
        self.calibration = Calibration()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibration(self.encoder(x))
