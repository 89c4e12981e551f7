"""The registry's records: a registered base and an independent pair."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Base:
    name: str
    family: str | None
    fingerprint: str  # SHA-256 of the fingerprint file
    weights: str  # digest of the weight-file SHA-256s: identity of the weights
    source: str
    architecture: str | None
    n_layers: int | None
    added: str


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    ics: float
    reason: str  # 'family' | 'declared'


def weights_digest(sha256s: dict[str, str] | list[str]) -> str:
    """One digest of a set of weight-file hashes (file names do not matter, contents do)."""
    values = sorted(sha256s.values() if isinstance(sha256s, dict) else sha256s)
    return hashlib.sha256("\n".join(values).encode()).hexdigest() if values else ""
