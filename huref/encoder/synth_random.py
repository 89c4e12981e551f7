"""The random building blocks synthetic models are drawn from, and the perturbations that derive them.

Uniform draws over a range, a choice among options, power-law singular spectra with a little
jitter, unit-norm cores U diag(s) V^T that are partly symmetric, anisotropic token rows with a
common mean direction, and relative-norm perturbations (full-rank and low-rank) of a batch of
matrices. Every draw comes from the generator it is given, in a fixed order: the shipped
encoder's training data (huref.encoder.synthetic) is reproduced from its seed.
"""

from __future__ import annotations

import torch


def uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def pick(g: torch.Generator, options: tuple) -> object:
    return options[int(torch.randint(len(options), (1,), generator=g))]


def power_spectrum(g: torch.Generator, batch: tuple[int, ...], k: int, decay: torch.Tensor) -> torch.Tensor:
    """[*batch, k] singular values k^-decay with a little jitter, decay broadcast over batch."""
    idx = torch.arange(1, k + 1, dtype=torch.float32)
    s = idx.pow(-decay[..., None]) * uniform(g, 0.7, 1.3, *batch, k)
    return s


def random_cores(
    g: torch.Generator, shape: tuple[int, ...], d: int, decay: torch.Tensor, sym: torch.Tensor, rank: int = 16
) -> torch.Tensor:
    """[*shape, d, d] U diag(s) V^T of rank min(d, rank), V = sym U + sqrt(1 - sym^2) U', unit norm."""
    r = min(d, rank)
    u = torch.randn(*shape, d, r, generator=g)
    u2 = torch.randn(*shape, d, r, generator=g)
    rho = sym[..., None, None]
    v = rho * u + torch.sqrt((1 - rho**2).clamp(min=0)) * u2
    s = power_spectrum(g, shape, r, decay)
    c = (u * s[..., None, :]) @ v.transpose(-1, -2)
    return c / c.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=1e-12)


def token_rows(
    g: torch.Generator, b: int, n: int, d: int, decay: torch.Tensor, mean_share: torch.Tensor
) -> torch.Tensor:
    """[b, n, d] anisotropic rows plus a common direction holding mean_share of the energy."""
    basis = torch.linalg.qr(torch.randn(b, d, d, generator=g))[0]
    scale = power_spectrum(g, (b,), d, decay)
    scale = scale / scale.pow(2).mean(-1, keepdim=True).sqrt()
    rows = (torch.randn(b, n, d, generator=g) * scale[:, None, :]) @ basis.transpose(-1, -2)
    mu = torch.randn(b, 1, d, generator=g)
    mu = mu / mu.pow(2).mean(-1, keepdim=True).sqrt()
    ms = mean_share[:, None, None]
    return torch.sqrt(1 - ms) * rows + torch.sqrt(ms) * mu


def bump(g: torch.Generator, t: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """t plus Gaussian noise whose norm is rel (broadcast per model) times t's, per matrix."""
    noise = torch.randn(t.shape, generator=g)
    tn = t.flatten(-2).norm(dim=-1)[..., None, None]
    nn = noise.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=1e-12)
    return t + rel * tn * noise / nn


def lowrank_bump(g: torch.Generator, t: torch.Tensor, rel: torch.Tensor, rank: int = 8) -> torch.Tensor:
    """t plus a rank-`rank` update of relative norm rel: weight updates of fine-tuning are low-rank-ish."""
    *lead, r, c = t.shape
    upd = torch.randn(*lead, r, rank, generator=g) @ torch.randn(*lead, rank, c, generator=g)
    tn = t.flatten(-2).norm(dim=-1)[..., None, None]
    un = upd.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=1e-12)
    return t + rel * tn * upd / un
