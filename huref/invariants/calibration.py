"""The numbers of the statistics that need no tensors: the Z null, Fisher's combination of
p-values kept as log10, and p-values written for people.

Apart from the neuron test (``huref.invariants.stats``), so that commands answered from caches
(a second scan, the registry's listing) can build verdicts and print them without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

LN10 = math.log(10.0)


def format_log10_p(log10_p: float | None) -> str:
    """A p-value kept as log10 p, for people: as a decimal from 0.01 up ('0.16'), below that as
    mantissa and exponent computed from the logarithm ('9.1e-7', '2.8e-1235': no underflow).

    The mantissa is rounded within its decade (p = 9.96e-7 shows as 9.9e-7, not 1.0e-6), so p on
    either side of a power-of-ten threshold (the verdicts' 1e-6 and 0.01) never prints the same."""
    if log10_p is None or math.isnan(log10_p):
        return "n/a"
    if log10_p == -math.inf:
        return "0"
    if log10_p >= -2:
        return f"{10.0**log10_p:.3g}"
    e = math.floor(log10_p)
    m = min(round(10.0 ** (log10_p - e), 1), 9.9)
    return f"{m:.1f}e{e}"


def format_p(p: float) -> str:
    """``format_log10_p`` of a p-value given as a number."""
    return format_log10_p(math.log10(p)) if p > 0 else "0"


def combine_log10(ps: list[float]) -> float:
    """Fisher's method on log10 p-values, in log space.

    X = -2 sum ln p_i is chi-square with 2L degrees of freedom under the null; for even degrees
    of freedom its survival function has the closed form exp(-X/2) sum_{i<L} (X/2)^i / i!, which
    is evaluated here as a log-sum-exp so that p-values far below 1e-308 stay exact.
    """
    if not ps:
        return 0.0
    half = -LN10 * sum(ps)  # X / 2
    if half <= 0:
        return 0.0
    logs = [i * math.log(half) - math.lgamma(i + 1) for i in range(len(ps))]
    top = max(logs)
    lse = top + math.log(sum(math.exp(v - top) for v in logs))
    return min(0.0, (-half + lse) / LN10)


@dataclass(frozen=True)
class NullModel:
    """Distribution of robust ICS between independently trained models."""

    mean: float
    std: float
    n_pairs: int
    source: str

    def z(self, ics: float) -> float:
        return (ics - self.mean) / max(self.std, 1e-6)


# Built-in null, used while the registry holds fewer than 5 independent pairs. Measured on the
# tiny zoo's 11 comparable independent base pairs (bench/lineage.py); the spread is inflated by 1.5x so a
# small sample does not make Z overconfident.
BUILTIN_NULL = NullModel(
    mean=6.9, std=7.7, n_pairs=11, source="built-in: tiny-zoo independent base pairs (mean 6.9, sd 5.1 x1.5)"
)


def null_from_values(values: list[float], source: str) -> NullModel:
    xs = [float(v) for v in values]
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 1.0
    return NullModel(mean, std, len(xs), source)
