"""A comparison statistic is declared once (``huref.invariants.statistics``) and every consumer
derives from that declaration: ``huref compare --json`` and its text, an audit's report.json (its
schema too) and HTML page, and a scan's results.json (through the scan cache). A toy statistic,
the mean of the layer-similarity diagonal, is registered here and looked for in each of them,
with no other edit anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main
from huref.errors import ReportError
from huref.invariants.statistics import STATISTICS, Pair, Statistic, registered

# huref compare --json's keys before the registry existed, in their order: registering nothing
# must leave them exactly so
CORE_JSON_KEYS = [
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
]


def _diag_mean(p: Pair) -> float | None:
    import numpy as np

    if p.similarity is None:
        return None
    return round(float(np.mean(np.diagonal(p.similarity))), 4)


TOY = Statistic(
    name="toy_diag_mean",
    title="toy diagonal similarity",
    compute=_diag_mean,
    schema={"type": "number", "minimum": -100, "maximum": 100},
    text=lambda v: f"{v:.3f}",
    scan=True,
    doc="mean of the layer-similarity diagonal (a test statistic)",
)


@pytest.fixture
def toy() -> Iterator[Statistic]:
    with registered(TOY) as s:
        yield s
    assert "toy_diag_mean" not in STATISTICS


@pytest.fixture(scope="module")
def fps(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("stat-fps")
    files = {}
    for name in ("llama-a", "llama-b"):
        files[name] = out / f"{name}.safetensors"
        assert main(["fingerprint", str(tiny_zoo / name), "-o", str(files[name]), "--modes", "robust"]) == 0
    return files


def _compare(a: Path, b: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--no-registry", "--no-pcs", *extra]) == 0
    return capsys.readouterr().out


def _expected(doc: dict[str, Any]) -> float:
    s = doc["layer_similarity"]
    diag = [s[i][i] for i in range(min(len(s), len(s[0])))]
    return sum(diag) / len(diag)


def test_a_registered_statistic_appears_in_compare_json_and_text_after_the_core_keys(
    toy: Statistic, tiny_zoo: Path, fps: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(_compare(fps["llama-a"], tiny_zoo / "llama-a-sft", capsys, "--json"))
    assert list(doc) == [*CORE_JSON_KEYS, "toy_diag_mean"]
    assert doc["toy_diag_mean"] == pytest.approx(_expected(doc), abs=1e-3)
    assert doc["toy_diag_mean"] > 90  # the SFT derivative's layers stay similar to its base's
    text = _compare(fps["llama-a"], tiny_zoo / "llama-a-sft", capsys)
    line = next(x for x in text.splitlines() if x.startswith("toy diagonal similarity "))
    assert float(line.split()[-1]) == pytest.approx(doc["toy_diag_mean"], abs=1e-3)
    assert text.index("toy diagonal similarity") < text.index("verdict:")


def test_without_registered_statistics_the_compare_json_keeps_its_layout(
    fps: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert "toy_diag_mean" not in STATISTICS
    doc = json.loads(_compare(fps["llama-a"], fps["llama-b"], capsys, "--json"))
    assert list(doc) == CORE_JSON_KEYS
    assert doc["verdict"] == "independent"


def test_a_registered_statistic_appears_in_the_report_json_schema_and_html(
    toy: Statistic, tiny_zoo: Path, fps: dict[str, Path], tmp_path: Path
) -> None:
    from huref.report.html import validate_evidence

    out = tmp_path / "report.html"
    argv = ["audit", str(tiny_zoo / "llama-a-sft"), "--base", str(fps["llama-a"]), "-o", str(out)]
    assert main([*argv, "--base", str(fps["llama-b"]), "--no-pcs", "--no-dogs"]) == 0
    ev = json.loads(out.with_suffix(".json").read_text())
    rows = {Path(p["base"]).name: p for p in ev["passive"]}
    values = {name: rows[name]["toy_diag_mean"] for name in rows}
    assert values["llama-a"] > 90 > values["llama-b"]
    for p in ev["passive"]:
        assert p["toy_diag_mean"] == pytest.approx(_expected(p), abs=1e-3)
    page = out.read_text()
    assert "toy diagonal similarity" in page and "mean of the layer-similarity diagonal" in page
    for v in values.values():
        assert f"{v:.3f}" in page
    # the fragment is part of the schema the evidence is checked against: a wrong value is refused
    ev["passive"][0]["toy_diag_mean"] = "high"
    with pytest.raises(ReportError, match="toy_diag_mean"):
        validate_evidence(ev)
    ev["passive"][0]["toy_diag_mean"] = 250.0
    with pytest.raises(ReportError, match="toy_diag_mean"):
        validate_evidence(ev)


def test_a_registered_scan_statistic_appears_in_scan_results_and_survives_the_cache(
    toy: Statistic, tiny_zoo: Path, tmp_path: Path
) -> None:
    from huref.invariants import Settings
    from huref.registry.enroll import add_base
    from huref.registry.store import Store
    from huref.scan import ScanConfig, run_scan

    home = tmp_path / "home"
    with Store(home) as s:
        for name in ("llama-a", "llama-b"):
            add_base(s, tiny_zoo / name, name, family=name, settings=Settings(modes=("robust",)))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "suspect").symlink_to(tiny_zoo / "llama-a-sft", target_is_directory=True)
    docs = []
    for run in ("fresh", "cached"):
        # exhaustive: the sketch would rule llama-b out, and a ruled-out base has no row to show
        cfg = ScanConfig(zoo, tmp_path / run, home=home, progress=False, workers=1, exhaustive=True)
        report = run_scan(cfg)
        if run == "cached":
            assert report.stats["from_cache"] == 1 and report.stats["fingerprinted"] == 0
        docs.append(json.loads((tmp_path / run / "results.json").read_text()))
    assert docs[0]["models"] == docs[1]["models"]
    (entry,) = docs[0]["models"]
    rows = {r["base"]: r for r in entry["comparisons"]}
    assert rows["llama-a"]["toy_diag_mean"] > 90 > rows["llama-b"]["toy_diag_mean"]
    assert entry["best_base"] == "llama-a" and entry["verdict"] == "derived"
    assert entry["toy_diag_mean"] == rows["llama-a"]["toy_diag_mean"]
    page = (tmp_path / "fresh" / "index.html").read_text()  # a column of the scan's index too
    assert f"<th>{TOY.title}</th>" in page and f"{entry['toy_diag_mean']:.3f}" in page


def test_a_statistic_may_not_shadow_a_core_field_or_be_registered_twice(toy: Statistic) -> None:
    with pytest.raises(ValueError, match="shadow"):
        STATISTICS.add("ics", Statistic(name="ics", title="x", compute=lambda p: 0.0))
    with pytest.raises(ValueError, match="twice"):
        STATISTICS.add(TOY.name, TOY)
