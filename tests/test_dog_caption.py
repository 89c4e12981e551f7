"""The dog caption places a cosine among the cosines measured on pairs of known lineage."""

from __future__ import annotations

import pytest

from huref.encoder.closeness import BANDS, DERIVED, SAME_DATA, STRESS_CPT, UNRELATED, closeness


def test_the_reference_ranges_are_ordered_as_the_bands_assume() -> None:
    # derived models sit above every independent pair; stress CPT overlaps the same-data pairs
    assert UNRELATED.high < SAME_DATA.low < SAME_DATA.high < DERIVED.low <= DERIVED.high <= 1.0
    assert STRESS_CPT.low < SAME_DATA.high < STRESS_CPT.high < DERIVED.low
    assert all(r.pairs > 0 for r in (DERIVED, STRESS_CPT, SAME_DATA, UNRELATED))


@pytest.mark.parametrize(
    ("cos", "band", "says"),
    [
        (0.997, "derived-like", "as close as derived models"),
        (DERIVED.low, "derived-like", "no independent pair measured came above 0.65"),
        (0.70, "between", "closer than any independent pair measured"),
        (0.58, "ambiguous", "the picture cannot tell"),  # the demo's stamped suspect sits here
        (0.619, "ambiguous", "Independent models trained on the same data reached 0.59-0.65"),
        (0.20, "unrelated-like", "where unrelated models sit"),
        (-0.5, "unrelated-like", "no derivative measured fell below 0.45"),
    ],
)
def test_each_band_says_what_was_measured_there(cos: float, band: str, says: str) -> None:
    c = closeness(cos)
    assert c.band == band and c.band in BANDS
    assert c.text.startswith(f"{cos:.2f}: ") and says in c.text


def test_bands_follow_the_cosine_monotonically() -> None:
    order = [closeness(x / 100).band for x in range(-100, 101)]
    ranks = [BANDS.index(b) for b in order]
    assert ranks == sorted(ranks, reverse=True)
    assert set(order) == set(BANDS)
