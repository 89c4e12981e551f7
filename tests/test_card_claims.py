"""A model card's claimed base against the evidence: confirms, contradicts or cannot test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from huref.checkpoint.card import front_matter, read_claims, weigh_claims
from huref.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_with_card(tiny_zoo: Path, model: str, dst: Path, card: str) -> Path:
    shutil.copytree(tiny_zoo / model, dst)
    (dst / "README.md").write_text(card, encoding="utf-8")
    return dst


def test_front_matter_reads_base_model_string_or_list_and_relation(tmp_path: Path) -> None:
    assert front_matter("---\nbase_model: org/llama-a\nbase_model_relation: finetune\n---\n# card") == {
        "base_model": "org/llama-a",
        "base_model_relation": "finetune",
    }
    assert front_matter("# no front matter\nbase_model: x\n") == {}
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.md").write_text(
        "---\nbase_model:\n  - org/a\n  - org/b\nbase_model_relation: merge\n---\n"
    )
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "org/hinted"}))
    c = read_claims(folder)
    assert [x.base for x in c.claims] == ["org/a", "org/b"] and c.relation == "merge"
    assert [x.base for x in c.hints] == ["org/hinted"]


def test_card_yaml_cannot_construct_objects(tmp_path: Path) -> None:
    """A tag that would call a function under yaml.load is refused, and the card is reported unreadable."""
    folder = tmp_path / "m"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "README.md").write_text(
        f'---\nbase_model: !!python/object/apply:os.system ["touch {marker}"]\n---\n', encoding="utf-8"
    )
    c = read_claims(folder)
    assert not marker.exists()
    assert c.claims == () and c.card_error is not None and "not valid YAML" in c.card_error
    big = folder / "README.md"
    big.write_text("---\nbase_model: a\nx: '" + "y" * (70 * 1024) + "'\n---\n", encoding="utf-8")
    assert "larger than" in (read_claims(folder).card_error or "")


@pytest.mark.parametrize(
    ("card_base", "rows", "status", "unclaimed"),
    [
        ("org/llama-a", [("llama-a", "derived"), ("llama-b", "independent")], "confirms", []),
        ("org/llama-b", [("llama-a", "derived"), ("llama-b", "independent")], "contradicts", ["llama-a"]),
        ("org/llama-z", [("llama-a", "derived")], "cannot test", ["llama-a"]),
        ("org/llama-a", [("llama-a", "inconclusive")], "cannot test", []),
    ],
)
def test_claim_status_follows_the_verdict_against_the_claimed_base(
    tmp_path: Path, card_base: str, rows: list[tuple[str, str]], status: str, unclaimed: list[str]
) -> None:
    (tmp_path / "README.md").write_text(f"---\nbase_model: {card_base}\n---\n")
    out = weigh_claims(
        read_claims(tmp_path), [{"base": b, "verdict": v, "source": "registry"} for b, v in rows]
    )
    assert out["status"] == status and out["derived_from_unclaimed"] == unclaimed
    assert status in out["summary"]


def _audit(suspect: Path, tiny_zoo: Path, out: Path) -> tuple[dict, str]:
    args = ["audit", str(suspect), "-o", str(out), "--no-dogs", "--no-pcs"]
    for b in ("llama-a", "llama-b"):
        args += ["--base", str(tiny_zoo / b)]
    assert main(args) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.read_text()


def test_audit_says_a_wrong_claimed_base_is_contradicted(tiny_zoo: Path, tmp_path: Path) -> None:
    card = "---\nbase_model:\n- someorg/llama-b\n- <script>alert(1)</script>\nbase_model_relation: finetune\n---\n"
    suspect = _model_with_card(tiny_zoo, "llama-a-sft", tmp_path / "sft-claims-b", card)
    ev, html = _audit(suspect, tiny_zoo, tmp_path / "wrong.html")
    claim = ev["verdict"]["claim"]
    assert ev["verdict"]["verdict"] == "derived"
    assert claim["status"] == "contradicts", claim
    assert claim["derived_from_unclaimed"] == ["llama-a"]
    assert [(c["compared_as"], c["status"]) for c in claim["claims"]] == [
        ("llama-b", "contradicts"),
        (None, "cannot test"),
    ]
    section = html[html.index('<section id="verdict">') : html.index('<section id="identity">')]
    assert "contradicts" in section and "someorg/llama-b" in section and "llama-a" in section
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in section


def test_audit_says_the_true_claimed_base_is_confirmed(tiny_zoo: Path, tmp_path: Path) -> None:
    suspect = _model_with_card(
        tiny_zoo, "llama-a-sft", tmp_path / "sft-claims-a", "---\nbase_model: org/llama-a\n---\n"
    )
    ev, html = _audit(suspect, tiny_zoo, tmp_path / "right.html")
    claim = ev["verdict"]["claim"]
    assert claim["status"] == "confirms" and claim["derived_from_unclaimed"] == []
    assert (
        claim["claims"][0]["compared_as"] == "llama-a"
        and claim["claims"][0]["match"] == "final name component"
    )
    section = html[html.index('<section id="verdict">') : html.index('<section id="identity">')]
    assert "confirms" in section and "org/llama-a" in section


def test_scan_index_has_a_claimed_base_column(tiny_zoo: Path, tmp_path: Path) -> None:
    from huref.invariants import Settings
    from huref.registry.enroll import add_base
    from huref.registry.store import Store
    from huref.scan import ScanConfig, run_scan

    home = tmp_path / "home"
    with Store(home) as s:
        for name in ("llama-a", "llama-b"):
            add_base(s, tiny_zoo / name, name, family=name, settings=Settings(modes=("robust",)))
    zoo = tmp_path / "zoo"
    _model_with_card(tiny_zoo, "llama-a-sft", zoo / "claims-b", "---\nbase_model: org/llama-b\n---\n")
    _model_with_card(tiny_zoo, "llama-a-sft", zoo / "claims-a", "---\nbase_model: llama-a\n---\n")
    run_scan(ScanConfig(zoo, tmp_path / "out", home=home, progress=False, workers=1))
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    status = {m["name"]: m["claim"]["status"] for m in doc["models"]}
    assert status == {"claims-a": "confirms", "claims-b": "contradicts"}
    html = (tmp_path / "out" / "index.html").read_text()
    assert "<th>claimed base</th>" in html
    assert '<td class="claim" title="the evidence contradicts the claim' in html
