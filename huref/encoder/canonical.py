"""The canonical invariant stack: a fingerprint's robust terms on a fixed grid, whatever the model.

The encoder needs the same input size and the same cell meaning for every model, but fingerprints
differ in depth L (4-5 in the zoo, 32 in 7B models) and in their probe tokens (their number n and,
after a vocabulary change, which token strings are present). The canonical stack is
[DEPTH_SLOTS * 3, GRID, GRID] and is built in three steps:

1. **Tokens -> buckets by string.** Every probe token string goes to bucket
   ``HMAC(BUCKET_KEY, string) mod GRID``; a term matrix [n, n] becomes the [GRID, GRID] matrix of
   its block means (cell (I, J) = mean of M[a, b] over tokens a in bucket I and b in bucket J).
   A token's bucket depends on its string only, never on the other tokens or on its id, so two
   models that share a tokenizer put every shared token in the same cell; a token present in one
   model only (vocabulary expansion) changes the cells of its own bucket, by about 1/(tokens per
   bucket). With n = 512 a bucket holds 16 tokens on average; an empty bucket (probability
   e^-16 per bucket at n = 512, e^-4 at n = 128) gives masked cells, which are 0 in the output.
   32 x 32 rather than 64 x 64: on the zoo, the coarser grid keeps the vocabulary-expansion
   attacks closer to their base (canonical cosine 0.94/0.93 instead of 0.92/0.91), because a
   foreign token weighs 1/16 of its bucket instead of 1/8.
2. **Layers -> depth slots.** Layer l sits at relative depth (l + 0.5) / L; slot k at
   (k + 0.5) / DEPTH_SLOTS; a layer contributes to a slot with a triangular weight
   max(0, 1 - |depth - centre| * DEPTH_SLOTS), normalised per slot. A depth-pruned model keeps
   most of the layers that feed each slot, so it lands near its base (zoo: 3 of 4 layers kept ->
   canonical cosine 0.90); the published "last two layers" would have moved. Two slots (shallow,
   deep) rather than one: a single slot moved depth pruning only from 0.90 to 0.91 but lost the
   shallow/deep contrast that separates models (zoo, through the encoder: SFT 0.91 instead of
   0.93, the vocabulary-expansion attack on stories260K 0.91 instead of 0.92).
3. **Standardise** each of the DEPTH_SLOTS * 3 channels over its unmasked cells (zero mean, unit
   std), as the terms themselves are.

Channel order: slot 0 (attn_qk, attn_vo, ffn), slot 1 (attn_qk, attn_vo, ffn); [6, 32, 32] in all.
The bucket key is public and fixed: it only places tokens on the grid (the secret selection key,
if any, already chose which tokens were probed).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import torch

from huref.errors import FingerprintError
from huref.invariants.fingerprint import Fingerprint, ModeTerms

GRID = 32  # S: cells per side of the canonical matrices
DEPTH_SLOTS = 2
N_TERMS = 3  # attn_qk, attn_vo, ffn
CHANNELS = DEPTH_SLOTS * N_TERMS
BUCKET_KEY = b"huref/encoder-canonical/v1"  # fixed forever: changing it moves every dog


def token_bucket(s: str, grid: int = GRID) -> int:
    """The grid row/column of a token string: an HMAC of its text, modulo the grid size."""
    digest = hmac.new(BUCKET_KEY, s.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % grid


def token_buckets(strings: Sequence[str], grid: int = GRID) -> torch.Tensor:
    """[n] int64 bucket of every token string."""
    return torch.tensor([token_bucket(s, grid) for s in strings], dtype=torch.int64)


def depth_weights(n_layers: int, slots: int = DEPTH_SLOTS) -> torch.Tensor:
    """[slots, n_layers] triangular weights over relative depth, each row summing to 1."""
    if n_layers < 1:
        raise FingerprintError("a fingerprint with no layers has no canonical stack")
    depth = (torch.arange(n_layers, dtype=torch.float64) + 0.5) / n_layers
    centre = (torch.arange(slots, dtype=torch.float64) + 0.5) / slots
    w = (1.0 - (depth[None, :] - centre[:, None]).abs() * slots).clamp(min=0.0)  # [slots, L]
    empty = w.sum(1) == 0
    if bool(empty.any()):  # cannot happen for slots <= 2; kept for other slot counts
        nearest = (depth[None, :] - centre[:, None]).abs().argmin(1)
        w[empty, nearest[empty]] = 1.0
    return (w / w.sum(1, keepdim=True)).to(torch.float32)


def bucket_matrix(buckets: torch.Tensor, grid: int = GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """([grid, n] block-mean operator P, [grid] tokens per bucket); P @ M @ P.T = block means."""
    n = int(buckets.numel())
    counts = torch.bincount(buckets, minlength=grid).to(torch.float32)
    p = torch.zeros(grid, n, dtype=torch.float32)
    p[buckets, torch.arange(n)] = 1.0
    return p / counts.clamp(min=1.0)[:, None], counts


def standardise_channels(pooled: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit std per channel over the unmasked cells; masked cells (a row or column
    of an empty bucket) become 0. pooled: [..., C, S, S]; counts: [..., S] tokens per bucket."""
    alive = (counts > 0).to(torch.float32)
    mask = (alive[..., :, None] * alive[..., None, :]).unsqueeze(-3)  # [..., 1, S, S]
    n_alive = mask.sum((-2, -1), keepdim=True).clamp(min=1.0)
    mean = (pooled * mask).sum((-2, -1), keepdim=True) / n_alive
    centred = (pooled - mean) * mask
    sd = (centred.pow(2).sum((-2, -1), keepdim=True) / n_alive).sqrt()
    return centred / torch.where(sd > 0, sd, torch.ones_like(sd))


def pool_and_standardise(cells: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[L, 3, S, S] block means of standardised terms -> [CHANNELS, S, S] canonical stack."""
    n_layers, n_terms, grid = cells.shape[-4], cells.shape[-3], cells.shape[-1]
    if n_terms != N_TERMS:
        raise FingerprintError(f"expected {N_TERMS} terms per layer, got {n_terms}")
    w = depth_weights(n_layers)  # [slots, L]
    pooled = torch.einsum("kl,ltij->ktij", w, cells.to(torch.float32)).reshape(CHANNELS, grid, grid)
    return standardise_channels(pooled, counts)


def canonical_from_buckets(terms: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """[L, 3, n, n] standardised terms whose tokens sit in these buckets -> canonical stack."""
    p, counts = bucket_matrix(buckets)
    cells = p @ terms.to(torch.float32) @ p.t()  # [L, 3, S, S]: block means
    return pool_and_standardise(cells, counts)


def canonical_from_terms(terms: torch.Tensor, strings: Sequence[str]) -> torch.Tensor:
    """[L, 3, n, n] standardised terms on these token strings -> [CHANNELS, GRID, GRID] float32."""
    if terms.ndim != 4 or terms.shape[1] != N_TERMS or terms.shape[2] != terms.shape[3]:
        raise FingerprintError(f"robust terms must be [L, 3, n, n], got {tuple(terms.shape)}")
    if terms.shape[2] != len(strings):
        raise FingerprintError(f"{terms.shape[2]} token rows but {len(strings)} token strings")
    t = terms.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise FingerprintError("the robust terms contain NaN or infinite values")
    return canonical_from_buckets(t, token_buckets(strings))


def robust_terms(fp: Fingerprint) -> ModeTerms:
    if fp.robust is None:
        raise FingerprintError(
            f"fingerprint of {fp.name} has no robust terms; recompute it with --modes robust"
        )
    return fp.robust


def canonical_stack(fp: Fingerprint) -> torch.Tensor:
    """The canonical stack [CHANNELS, GRID, GRID] of a fingerprint's robust terms."""
    mt = robust_terms(fp)
    # numpy when read from a file (fingerprint files are read without torch), torch when extracted
    return canonical_from_terms(torch.as_tensor(mt.terms), mt.token_strings)
