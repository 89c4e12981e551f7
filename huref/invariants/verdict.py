"""The verdict policy of a comparison: thresholds on the neuron test's p-value and on Z.

Its own module, free of tensors, so that a scan answered from its cache derives verdicts from
cached numbers with the same rule as a fresh comparison, without importing torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huref.invariants.calibration import NullModel

P_DERIVED = 1e-6
P_INDEPENDENT = 0.01
Z_DERIVED = 6.0
Z_INDEPENDENT = 3.0
VERDICT_RULE = (
    "derived if the neuron-matching test gives p < 1e-6 (or, without a test, Z >= 6); independent if "
    "p >= 0.01 and Z < 3; inconclusive otherwise"
)

__all__ = [
    "P_DERIVED",
    "P_INDEPENDENT",
    "VERDICT_RULE",
    "Z_DERIVED",
    "Z_INDEPENDENT",
    "judge",
    "verdict_for",
]


def verdict_for(log10_p: float | None, z: float | None) -> str:
    if log10_p is not None:
        if log10_p < math.log10(P_DERIVED):
            return "derived"
        if log10_p >= math.log10(P_INDEPENDENT) and (z is None or z < Z_INDEPENDENT):
            return "independent"
        return "inconclusive"
    if z is None:
        return "inconclusive"
    if z >= Z_DERIVED:
        return "derived"
    return "independent" if z < Z_INDEPENDENT else "inconclusive"


def judge(ics: float | None, log10_p: float | None, null: NullModel) -> tuple[float | None, str]:
    """(Z, verdict) of a comparison from its robust ICS and neuron-test log10 p, against ``null``:
    what ``huref compare`` computes fresh and a scan recomputes from its cached columns."""
    z = None if ics is None else null.z(ics)
    return z, verdict_for(log10_p, z)
