"""The registry of comparison statistics: one declaration per statistic, read by every consumer.

A statistic declares its name (its JSON key), how it is computed from a compared pair (the
``Pair`` below: both fingerprints and the intermediate results the comparison has already
computed, so a statistic never recomputes the shared terms or the layer alignment), the JSON
schema of its value, how it reads as text, and whether the batch scan keeps it. From that one
declaration:

- ``huref compare --json`` and the ``Comparison`` record carry it as a top-level key
  (``Comparison.to_json`` flattens ``Comparison.stats``);
- ``huref compare`` prints its line before the verdict;
- an audit's ``report.json`` carries it in each passive row, the report schema accepts it
  (``schema_properties`` is merged into the passive row when the evidence is validated) and the
  HTML page shows it in the per-base "further statistics" table;
- a scan stores it with each cached comparison (``scan=True``) and results.json shows it in
  every comparison row and, for the best base, in the model's entry.

The verdict does not read registered statistics: its rule is ``huref.invariants.verdict`` alone,
the same for a fresh comparison and for a scan answered from its cache.

This module imports neither numpy nor torch (cached scans read it); a statistic's ``compute``
imports what it needs when it runs. A statistic added later shows null in scan results for pairs
cached before it was registered (the cache is keyed by huref's version, so a release recomputes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from huref.plugins import Registry

if TYPE_CHECKING:
    import numpy as np

    from huref.invariants.calibration import NullModel
    from huref.invariants.fingerprint import Fingerprint

# keys the comparison record and its consumers already spell out: a statistic may not take them
CORE_KEYS = frozenset(
    {
        "a",
        "b",
        "ics",
        "ics_paper",
        "pcs",
        "z",
        "p_value",
        "log10_p_value",
        "layer_alignment",
        "verdict",
        "rule",
        "shared_tokens",
        "shared_tokens_paper",
        "layer_similarity",
        "layer_tests",
        "null",
        "expert_origin",
        "expert_matches",
        "stats",
        # keys the audit row and the scan row add around a comparison
        "base",
        "source",
        "comparable",
        "error",
        "base_layers",
        "expert_summary",
        "match_summary",
    }
)


@dataclass(frozen=True)
class Pair:
    """What a statistic sees: the two fingerprints and the comparison's intermediate results.

    Robust-mode fields are None (or empty) when either fingerprint has no robust terms."""

    fa: Fingerprint
    fb: Fingerprint
    null: NullModel
    terms_a: np.ndarray | None  # [layers_a, ...] robust terms restricted to the shared tokens
    terms_b: np.ndarray | None
    similarity: np.ndarray | None  # [layers_a, layers_b] robust layer similarity, 0-100
    alignment: tuple[tuple[int, int, float], ...]  # monotone layer alignment (layer_a, layer_b, score)
    ics: float | None
    z: float | None
    log10_p: float | None
    shared_tokens: int


def _plain(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Statistic:
    """One registered comparison statistic (see the module notes for where it appears)."""

    name: str  # its JSON key
    title: str  # its label in the CLI text and the report
    compute: Callable[[Pair], Any]  # a JSON value: number, string, list or object (None: not available)
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "number"})  # of a non-null value
    text: Callable[[Any], str] = _plain  # the value as the CLI and the report show it
    scan: bool = False  # kept with each cached scan comparison and shown in results.json
    doc: str = ""  # one sentence for the report's method notes


class StatisticRegistry(Registry[Statistic]):
    """The registry, refusing names the comparison record already uses; removable for tests."""

    def add(self, name: str, item: Statistic) -> Statistic:
        if name != item.name:
            raise ValueError(f"statistic {item.name!r} registered under another name, {name!r}")
        if name in CORE_KEYS:
            raise ValueError(f"statistic {name!r} would shadow a field of the comparison record")
        return super().add(name, item)

    def remove(self, name: str) -> None:
        self.get(name)  # an unknown name is refused with the registry's own message
        del self._items[name]

    def in_order(self) -> list[Statistic]:
        """Statistics in registration order (their order in the JSON, the CLI and the report)."""
        return list(self._items.values())


STATISTICS = StatisticRegistry("comparison statistic")


def register(stat: Statistic) -> Statistic:
    return STATISTICS.add(stat.name, stat)


@contextmanager
def registered(stat: Statistic) -> Iterator[Statistic]:
    """A statistic registered for the duration of a block (plug-in trials and tests)."""
    register(stat)
    try:
        yield stat
    finally:
        STATISTICS.remove(stat.name)


# -- what the consumers derive from the registry -----------------------------------------------


def compute_all(pair: Pair) -> dict[str, Any]:
    return {s.name: s.compute(pair) for s in STATISTICS.in_order()}


def text_lines(values: Mapping[str, Any]) -> list[str]:
    """One line per registered statistic present in ``values`` (a comparison's JSON or stats)."""
    return [f"{s.title} {s.text(values[s.name])}" for s in STATISTICS.in_order() if s.name in values]


def report_rows(values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(title, value as text, doc) per registered statistic present in an audit's passive row."""
    return [
        (s.title, "n/a" if values[s.name] is None else s.text(values[s.name]), s.doc)
        for s in STATISTICS.in_order()
        if s.name in values
    ]


def schema_properties() -> dict[str, Any]:
    """JSON-schema properties of the registered statistics (each value may also be null)."""
    return {s.name: {"anyOf": [dict(s.schema), {"type": "null"}]} for s in STATISTICS.in_order()}


def scan_names() -> list[str]:
    return [s.name for s in STATISTICS.in_order() if s.scan]


def scan_values(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """The scan-kept statistics of a cached comparison (null where it was cached without one)."""
    stats = stats or {}
    return {n: stats.get(n) for n in scan_names()}
