"""bench/lineage.py: the pairs file is checked up front, only derived/independent pairs are scored,
each pair once, each model fingerprinted once, and hub models are found where huggingface_hub puts
them and nowhere else."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from huref.errors import CheckpointError
from huref.invariants import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_PAIRS = REPO.parent / "shared" / "lineage_pairs.csv"
HEADER = "model_a,model_b,label,relation\n"
AMBIGUOUS = "ambiguous (listed as similar, provenance=none)"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("lineage_bench", REPO / "bench" / "lineage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


lineage = _load()


def _csv(tmp_path: Path, body: str | bytes, name: str = "pairs.csv") -> Path:
    p = tmp_path / name
    if isinstance(body, str):
        p.write_text(body, encoding="utf-8")
    else:
        p.write_bytes(body)
    return p


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (HEADER + "org/a,org/b,derived,sft\norg/a,org/c\n", ":3: 2 fields, the header has 4"),
        (HEADER + "org/a,org/b,derived,sft,extra\n", ":2: 5 fields, the header has 4"),
        ("model_a,model_b,relation\norg/a,org/b,sft\n", "lacks the column(s) label"),
        ("model_a,model_b,label,label\norg/a,org/b,derived,x\n", "names label more than once"),
        ("", "empty; the header must name model_a, model_b, label"),
        ((HEADER + "org/a,org/\xe9,derived,sft\n").encode("latin-1"), "not UTF-8 text"),
        (
            HEADER + "org/a,org/b,derived," + "x" * 200_000 + "\n",
            ":2: not CSV: field larger than field limit",
        ),
    ],
)
def test_a_malformed_pairs_file_is_one_line_and_exit_2_before_any_work(
    body: str | bytes,
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huref.zoo.build

    def no_zoo(*a: Any, **k: Any) -> None:
        raise AssertionError("the zoo was built before the pairs file was checked")

    monkeypatch.setattr(huref.zoo.build, "build_zoo", no_zoo)
    p = _csv(tmp_path, body)
    assert lineage.main(["--pairs", str(p), "--zoo", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lineage.py: error: ") and needle in err[0], err


def test_a_missing_pairs_file_or_models_dir_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lineage.main(["--pairs", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: cannot be read" in capsys.readouterr().err
    p = _csv(tmp_path, HEADER)
    assert lineage.main(["--pairs", str(p), "--models-dir", str(tmp_path / "nowhere")]) == 2
    assert "--models-dir" in capsys.readouterr().err


def test_a_header_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    p = _csv(tmp_path, ("\ufeff" + HEADER + "org/a,org/b,derived,sft\n").encode("utf-8"))
    pl = lineage.read_pairs(p)
    assert [(x.a, x.b, x.derived, x.relation) for x in pl.pairs] == [("org/a", "org/b", True, "sft")]


def test_only_derived_and_independent_pairs_are_scored_the_others_counted(tmp_path: Path) -> None:
    body = HEADER + f'org/a,org/b,derived,sft\norg/a,org/c,independent,x\norg/b,org/c,"{AMBIGUOUS}",none\n'
    pl = lineage.read_pairs(_csv(tmp_path, body))
    assert [(x.b, x.derived) for x in pl.pairs] == [("org/b", True), ("org/c", False)]
    assert pl.other_labels == {AMBIGUOUS: 1}
    assert "1 left out for a label other than derived/independent" in pl.summary()


def test_a_pair_listed_twice_in_either_order_is_scored_once_and_disagreement_left_out(tmp_path: Path) -> None:
    body = HEADER + (
        "org/a,org/b,derived,sft\n"
        "org/a,org/b,derived,official instruct\n"  # the same pair again
        "org/b,org/a,derived,child of parent\n"  # the same pair, the other way round
        "org/c,org/d,derived,sft\n"
        "org/d,org/c,independent,none\n"  # the rows disagree: the pair is left out
        "org/e,org/e,derived,x\n"  # a model with itself
    )
    pl = lineage.read_pairs(_csv(tmp_path, body))
    assert [(x.a, x.b, x.relation, x.line) for x in pl.pairs] == [("org/a", "org/b", "sft", 2)]
    assert pl.duplicate_rows == 2 and pl.self_pairs == 1
    assert len(pl.conflicts) == 1 and "org/c / org/d (derived, independent; lines 5, 6)" in pl.conflicts[0]


def test_the_shared_pairs_file_scores_each_pair_once_with_a_known_label() -> None:
    if not SHARED_PAIRS.is_file():
        pytest.skip("../shared/lineage_pairs.csv is absent")
    with open(SHARED_PAIRS, encoding="utf-8-sig", newline="") as f:
        raw = list(csv.DictReader(f))
    pl = lineage.read_pairs(SHARED_PAIRS)
    keys = [frozenset((p.a, p.b)) for p in pl.pairs]
    assert len(keys) == len(set(keys))
    other = sum(1 for r in raw if r["label"] not in ("derived", "independent"))
    assert sum(pl.other_labels.values()) == other > 0
    assert (
        pl.rows == len(raw) == len(pl.pairs) + other + pl.duplicate_rows + len(pl.conflicts) + pl.self_pairs
    )
    assert pl.duplicate_rows > 0


def test_the_hub_cache_is_found_by_huggingface_hub_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lineage.hub_cache() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lineage.hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert lineage.hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert lineage.hub_cache() == tmp_path / "cache"


def _snapshot(cache: Path, model_id: str, commit: str) -> Path:
    d = cache / ("models--" + model_id.replace("/", "--")) / "snapshots" / commit
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_the_snapshot_used_is_the_one_refs_main_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    old, new = "0" * 40, "f" * 40  # the old one sorts first
    only = _snapshot(cache, "org/m", old)
    assert lineage.resolve_local("org/m", None) == (only, None)  # no refs/main: the only snapshot
    main_snap = _snapshot(cache, "org/m", new)
    path, why = lineage.resolve_local("org/m", None)  # two snapshots, no refs/main: which is main?
    assert path is None and "2 snapshots and no refs/main" in why
    refs = cache / "models--org--m" / "refs"
    refs.mkdir()
    (refs / "main").write_text(new)
    assert lineage.resolve_local("org/m", None) == (main_snap, None)
    (refs / "main").write_text("1" * 40)
    path, why = lineage.resolve_local("org/m", None)
    assert path is None and "refs/main names snapshot 111111111111, which is absent" in why
    assert lineage.resolve_local("org/absent", None) == (None, None)


@pytest.mark.parametrize(
    "model_id", ["", "/etc", "../outside", "org/../../outside", "a/b/c", "org/..", "org--x", " "]
)
def test_an_id_that_is_not_owner_slash_name_is_skipped_with_a_reason(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    for d in (models, tmp_path / "outside", models / "org"):  # each would pass as a model if reached
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text("{}")
    path, why = lineage.resolve_local(model_id, models)
    assert path is None and "is not a model id" in why
    pl = lineage.PairList(rows=1, pairs=[lineage.HubPair(model_id, "org/b", "x", True, 2)])
    rows, skipped = lineage.hub_rows(pl, models, Settings(), fingerprint=lambda p, s: pytest.fail(str(p)))
    assert rows == [] and skipped == {"invalid id": 1}


def test_each_model_is_fingerprinted_once_and_failed_pairs_are_counted_as_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    for name in ("org/base", "org/deriv", "org--other", "org/broken"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    calls: list[str] = []

    def fake_fingerprint(path: Path, settings: Settings) -> str:
        calls.append(path.name)
        if path.name == "broken":
            raise CheckpointError(f"{path}: truncated")
        return f"fp:{path.name}"

    hp = lineage.HubPair
    pl = lineage.PairList(
        rows=6,
        pairs=[
            hp("org/base", "org/deriv", "sft", True, 2),
            hp("org/base", "org/other", "none", False, 3),
            hp("org/deriv", "org/other", "none", False, 4),
            hp("org/base", "org/broken", "sft", True, 5),
            hp("org/deriv", "org/broken", "sft", True, 6),
            hp("org/base", "org/absent", "sft", True, 7),
        ],
    )
    rows, skipped = lineage.hub_rows(pl, models, Settings(), fingerprint=fake_fingerprint)
    assert sorted(calls) == ["base", "broken", "deriv", "org--other"]  # once each, the failure too
    assert [(r.a, r.b, r.fa, r.fb) for r in rows] == [
        ("org/base", "org/deriv", "fp:base", "fp:deriv"),
        ("org/base", "org/other", "fp:base", "fp:org--other"),
        ("org/deriv", "org/other", "fp:deriv", "fp:org--other"),
    ]
    assert not any(r.zoo for r in rows)
    assert skipped == {"fingerprint failed": 2, lineage.NOT_LOCAL: 1}
    assert capsys.readouterr().out.count("truncated") == 2
