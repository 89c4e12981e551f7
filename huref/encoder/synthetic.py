"""Synthetic invariant stacks: random "models" whose canonical stacks look like real ones.

The encoder never sees a real model in training (as in HuRef). A synthetic model is what the
robust terms are made of, drawn at random:

- token rows X [n, d]: anisotropic Gaussian rows (power-law spectrum, exponent ``x_decay``) plus a
  common mean direction (share ``x_mean`` of the energy; real normalised embeddings: 0.4% to 34%),
  each row scaled to unit RMS as the layer norms do; every token sits in a random bucket of the
  canonical grid (the HMAC of a random string is uniform);
- per layer, cores C [d, d] = U diag(s) V^T with a power-law spectrum (``core_decay``; real terms
  put 83-95% of their energy in one singular value), partly symmetric (V mixed with U, real
  symmetry -0.2 to 0.98), plus an identity part (the a = b diagonal offset, real -0.9 to 1.9 std)
  and a share of cores common to the model's layers and terms (real slot and term correlations
  are both signed, -0.6 to 0.8);
- terms attn_qk = X C X^T, attn_vo = X C' X^T, ffn = H D X^T + X C'' X^T with gated features
  H = (X A) * (X B), plus an i.i.d. token-level residual (the part no low-rank model explains).

Everything is computed in factored form: the block means of X C X^T are (P X) C (P X)^T with the
bucket operator P [S, n], and its full-matrix mean and variance follow from the Gram matrix X^T X,
so a 512-token, 8-layer stack costs about as much as one 64 x 64 x 64 matmul per term instead of
a 512 x 512 matrix. ``tests/test_encoder_synthetic.py`` checks this equals canonicalising the
explicit n x n terms.

Derivation (the positive of a contrastive pair) perturbs a model the way fine-tuning, continued
pretraining, pruning and vocabulary changes do: noise on X (embedding updates), structured noise
on every core (weight updates), a share of probe tokens replaced by unrelated ones (vocabulary
changes), layers dropped (depth pruning) and cell noise (quantisation). *Siblings* are
independent models that share part of their token rows (same tokenizer and data): they are the
hard negatives, as llama-a and llama-b are in the zoo (canonical cosine 0.1-0.3).

The random building blocks (spectra, cores, token rows, perturbations) are in
huref.encoder.synth_random; this module composes them, in a fixed draw order, and computes the
stacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from huref.encoder.canonical import CHANNELS, DEPTH_SLOTS, GRID, N_TERMS, TRAINING_N_TOKENS
from huref.encoder.synth_random import bump, lowrank_bump, pick, random_cores, token_rows, uniform


@dataclass(frozen=True)
class SynthSpec:
    """Ranges every synthetic model is drawn from (uniform unless stated)."""

    n_tokens: tuple[int, int] = TRAINING_N_TOKENS
    d_model: tuple[int, ...] = (32, 48, 64, 80)
    n_layers: tuple[int, int] = (2, 8)
    ffn_rank: tuple[int, ...] = (16, 32)  # columns of the gated features H
    x_decay: tuple[float, float] = (0.2, 1.6)
    x_mean: tuple[float, float] = (0.0, 0.45)
    core_decay: tuple[float, float] = (1.0, 3.5)
    core_sym: tuple[float, float] = (-0.3, 1.0)
    identity: float = 0.45  # std of the identity share of a core
    shared: tuple[float, float] = (0.0, 0.85)  # share of a core common to the model's layers
    shared_positive: float = 0.85  # probability that a layer's common share enters with a + sign
    cross_term: tuple[float, float] = (0.0, 0.5)  # share common to the three terms
    residual: tuple[float, float] = (0.0, 0.25)  # variance share of the token-level residual
    sibling_share: tuple[float, float] = (0.0, 0.8)  # token-row share common to siblings
    sibling_core_share: tuple[float, float] = (0.0, 0.6)  # core share common to siblings


@dataclass(frozen=True)
class DeriveSpec:
    """How strongly a positive is perturbed; severity in [0, 1] scales every perturbation."""

    x_noise: float = 0.55  # relative norm of the token-row update at severity 1
    core_noise: float = 0.75  # relative norm of every core update at severity 1
    replace_tokens: float = 0.14  # share of probe tokens replaced at severity 1 (when drawn)
    replace_prob: float = 0.4
    drop_prob: float = 0.3  # probability of dropping layers (depth pruning)
    width_prob: float = 0.25  # probability of width pruning: residual dimensions removed
    width_share: float = 0.25  # share of residual dimensions removed at severity 1
    cell_noise: float = 0.05
    residual_change: float = 0.5  # share of the residual's draw renewed at severity 1


@dataclass
class SynthModel:
    """A batch of synthetic models sharing shapes: B models, n tokens, d dims, L layers."""

    x: torch.Tensor  # [B, n, d] token rows before RMS normalisation
    buckets: torch.Tensor  # [B, n] grid bucket of every token
    cores: torch.Tensor  # [B, L, 3, d, d]
    ffn_a: torch.Tensor  # [B, L, d, m]
    ffn_b: torch.Tensor  # [B, L, d, m]
    ffn_d: torch.Tensor  # [B, L, m, d]
    ffn_mix: torch.Tensor  # [B, L] weight of the gated part of the ffn term
    residual: torch.Tensor  # [B, L, 3] variance share of the i.i.d. residual
    residual_field: torch.Tensor  # [B, CHANNELS, S, S] standard normal: the residual's draw
    kept: torch.Tensor  # [B, L] bool, False for dropped layers
    cell_noise: torch.Tensor  # [B] extra cell noise std (in stack units)

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])


def draw_models(
    g: torch.Generator, families: int, siblings: int, spec: SynthSpec = SynthSpec()
) -> SynthModel:
    """families * siblings independent models (siblings share a tokenizer and part of X)."""
    b = families * siblings
    n = int(torch.randint(spec.n_tokens[0], spec.n_tokens[1] + 1, (1,), generator=g))
    d = int(pick(g, spec.d_model))  # type: ignore[call-overload]
    n_layers = int(torch.randint(spec.n_layers[0], spec.n_layers[1] + 1, (1,), generator=g))
    m = int(pick(g, spec.ffn_rank))  # type: ignore[call-overload]
    fam = lambda t: t.repeat_interleave(siblings, 0)  # noqa: E731  [families, ...] -> [b, ...]

    x_fam = token_rows(
        g, families, n, d, uniform(g, *spec.x_decay, families), uniform(g, *spec.x_mean, families)
    )
    x_own = token_rows(g, b, n, d, uniform(g, *spec.x_decay, b), uniform(g, *spec.x_mean, b))
    share = uniform(g, *spec.sibling_share, b)[:, None, None]
    x = torch.sqrt(share) * fam(x_fam) + torch.sqrt(1 - share) * x_own
    buckets = fam(torch.randint(GRID, (families, n), generator=g))

    decay = uniform(g, *spec.core_decay, b, 1, 1).expand(b, n_layers, N_TERMS)
    decay = decay + uniform(g, -0.3, 0.3, b, n_layers, N_TERMS)
    own = random_cores(g, (b, n_layers, N_TERMS), d, decay, uniform(g, *spec.core_sym, b, n_layers, N_TERMS))
    common = random_cores(g, (b, 1, N_TERMS), d, decay[:, :1], uniform(g, *spec.core_sym, b, 1, N_TERMS))
    sign = torch.where(torch.rand(b, n_layers, N_TERMS, generator=g) < spec.shared_positive, 1.0, -1.0)
    mix = uniform(g, *spec.shared, b, 1, 1) * sign
    cores = torch.sqrt(1 - mix.abs())[..., None, None] * own + mix[..., None, None] * common
    every = random_cores(g, (b, 1, 1), d, decay[:, :1, :1], uniform(g, *spec.core_sym, b, 1, 1))
    cross = uniform(g, *spec.cross_term, b, 1, 1) * torch.sign(torch.randn(b, 1, N_TERMS, generator=g))
    cores = torch.sqrt(1 - cross.abs())[..., None, None] * cores + cross[..., None, None] * every
    eye = torch.eye(d) * torch.randn(b, n_layers, N_TERMS, 1, 1, generator=g) * spec.identity / math.sqrt(d)
    cores = cores + eye
    # siblings learned on the same data: part of every core is common to the family
    fam_cores = random_cores(
        g,
        (families, n_layers, N_TERMS),
        d,
        decay[::siblings],
        uniform(g, *spec.core_sym, families, n_layers, N_TERMS),
    )
    kappa = uniform(g, *spec.sibling_core_share, b)[:, None, None, None, None]
    cores = (
        torch.sqrt(1 - kappa) * cores
        + torch.sqrt(kappa) * fam(fam_cores) * cores.flatten(-2).norm(dim=-1)[..., None, None]
    )

    ffn_a = torch.randn(b, n_layers, d, m, generator=g) / math.sqrt(d)
    ffn_b = torch.randn(b, n_layers, d, m, generator=g) / math.sqrt(d)
    ffn_d = torch.randn(b, n_layers, m, d, generator=g) / math.sqrt(m)
    return SynthModel(
        x=x,
        buckets=buckets,
        cores=cores,
        ffn_a=ffn_a,
        ffn_b=ffn_b,
        ffn_d=ffn_d,
        ffn_mix=uniform(g, 0.0, 0.9, b, n_layers),
        residual=uniform(g, *spec.residual, b, n_layers, N_TERMS),
        residual_field=torch.randn(b, CHANNELS, GRID, GRID, generator=g),
        kept=torch.ones(b, n_layers, dtype=torch.bool),
        cell_noise=torch.zeros(b),
    )


def derive(
    g: torch.Generator, base: SynthModel, severity: torch.Tensor, spec: DeriveSpec = DeriveSpec()
) -> SynthModel:
    """A derived model of every base model; severity [B] in [0, 1] scales all perturbations."""
    b, n, _ = base.x.shape
    n_layers = base.cores.shape[1]
    sev = severity.to(torch.float32)
    s3 = sev[:, None, None]
    s5 = sev[:, None, None, None, None]
    # embedding updates: per-model relative norm, split between full-rank and low-rank parts
    x = bump(g, base.x, s3 * spec.x_noise * uniform(g, 0.3, 1.0, b, 1, 1))
    cores = lowrank_bump(g, base.cores, s5 * spec.core_noise * uniform(g, 0.3, 1.0, b, 1, 1, 1, 1))
    s4 = sev[:, None, None, None]
    ffn_a = lowrank_bump(g, base.ffn_a, s4 * spec.core_noise * uniform(g, 0.3, 1.0, b, 1, 1, 1))
    ffn_b = lowrank_bump(g, base.ffn_b, s4 * spec.core_noise * uniform(g, 0.3, 1.0, b, 1, 1, 1))
    ffn_d = lowrank_bump(g, base.ffn_d, s4 * spec.core_noise * uniform(g, 0.3, 1.0, b, 1, 1, 1))

    # vocabulary changes: a share of probe tokens becomes unrelated tokens in random buckets
    do_replace = torch.rand(b, generator=g) < spec.replace_prob
    share = torch.where(do_replace, uniform(g, 0.0, 1.0, b) * spec.replace_tokens * (0.4 + 0.6 * sev), 0.0)
    swap = torch.rand(b, n, generator=g) < share[:, None]
    rms = base.x.pow(2).mean((1, 2)).sqrt()  # [B]
    where = torch.nonzero(swap)  # [k, 2]: (model, token) pairs to replace
    x = x.clone()
    x[where[:, 0], where[:, 1]] = (
        torch.randn(len(where), base.x.shape[2], generator=g) * rms[where[:, 0], None]
    )
    buckets = torch.where(swap, torch.randint(GRID, (b, n), generator=g), base.buckets)

    # width pruning: residual coordinates removed (the token rows lose those columns)
    d = base.x.shape[2]
    prune = torch.rand(b, generator=g) < spec.width_prob
    cut = torch.where(prune, spec.width_share * (0.3 + 0.7 * sev) * torch.rand(b, generator=g), 0.0)
    x = x * (torch.rand(b, 1, d, generator=g) >= cut[:, None, None])
    rho = (spec.residual_change * sev)[:, None, None, None]
    # depth pruning: drop up to a third of the layers, never all
    kept = base.kept.clone()
    drop = (torch.rand(b, generator=g) < spec.drop_prob) & (n_layers >= 3)
    for i in torch.nonzero(drop).flatten().tolist():
        k = int(torch.randint(1, max(2, n_layers // 3 + 1), (1,), generator=g))
        alive = torch.nonzero(kept[i]).flatten()
        gone = alive[torch.randperm(len(alive), generator=g)[:k]]
        if len(alive) - len(gone) >= 1:
            kept[i, gone] = False
    return replace(
        base,
        x=x,
        buckets=buckets,
        cores=cores,
        ffn_a=ffn_a,
        ffn_b=ffn_b,
        ffn_d=ffn_d,
        kept=kept,
        residual_field=torch.sqrt(1 - rho**2) * base.residual_field
        + rho * torch.randn(base.residual_field.shape, generator=g),
        cell_noise=spec.cell_noise * sev * torch.rand(b, generator=g),
    )


def kept_depth_weights(kept: torch.Tensor) -> torch.Tensor:
    """[B, slots, L] triangular depth weights of each model's kept layers (zero for dropped ones),
    placed as if the kept layers were the whole model, as canonical.depth_weights does."""
    rank = kept.to(torch.float32).cumsum(1) - 1  # position among kept layers
    count = kept.sum(1, keepdim=True).to(torch.float32).clamp(min=1)
    depth = (rank + 0.5) / count  # [B, L]
    centre = (torch.arange(DEPTH_SLOTS, dtype=torch.float32) + 0.5) / DEPTH_SLOTS
    w = (1.0 - (depth[:, None, :] - centre[None, :, None]).abs() * DEPTH_SLOTS).clamp(min=0.0)
    w = w * kept[:, None, :]
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Token rows scaled to unit RMS, as the layers' input norms do."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))


def gated_features(models: SynthModel, x: torch.Tensor) -> torch.Tensor:
    """H = (X A) * (X B): [B, n, L, m], the gated FFN's features of every token in every layer."""
    b, n, d = x.shape
    n_layers, m = models.ffn_a.shape[1], models.ffn_a.shape[-1]
    wide = lambda w: w.permute(0, 2, 1, 3).reshape(b, d, n_layers * m)  # noqa: E731  [B, d, L*m]
    return ((x @ wide(models.ffn_a)) * (x @ wide(models.ffn_b))).reshape(b, n, n_layers, m)


def _per_layer(left: torch.Tensor, cores: torch.Tensor) -> torch.Tensor:
    """left [B, r, d] times every core [B, K, d, e] -> [B, K, r, e], as one batched matmul."""
    b, k, d, e = cores.shape
    wide = cores.permute(0, 2, 1, 3).reshape(b, d, k * e)  # [B, d, K*e]
    return (left @ wide).reshape(b, -1, k, e).permute(0, 2, 1, 3)


def _block_sums(a: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """a [B, K, S, d] times px^T [B, d, S] -> [B, K, S, S]."""
    b, k, s, d = a.shape
    return (a.reshape(b, k * s, d) @ px.transpose(1, 2)).reshape(b, k, s, -1)


def stacks(g: torch.Generator, models: SynthModel) -> torch.Tensor:
    """[B, CHANNELS, S, S] canonical stacks of a batch of synthetic models.

    Terms: attn_qk = X C0 X^T, attn_vo = X C1 X^T, ffn = H Dw X^T + X C2w X^T with
    Dw = sqrt(mix) D and C2w = sqrt(1 - mix) C2. The block means are P X C X^T P^T =
    (P X) C (P X)^T; each full n x n term's mean and squared norm come from Gram matrices, e.g.
    ||X C X^T||^2 = tr(C G C^T G) = sum((C G) * (G C)) with G = X^T X, so no n x n matrix is
    ever formed.
    """
    b, n, d = models.x.shape
    n_layers = models.cores.shape[1]
    k = n_layers * N_TERMS
    x = unit_rows(models.x)
    onehot = torch.zeros(b, GRID, n)
    onehot.scatter_(1, models.buckets[:, None, :], 1.0)
    counts = onehot.sum(-1)  # [B, S]
    p = onehot / counts.clamp(min=1)[..., None]  # block-mean operator [B, S, n]
    px, gx, mx = p @ x, x.transpose(1, 2) @ x, x.mean(1, keepdim=True)  # [B, S, d], [B, d, d], [B, 1, d]

    w = models.ffn_mix  # [B, L]
    scale = torch.cat([torch.ones(b, n_layers, 2), torch.sqrt(1 - w)[..., None]], 2)
    core = (models.cores * scale[..., None, None]).reshape(b, k, d, d)  # [B, L*3, d, d]
    cells = _block_sums(_per_layer(px, core), px)  # [B, L*3, S, S]
    mean = (_per_layer(mx, core) @ mx.transpose(1, 2)[:, None]).reshape(b, k)
    cg = core @ gx[:, None]  # [B, L*3, d, d]
    gc = _per_layer(gx, core)
    sq = (cg * gc).sum((-2, -1))  # ||X C X^T||^2 = tr(C G C^T G)

    # the gated part of the ffn term, H Dw X^T, added to the linear part X C2w X^T (index 2 mod 3)
    h = gated_features(models, x)  # [B, n, L, m]
    m = h.shape[-1]
    dw = torch.sqrt(w)[..., None, None] * models.ffn_d  # [B, L, m, d]
    hl = h.permute(0, 2, 1, 3)  # [B, L, n, m]
    ph = (p @ h.reshape(b, n, n_layers * m)).reshape(b, GRID, n_layers, m).permute(0, 2, 1, 3)
    ffn_cells = _block_sums(ph @ dw, px)  # [B, L, S, S]
    mh = h.mean(1)[:, :, None, :]  # [B, L, 1, m]
    ffn_mean = (mh @ dw @ mx.transpose(1, 2)[:, None])[..., 0, 0]  # [B, L]
    gh = hl.transpose(-1, -2) @ hl  # [B, L, m, m]
    hx = (h.reshape(b, n, n_layers * m).transpose(1, 2) @ x).reshape(b, n_layers, m, d)
    c2 = core.reshape(b, n_layers, N_TERMS, d, d)[:, :, 2]
    dg = dw @ gx[:, None]  # [B, L, m, d]
    ffn_sq = (dg * (gh @ dw)).sum((-2, -1)) + 2 * ((dw.transpose(-1, -2) @ hx @ c2) * gx[:, None]).sum(
        (-2, -1)
    )

    cells = cells.reshape(b, n_layers, N_TERMS, GRID, GRID).clone()
    mean = mean.reshape(b, n_layers, N_TERMS).clone()
    sq = sq.reshape(b, n_layers, N_TERMS).clone()
    cells[:, :, 2] += ffn_cells
    mean[:, :, 2] += ffn_mean
    sq[:, :, 2] += ffn_sq
    var = (sq / (n * n) - mean**2).clamp(min=1e-12)
    cells = (cells - mean[..., None, None]) * torch.rsqrt(var)[..., None, None]

    # i.i.d. token-level residual with variance share v: after standardisation the low-rank part
    # shrinks by sqrt(1 - v) and a block mean over c_I * c_J residual entries has variance
    # v / (c_I c_J); pooled over layers with weights w_kl the residual stays Gaussian with variance
    # sum_l w_kl^2 v_l / (c_I c_J), so one standard-normal field per channel (drawn with the
    # model, kept by its derivatives) carries it.
    weights = kept_depth_weights(models.kept)  # [B, slots, L]
    v = models.residual  # [B, L, 3]
    pooled = torch.einsum("bkl,bltij->bktij", weights, torch.sqrt(1 - v)[..., None, None] * cells)
    noise_var = torch.einsum("bkl,blt->bkt", weights.pow(2), v).reshape(b, CHANNELS, 1, 1)
    pair = (counts[:, :, None] * counts[:, None, :]).clamp(min=1)[:, None]  # [B, 1, S, S]
    pooled = pooled.reshape(b, CHANNELS, GRID, GRID) + torch.sqrt(noise_var / pair) * models.residual_field
    if bool((models.cell_noise > 0).any()):
        pooled = pooled + models.cell_noise[:, None, None, None] * torch.randn(pooled.shape, generator=g)
    return standardise_batch(pooled, counts)


def standardise_batch(pooled: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """canonical.standardise_channels on batched torch tensors [B, C, S, S], [B, S]: the same
    formula in torch, because the shipped encoder's bytes depend on the float32 rounding of the
    training stacks (encoders/README.md: a retrain reproduces its SHA-256). Tests hold the two
    equal to float32 rounding."""
    alive = (counts > 0).to(torch.float32)
    mask = (alive[..., :, None] * alive[..., None, :]).unsqueeze(-3)  # [..., 1, S, S]
    n_alive = mask.sum((-2, -1), keepdim=True).clamp(min=1.0)
    mean = (pooled * mask).sum((-2, -1), keepdim=True) / n_alive
    centred = (pooled - mean) * mask
    sd = (centred.pow(2).sum((-2, -1), keepdim=True) / n_alive).sqrt()
    return centred / torch.where(sd > 0, sd, torch.ones_like(sd))


def explicit_terms(models: SynthModel, i: int) -> torch.Tensor:
    """The full [L_kept, 3, n, n] standardised terms of model i (no residual): the slow reference
    the factored path is tested against."""
    one = replace(models, x=models.x[i : i + 1], ffn_a=models.ffn_a[i : i + 1], ffn_b=models.ffn_b[i : i + 1])
    x = unit_rows(one.x)
    h = gated_features(one, x)[0]  # [n, L, m]
    x0 = x[0]
    out = []
    for layer in torch.nonzero(models.kept[i]).flatten().tolist():
        mix = models.ffn_mix[i, layer]
        c = models.cores[i, layer]
        terms = [x0 @ c[0] @ x0.t(), x0 @ c[1] @ x0.t()]
        ffn = (
            h[:, layer] @ (mix.sqrt() * models.ffn_d[i, layer]) @ x0.t()
            + x0 @ ((1 - mix).sqrt() * c[2]) @ x0.t()
        )
        terms.append(ffn)
        out.append(torch.stack([(m - m.mean()) / m.std(correction=0) for m in terms]))
    return torch.stack(out)
