"""A scan's accuracy against a zoo's ground truth (``zoo.json``), for tests and benchmarks.

Ground truth: a model derives from base B iff its ``root`` is B. A model counts as a positive
only when its root is registered (otherwise no scan could name it) and it is not that base
itself. Outcomes: TP (flagged ``derived`` from its root), FN (not flagged), WRONG (flagged, but
from another base), FP (a model with no registered root flagged ``derived``), TN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    name: str
    relation: str
    truth: str | None  # registered base it derives from, or None
    verdict: str | None
    best_base: str | None
    ics: float | None
    outcome: str  # TP | FN | WRONG | FP | TN | ERROR


def accuracy(
    models: list[dict[str, Any]], manifest: dict[str, Any], registered: set[str]
) -> tuple[list[Row], dict[str, int]]:
    by_name = {m["name"]: m for m in models}
    rows = []
    for z in manifest["models"]:
        m = by_name.get(z["name"])
        truth = z["root"] if z["root"] != z["name"] and z["root"] in registered else None
        if m is None or m["error"]:
            rows.append(Row(z["name"], z["relation"], truth, None, None, None, "ERROR"))
            continue
        flagged = m["best_base"] if m["verdict"] == "derived" else None
        if truth is not None:
            outcome = "TP" if flagged == truth else "FN" if flagged is None else "WRONG"
        else:
            outcome = "FP" if flagged else "TN"
        rows.append(Row(z["name"], z["relation"], truth, m["verdict"], m["best_base"], m["ics"], outcome))
    counts = {k: sum(1 for r in rows if r.outcome == k) for k in ("TP", "FN", "WRONG", "FP", "TN", "ERROR")}
    return rows, counts


def format_table(rows: list[Row], counts: dict[str, int]) -> str:
    w = max(len(r.name) for r in rows) if rows else 10
    lines = [
        f"{'model':<{w}}  {'relation':<28}  {'truth':<12}  {'verdict':<12}  {'best base':<18}  {'ICS':>6}  outcome"
    ]
    for r in rows:
        ics = "-" if r.ics is None else f"{r.ics:6.1f}"
        lines.append(
            f"{r.name:<{w}}  {r.relation:<28}  {r.truth or '-':<12}  {r.verdict or '-':<12}  "
            f"{r.best_base or '-':<18}  {ics:>6}  {r.outcome}"
        )
    pos = counts["TP"] + counts["FN"] + counts["WRONG"]
    neg = counts["FP"] + counts["TN"]
    lines.append(
        f"derivatives flagged from their base: {counts['TP']}/{pos}; wrong base: {counts['WRONG']}; missed: {counts['FN']}; "
        f"non-derivatives flagged: {counts['FP']}/{neg}; errors: {counts['ERROR']}"
    )
    return "\n".join(lines)
