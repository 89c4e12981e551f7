"""Per-base sketches: a compact summary of a fingerprint that rules bases out of a scan.

A scan compares every model exactly (``compare_fingerprints``) with every base the sketch cannot
rule out. This module holds the sketch, how it is computed, stored and read, and **the rule**.

The sketch of a fingerprint (robust mode), for each layer and each of the three terms, and for
each layer's first-view neuron responses:

- the term, on its probe tokens, flattened and centred exactly as ``restrict`` does for a pair
  that shares every token (``t``, an m*m vector), and its norm ``|t|``;
- a count sketch of it in ``BUCKETS`` numbers: cell (i, j) adds sign(i, j) * t[i, j] to bucket
  b(i, j), where bucket and sign are hashes of the *token strings* of row i and column j, so the
  sketch depends on the token set and not on the order of the rows (a vocabulary permutation
  leaves it unchanged). Signs of different cells are independent, so ``<S_a, S_b> / (|t_a| |t_b|)``
  is an unbiased estimate of the cosine that ``layer_similarity`` computes, with a standard error
  of about 1/sqrt(BUCKETS) (measured on the tiny zoo: 2.1 in 100 x cosine units per layer pair,
  largest error 6.0 over 3020 layer pairs);
- the same for the token Gram matrix of the first-view neuron responses (G = R R^T, R [tokens,
  neurons] with standardised columns): neuron permutations leave G unchanged, and two models whose
  neurons correspond (what the neuron-matching test detects) have nearly equal G;
- 64-bit hashes of the probe-token strings (and of the response-token strings) in row order,
  each token's share of every term's (and response Gram's) energy (the squares of its row and
  its column over the whole matrix's), the token key's digest, the views.

What a sketch may rule out, and why, is ``huref.registry.sketch_rule``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from huref.errors import RegistryError

if TYPE_CHECKING:
    import numpy as np

    from huref.invariants.fingerprint import Fingerprint

SKETCH_VERSION = "huref-sketch/2"  # /2: tokens in row order and energy shares
BUCKETS = 1024  # k: each term (and each response Gram) is sketched to k numbers
_SEED = b"huref/sketch/v1"


@dataclass(frozen=True)
class Sketch:
    version: str
    key_digest: str
    token_order: tuple[int, ...]  # 64-bit hashes of the probe-token strings, in row order
    terms: np.ndarray  # [L, 3, k] float64: sketched terms divided by their norms
    energy: np.ndarray  # [L, 3, m]: share of each term's energy in each token's row plus column
    views: tuple[str, ...]  # response views, () when the fingerprint holds none
    response_order: tuple[int, ...]
    responses: np.ndarray  # [L_r, k] float64: sketched response Grams divided by their norms
    response_energy: np.ndarray  # [L_r, m_r]: the same shares for each response Gram

    @property
    def tokens(self) -> frozenset[int]:
        return frozenset(self.token_order)

    @property
    def response_tokens(self) -> frozenset[int]:
        return frozenset(self.response_order)


def token_hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64): well-spread bits from structured inputs."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _buckets(strings: list[str], salt: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket [m*m] and sign [m*m] of every (row, column) cell, drawn from the two token strings:
    the same pair of strings lands in the same bucket whatever the order of the rows."""
    import numpy as np

    h = np.array([token_hash(s) for s in strings], dtype=np.uint64)
    with np.errstate(over="ignore"):
        row = _mix(h ^ np.uint64(salt))
        col = _mix(h ^ np.uint64(salt ^ 0x5BD1E9955BD1E995))
        cell = _mix(row[:, None] * np.uint64(0x9E3779B97F4A7C15) + col[None, :]).ravel()
    return (cell % np.uint64(k)).astype(np.int64), np.where(cell >> np.uint64(63) == 1, 1.0, -1.0)


def _sketch_matrix(
    t: np.ndarray, cells: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centred m x m matrix -> (its k-bucket count sketch divided by its norm, the share of its
    energy in each token's row plus column [m]).

    E <sk(a), sk(b)> = <a, b> (the signs of different cells are independent), so the dot product of
    two sketches estimates the cosine of the two centred matrices. A row-plus-column share bounds
    the energy of the cells a token set leaves out (``_restricted``)."""
    import numpy as np

    idx, sign = cells
    c = t - t.mean()
    sq = c * c
    total = float(sq.sum())
    norm = total**0.5
    share = (sq.sum(0) + sq.sum(1)) / total if total > 0 else np.zeros(len(c))
    c = c.ravel()
    s = np.bincount(idx, weights=sign * c, minlength=k)
    return (s / norm if norm > 0 else s * 0.0), share


def compute_sketch(fp: Fingerprint, k: int = BUCKETS) -> Sketch:
    """The sketch of a fingerprint's robust terms and responses (numpy, float64; stored as float16)."""
    import numpy as np

    from huref.invariants.fingerprint import as_numpy

    rob = fp.robust
    if rob is None:
        raise RegistryError(f"{fp.name}: no robust-mode terms to sketch")
    strings = list(rob.token_strings)
    cells = _buckets(strings, 1, k)
    terms = as_numpy(rob.terms).astype(np.float64)  # [L, 3, m, m]
    pairs = [
        [_sketch_matrix(terms[i, t], cells, k) for t in range(terms.shape[1])] for i in range(len(terms))
    ]
    out = np.array([[p[0] for p in row] for row in pairs])
    energy = np.array([[p[1] for p in row] for row in pairs])
    views: tuple[str, ...] = ()
    rorder: tuple[int, ...] = ()
    resp, renergy = np.zeros((0, k)), np.zeros((0, 0))
    if fp.responses is not None:
        rs = fp.responses
        views = tuple(rs.views)
        rstrings = list(rs.token_strings)
        rorder = tuple(token_hash(s) for s in rstrings)
        rcells = _buckets(rstrings, 2, k)
        grams = []
        for a in rs.a:
            x = as_numpy(a).astype(np.float64)
            x = x - x.mean(0)
            x = x / np.maximum(x.std(0, ddof=1), 1e-12)  # columns as _corr standardises them
            grams.append(_sketch_matrix(x @ x.T, rcells, k))
        if grams:
            resp = np.stack([g[0] for g in grams])
            renergy = np.stack([g[1] for g in grams])
    return Sketch(
        SKETCH_VERSION,
        rob.key_digest,
        tuple(token_hash(s) for s in strings),
        out,
        energy,
        views,
        rorder,
        resp,
        renergy,
    )


# -- storage: a JSON header and float32 arrays, never a pickle -----------------------------------


def to_bytes(sk: Sketch) -> bytes:
    import numpy as np

    head = {
        "version": sk.version,
        "key_digest": sk.key_digest,
        "terms": list(sk.terms.shape),
        "responses": list(sk.responses.shape),
        "views": list(sk.views),
        "tokens": len(sk.token_order),
        "response_tokens": len(sk.response_order),
    }
    h = json.dumps(head, sort_keys=True).encode()
    return b"".join(
        [
            struct.pack("<I", len(h)),
            h,
            np.array(sk.token_order, dtype="<u8").tobytes(),
            np.array(sk.response_order, dtype="<u8").tobytes(),
            sk.terms.astype("<f2").tobytes(),
            sk.responses.astype("<f2").tobytes(),
            sk.energy.astype("<f4").tobytes(),
            sk.response_energy.astype("<f4").tobytes(),
        ]
    )


def from_bytes(data: bytes) -> Sketch | None:
    """The stored sketch, or None when it is of another version or malformed (then recomputed)."""
    import numpy as np

    pos = 0

    def take(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        nonlocal pos
        count = int(np.prod(shape))
        a = np.frombuffer(data, dtype, count, pos).astype(np.float64).reshape(shape)
        pos += np.dtype(dtype).itemsize * count
        return a

    try:
        (n,) = struct.unpack_from("<I", data, 0)
        head = json.loads(data[4 : 4 + n])
        if head.get("version") != SKETCH_VERSION:
            return None
        pos = 4 + n
        nt, nr = int(head["tokens"]), int(head["response_tokens"])
        tok = np.frombuffer(data, "<u8", nt, pos)
        pos += 8 * nt
        rtok = np.frombuffer(data, "<u8", nr, pos)
        pos += 8 * nr
        ts, rsh = tuple(head["terms"]), tuple(head["responses"])
        terms, resp = take("<f2", ts), take("<f2", rsh)
        energy, renergy = take("<f4", (*ts[:2], nt)), take("<f4", (rsh[0], nr))
        arrays = (terms, resp, energy, renergy)
        if pos != len(data) or not all(np.isfinite(a).all() for a in arrays) or (energy < 0).any():
            return None
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError):
        return None
    return Sketch(
        SKETCH_VERSION,
        str(head["key_digest"]),
        tuple(int(x) for x in tok),
        terms,
        energy,
        tuple(str(v) for v in head["views"]),
        tuple(int(x) for x in rtok),
        resp,
        renergy if nr else np.zeros((0, 0)),
    )


__all__ = [
    "BUCKETS",
    "SKETCH_VERSION",
    "Sketch",
    "compute_sketch",
    "from_bytes",
    "to_bytes",
    "token_hash",
]
