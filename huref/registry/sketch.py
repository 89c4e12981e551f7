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
- 64-bit hashes of the probe-token strings (and of the response-token strings), the token key's
  digest, the views.

**Why an estimate and not a Cauchy-Schwarz bound.** For unit vectors a, b of dimension D and an
orthonormal k-dim projection P, ``cos(a, b) <= Pa.Pb + |Ra||Rb|`` is exact, but for terms that
are not concentrated in a basis shared by all models (the invariant terms of independent models
are near-orthogonal, and no fixed small basis holds most of their energy) ``|Ra||Rb|`` is about
``1 - k/D``: the bound is close to 1 and rules nothing out. The sketch therefore estimates, and the rule below adds a margin to the
estimate that covers its error with room to spare, and a second guard for the neuron test.

**The rule** (``rule_out``): a base is ruled out for a model only when *all* of these hold;
otherwise it is compared exactly.

1. the sketch versions and the token keys agree, and the two probe-token *sets* are identical
   (then ``restrict`` keeps every token of both, and the sketches describe exactly the vectors the
   full comparison uses; any vocabulary change that alters the token set, such as an expansion
   whose new strings rank among the probes, sends the pair to the exact comparison);
2. the **ICS bound** is below the ICS margin: per layer pair the estimated similarity plus
   ``EST_MARGIN`` (100 x cosine units), aligned by the same monotone alignment as ``huref
   compare``; the margin is the smaller of ``ICS_CEILING`` and the ICS at which Z reaches
   ``Z_INDEPENDENT`` (3) under the scan's null, so a ruled-out base can be neither derived nor
   inconclusive by Z;
3. the **neuron guard**: when both fingerprints hold responses of the same views (a neuron test
   would run), their response-token sets are identical and the largest estimated response-Gram
   cosine over all layer pairs, plus ``EST_MARGIN``, is below ``RESPONSE_CEILING``. The neuron
   test's p-value has no monotone relation to the ICS, and no sketch bounds it exactly: this guard
   is the stated conservative substitute (derived pairs have response Grams far above the ceiling,
   see docs/registry-and-scans.md).

A pair whose probe tokens share fewer than 16 strings is not ruled out either: its exact
comparison is known without the base's file (``shared_too_few``), and is recorded as the error
``compare_fingerprints`` gives.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from huref.errors import RegistryError
from huref.invariants.calibration import NullModel
from huref.invariants.verdict import Z_INDEPENDENT

if TYPE_CHECKING:
    import numpy as np

    from huref.invariants.fingerprint import Fingerprint

SKETCH_VERSION = "huref-sketch/1"
BUCKETS = 1024  # k: each term (and each response Gram) is sketched to k numbers
EST_MARGIN = 10.0  # added to every estimated similarity (100 x cosine units): ~5 standard errors
ICS_CEILING = 30.0  # a base is never ruled out at an ICS bound of this or more
RESPONSE_CEILING = 70.0  # nor at a response-Gram bound of this or more (100 x cosine units)
MIN_SHARED_TOKENS = 16  # as huref.invariants.similarity (kept here to stay free of torch)
_SEED = b"huref/sketch/v1"


@dataclass(frozen=True)
class Sketch:
    version: str
    key_digest: str
    tokens: frozenset[int]  # 64-bit hashes of the probe-token strings
    terms: np.ndarray  # [L, 3, k] float64: sketched terms divided by their norms
    views: tuple[str, ...]  # response views, () when the fingerprint holds none
    response_tokens: frozenset[int]
    responses: np.ndarray  # [L_r, k] float64: sketched response Grams divided by their norms


@dataclass(frozen=True)
class Decision:
    """What the sketch says about one (model, base) pair."""

    ruled_out: bool
    ics_bound: float | None  # None when the sketch could not bound the ICS
    response_bound: float | None
    why: str  # the first condition of the rule that failed, or 'ruled out'


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


def _sketch_matrix(t: np.ndarray, cells: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    """Centred m x m matrix -> its k-bucket count sketch divided by its norm.

    E <sk(a), sk(b)> = <a, b> (the signs of different cells are independent), so the dot product of
    two sketches estimates the cosine of the two centred matrices."""
    import numpy as np

    idx, sign = cells
    c = (t - t.mean()).ravel()
    norm = float(np.linalg.norm(c))
    s = np.bincount(idx, weights=sign * c, minlength=k)
    return s / norm if norm > 0 else s * 0.0


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
    out = np.stack(
        [[_sketch_matrix(terms[i, t], cells, k) for t in range(terms.shape[1])] for i in range(len(terms))]
    )
    views: tuple[str, ...] = ()
    rtok: frozenset[int] = frozenset()
    resp = np.zeros((0, k))
    if fp.responses is not None:
        rs = fp.responses
        views = tuple(rs.views)
        rstrings = list(rs.token_strings)
        rtok = frozenset(token_hash(s) for s in rstrings)
        rcells = _buckets(rstrings, 2, k)
        grams = []
        for a in rs.a:
            x = as_numpy(a).astype(np.float64)
            x = x - x.mean(0)
            x = x / np.maximum(x.std(0, ddof=1), 1e-12)  # columns as _corr standardises them
            grams.append(_sketch_matrix(x @ x.T, rcells, k))
        resp = np.stack(grams) if grams else resp
    return Sketch(
        SKETCH_VERSION,
        rob.key_digest,
        frozenset(token_hash(s) for s in strings),
        out,
        views,
        rtok,
        resp,
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
        "tokens": len(sk.tokens),
        "response_tokens": len(sk.response_tokens),
    }
    h = json.dumps(head, sort_keys=True).encode()
    return b"".join(
        [
            struct.pack("<I", len(h)),
            h,
            np.array(sorted(sk.tokens), dtype="<u8").tobytes(),
            np.array(sorted(sk.response_tokens), dtype="<u8").tobytes(),
            sk.terms.astype("<f2").tobytes(),
            sk.responses.astype("<f2").tobytes(),
        ]
    )


def from_bytes(data: bytes) -> Sketch | None:
    """The stored sketch, or None when it is of another version or malformed (then recomputed)."""
    import numpy as np

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
        k_t, k_r = int(np.prod(ts)), int(np.prod(rsh))
        terms = np.frombuffer(data, "<f2", k_t, pos).astype(np.float64).reshape(ts)
        pos += 2 * k_t
        resp = np.frombuffer(data, "<f2", k_r, pos).astype(np.float64).reshape(rsh)
        if pos + 2 * k_r != len(data) or not (np.isfinite(terms).all() and np.isfinite(resp).all()):
            return None
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError):
        return None
    return Sketch(
        SKETCH_VERSION,
        str(head["key_digest"]),
        frozenset(int(x) for x in tok),
        terms,
        tuple(str(v) for v in head["views"]),
        frozenset(int(x) for x in rtok),
        resp,
    )


# -- the rule --------------------------------------------------------------------------------------


def best_alignment_mean(s: np.ndarray) -> float:
    """Mean similarity of the best strictly increasing pairing of the shorter side's layers into
    the longer side's: the value ``monotone_alignment`` reaches (the same dynamic programme),
    here on bounds, so the result bounds the ICS whenever every entry bounds its layer pair."""
    m = s if s.shape[0] <= s.shape[1] else s.T
    rows, cols = m.shape
    prev = [0.0] * (cols + 1)  # best[i-1][j]
    for i in range(1, rows + 1):
        cur = [float("-inf")] * (cols + 1)
        for j in range(i, cols + 1):
            cur[j] = max(cur[j - 1], prev[j - 1] + float(m[i - 1, j - 1]))
        prev = cur
    return prev[cols] / rows


def ics_margin(null: NullModel) -> float:
    """The ICS below which a bound lets a base be ruled out: never where Z could reach 3."""
    return min(ICS_CEILING, null.mean + Z_INDEPENDENT * max(null.std, 1e-6))


def shared_too_few(model: Sketch, base: Sketch) -> int | None:
    """The number of shared probe tokens when it is below 16 (the pair is not comparable), else None."""
    if model.key_digest != base.key_digest:
        return None
    k = len(model.tokens & base.tokens)
    return k if k < MIN_SHARED_TOKENS else None


def too_few_message(k: int) -> str:
    """What ``compare_fingerprints`` says of a pair sharing ``k`` < 16 probe tokens."""
    return (
        f"the models share only {k} of their probe tokens (need {MIN_SHARED_TOKENS}); "
        "their vocabularies have too little text in common to compare"
    )


def runs_neuron_test(model: Sketch, base: Sketch) -> bool:
    """Whether the full comparison would run the neuron test (both hold responses of like views)."""
    return bool(model.views) and model.views == base.views


def estimates(model: Sketch, base: Sketch) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated layer similarities [La, Lb] and response-Gram cosines [La_r, Lb_r] (x100)."""
    s = 100.0 * (model.terms[:, None] * base.terms[None, :]).sum(-1).mean(-1)
    r = None
    if len(model.responses) and len(base.responses):
        r = 100.0 * model.responses @ base.responses.T
    return s, r


def bounds(model: Sketch, base: Sketch) -> tuple[float | None, float | None, str]:
    """(ICS bound, response bound, why not) for a pair; a bound is None where the sketch cannot
    stand for the full comparison, and ``why`` then says which condition failed."""
    if model.version != base.version:
        return None, None, "sketch versions differ"
    if model.key_digest != base.key_digest:
        return None, None, "token keys differ"
    if model.tokens != base.tokens:
        return None, None, "probe-token sets differ"
    s, r = estimates(model, base)
    ics_b = best_alignment_mean(s + EST_MARGIN)
    if not runs_neuron_test(model, base):
        return ics_b, None, ""  # no neuron test would run: the verdict rests on Z alone
    if model.response_tokens != base.response_tokens:
        return ics_b, None, "response-token sets differ"
    if r is None:
        return ics_b, None, "no responses"
    return ics_b, float(r.max()) + EST_MARGIN, ""


def rule_out(model: Sketch, base: Sketch, null: NullModel) -> Decision:
    ics_b, resp_b, why = bounds(model, base)
    return decide(ics_b, resp_b, why, runs_neuron_test(model, base), null)


def decide(
    ics_b: float | None, resp_b: float | None, why: str, needs_response: bool, null: NullModel
) -> Decision:
    """The rule on stored bounds (a scan re-applies it with its current null)."""
    if ics_b is None:
        return Decision(False, None, None, why)
    if ics_b >= ics_margin(null):
        return Decision(False, ics_b, resp_b, f"ICS bound {ics_b:.1f} >= margin {ics_margin(null):.1f}")
    if needs_response:
        if resp_b is None:
            return Decision(False, ics_b, None, why or "no response bound")
        if resp_b >= RESPONSE_CEILING:
            return Decision(False, ics_b, resp_b, f"response bound {resp_b:.1f} >= {RESPONSE_CEILING:.0f}")
    return Decision(True, ics_b, resp_b, "ruled out")


__all__ = [
    "BUCKETS",
    "EST_MARGIN",
    "ICS_CEILING",
    "RESPONSE_CEILING",
    "SKETCH_VERSION",
    "Decision",
    "Sketch",
    "bounds",
    "compute_sketch",
    "decide",
    "estimates",
    "from_bytes",
    "ics_margin",
    "rule_out",
    "runs_neuron_test",
    "shared_too_few",
    "to_bytes",
    "too_few_message",
]
