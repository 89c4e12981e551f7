"""What a dog cosine means: where it falls among the cosines measured on models of known lineage.

A report shows two dogs and the cosine of their vectors z. On its own the number says little, so
the caption places it among reference ranges measured with the shipped encoder
(``huref-dog-encoder-v1``, the one audits use) on the tiny, demo and realistic zoos, the realistic
zoo's same-corpus bases included (gpt2-c/d and llama-c: independent models of one corpus and
tokenizer): every derivative against its root base, and every model against every base of another
root. The ranges are measurements, not fitted thresholds; ``bench/encoder_eval.py`` prints the band
of each pair it measures. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """The cosines of one kind of measured pair: [low, high] over ``pairs`` (model, base) pairs (two
    bases count once each way)."""

    what: str
    low: float
    high: float
    pairs: int


DERIVED = Reference(
    "derivatives other than continued pretraining at a high learning rate (fine-tuning, LoRA, "
    "merges, quantization, pruning, vocabulary expansion, upcycling, disguises; continued "
    "pretraining at a realistic rate)",
    0.856,
    1.000,
    102,
)
STRESS_CPT = Reference(
    "continued pretraining at a high learning rate for as long as pretraining (stress derivatives)",
    0.450,
    0.781,
    10,
)
SAME_DATA = Reference(
    "independent GPT-2-style models trained to a plateau on one corpus with one tokenizer (and "
    "their derivatives against the other bases)",
    0.595,
    0.646,
    18,
)
UNRELATED = Reference("every other independent pair", -0.140, 0.307, 1094)


BANDS = ("derived-like", "between", "ambiguous", "unrelated-like")


@dataclass(frozen=True)
class Closeness:
    band: str  # one of BANDS
    text: str


def closeness(cos: float) -> Closeness:
    """The band a dog cosine falls in, with a sentence saying what was measured there."""
    c = f"{cos:.2f}"
    stress = f"{STRESS_CPT.low:.2f}-{STRESS_CPT.high:.2f}"
    if cos >= DERIVED.low:
        return Closeness(
            "derived-like",
            f"{c}: as close as derived models ({DERIVED.low:.2f}-{DERIVED.high:.2f} for {DERIVED.what}); "
            f"no independent pair measured came above {SAME_DATA.high:.2f}.",
        )
    if cos > SAME_DATA.high:
        return Closeness(
            "between",
            f"{c}: closer than any independent pair measured (at most {SAME_DATA.high:.2f}), further "
            f"than fine-tuned or merged models (at least {DERIVED.low:.2f}); heavy continued "
            f"pretraining lands here ({stress}).",
        )
    if cos > UNRELATED.high:
        return Closeness(
            "ambiguous",
            f"{c}: the picture cannot tell. Independent models trained on the same data reached "
            f"{SAME_DATA.low:.2f}-{SAME_DATA.high:.2f}, and heavy continued pretraining fell to "
            f"{STRESS_CPT.low:.2f}; the statistics above decide.",
        )
    return Closeness(
        "unrelated-like",
        f"{c}: where unrelated models sit ({UNRELATED.low:.2f} to {UNRELATED.high:.2f}); no derivative "
        f"measured fell below {STRESS_CPT.low:.2f}.",
    )


__all__ = [
    "BANDS",
    "DERIVED",
    "SAME_DATA",
    "STRESS_CPT",
    "UNRELATED",
    "Closeness",
    "Reference",
    "closeness",
]
