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
Computed with numpy (float32), so a dog drawn from a fingerprint file needs no tensor library.
The bucket key is public and fixed: it only places tokens on the grid (the secret selection key,
if any, already chose which tokens were probed).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from huref.errors import FingerprintError
from huref.invariants.fingerprint import Fingerprint, ModeTerms, as_numpy

GRID = 32  # S: cells per side of the canonical matrices
DEPTH_SLOTS = 2
N_TERMS = 3  # attn_qk, attn_vo, ffn
CHANNELS = DEPTH_SLOTS * N_TERMS
BUCKET_KEY = b"huref/encoder-canonical/v1"  # fixed forever: changing it moves every dog
TRAINING_N_TOKENS = (320, 640)  # probe-token counts of the synthetic training models (SynthSpec)


def token_bucket(s: str, grid: int = GRID) -> int:
    """The grid row/column of a token string: an HMAC of its text, modulo the grid size."""
    digest = hmac.new(BUCKET_KEY, s.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % grid


def token_buckets(strings: Sequence[str], grid: int = GRID) -> np.ndarray:
    """[n] int64 bucket of every token string."""
    return np.array([token_bucket(s, grid) for s in strings], dtype=np.int64)


def depth_weights(n_layers: int, slots: int = DEPTH_SLOTS) -> np.ndarray:
    """[slots, n_layers] float32 triangular weights over relative depth, each row summing to 1."""
    if n_layers < 1:
        raise FingerprintError("a fingerprint with no layers has no canonical stack")
    depth = (np.arange(n_layers, dtype=np.float64) + 0.5) / n_layers
    centre = (np.arange(slots, dtype=np.float64) + 0.5) / slots
    w = np.maximum(1.0 - np.abs(depth[None, :] - centre[:, None]) * slots, 0.0)  # [slots, L]
    empty = w.sum(1) == 0
    if empty.any():  # cannot happen for slots <= 2; kept for other slot counts
        nearest = np.abs(depth[None, :] - centre[:, None]).argmin(1)
        w[empty, nearest[empty]] = 1.0
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def bucket_matrix(buckets: ArrayLike, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """([grid, n] block-mean operator P, [grid] tokens per bucket), float32; P @ M @ P.T = block
    means."""
    b = as_numpy(buckets).astype(np.int64, copy=False).reshape(-1)
    n = b.size
    counts = np.bincount(b, minlength=grid).astype(np.float32)
    p = np.zeros((grid, n), dtype=np.float32)
    p[b, np.arange(n)] = 1.0
    return p / np.maximum(counts, np.float32(1.0))[:, None], counts


def standardise_channels(pooled: ArrayLike, counts: ArrayLike) -> np.ndarray:
    """Zero mean and unit std per channel over the unmasked cells; masked cells (a row or column
    of an empty bucket) become 0. pooled: [..., C, S, S]; counts: [..., S] tokens per bucket.
    float32, as the stacks the encoder was trained on (synthetic.standardise_batch is the same
    formula on batched training tensors)."""
    x = np.asarray(pooled, dtype=np.float32)
    alive = (np.asarray(counts) > 0).astype(np.float32)
    mask = (alive[..., :, None] * alive[..., None, :])[..., None, :, :]  # [..., 1, S, S]
    n_alive = np.maximum(mask.sum((-2, -1), keepdims=True), np.float32(1.0))
    mean = (x * mask).sum((-2, -1), keepdims=True) / n_alive
    centred = (x - mean) * mask
    sd = np.sqrt((centred * centred).sum((-2, -1), keepdims=True) / n_alive)
    return centred / np.where(sd > 0, sd, np.float32(1.0))


def pool_and_standardise(cells: ArrayLike, counts: ArrayLike) -> np.ndarray:
    """[L, 3, S, S] block means of standardised terms -> [CHANNELS, S, S] canonical stack."""
    c = np.asarray(cells, dtype=np.float32)
    n_layers, n_terms, grid = c.shape[-4], c.shape[-3], c.shape[-1]
    if n_terms != N_TERMS:
        raise FingerprintError(f"expected {N_TERMS} terms per layer, got {n_terms}")
    w = depth_weights(n_layers)  # [slots, L]
    pooled = np.einsum("kl,ltij->ktij", w, c).reshape(CHANNELS, grid, grid)
    return standardise_channels(pooled, counts)


def canonical_from_buckets(terms: ArrayLike, buckets: ArrayLike) -> np.ndarray:
    """[L, 3, n, n] standardised terms whose tokens sit in these buckets -> canonical stack."""
    p, counts = bucket_matrix(buckets)
    cells = p @ as_numpy(terms).astype(np.float32, copy=False) @ p.T  # [L, 3, S, S]: block means
    return pool_and_standardise(cells, counts)


def canonical_from_terms(terms: ArrayLike, strings: Sequence[str]) -> np.ndarray:
    """[L, 3, n, n] standardised terms on these token strings -> [CHANNELS, GRID, GRID] float32.
    Any array the numpy protocol reads (fingerprint files give numpy, extraction gives torch)."""
    t = as_numpy(terms).astype(np.float32, copy=False)
    if t.ndim != 4 or t.shape[1] != N_TERMS or t.shape[2] != t.shape[3]:
        raise FingerprintError(f"robust terms must be [L, 3, n, n], got {tuple(t.shape)}")
    if t.shape[2] != len(strings):
        raise FingerprintError(f"{t.shape[2]} token rows but {len(strings)} token strings")
    if not np.isfinite(t).all():
        raise FingerprintError("the robust terms contain NaN or infinite values")
    return canonical_from_buckets(t, token_buckets(strings))


def robust_terms(fp: Fingerprint) -> ModeTerms:
    if fp.robust is None:
        raise FingerprintError(
            f"fingerprint of {fp.name} has no robust terms; recompute it with --modes robust"
        )
    return fp.robust


def canonical_stack(fp: Fingerprint) -> np.ndarray:
    """The canonical stack [CHANNELS, GRID, GRID] (float32) of a fingerprint's robust terms."""
    mt = robust_terms(fp)
    return canonical_from_terms(mt.terms, mt.token_strings)
