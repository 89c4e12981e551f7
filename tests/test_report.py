"""The audit report: CLI, JSON schema, a real browser, and hostile strings from a model.

One report is generated through ``huref audit`` for a zoo derivative (llama-a-sft) against its base
and an independent base, with an FP-Vec section (a vector and key file made here), and opened in
headless Chromium (Debian's ``chromium`` driven by Playwright). The screenshot goes to
``test-artifacts/audit-report.png``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
SECTIONS = [
    "Verdict",
    "Suspect identity",
    "Passive evidence",
    "Dog images",
    "Active evidence (FP-Vec)",
    "Method notes",
    "Reproducibility",
]
HOSTILE_NAME = "evil\"'<script>alert(1)"
HOSTILE_CONFIG = "</script><script>alert(2)</script>\"'<img src=x onerror=alert(3)>"


def _chromium() -> str:
    for c in (os.environ.get("HUREF_CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if c and Path(c).is_file():
            return c
    pytest.skip("no chromium binary (CI installs Debian's chromium)")


def _audit(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture(scope="module")
def vector_and_keys(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real vector file of llama-a (its tau is the SFT delta) and fresh keys: cheap, no training."""
    from huref.fpvec import extract_vector, make_keys, save_keys

    d = tmp_path_factory.mktemp("fpvec")
    ks = make_keys(n=4, seed=7)
    save_keys(ks, d / "keys.json")
    vec = d / "llama-a.fpvec.safetensors"
    extract_vector(tiny_zoo / "llama-a", tiny_zoo / "llama-a-sft", vec, key_commitment=ks.commitment)
    return vec, d / "keys.json"


@pytest.fixture(scope="module")
def report(
    tiny_zoo: Path, vector_and_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    vec, keys = vector_and_keys
    out = tmp_path_factory.mktemp("audit") / "report.html"
    rc = _audit(
        [
            "audit",
            str(tiny_zoo / "llama-a-sft"),
            "--base",
            str(tiny_zoo / "llama-a"),
            "--base",
            str(tiny_zoo / "llama-b"),
            "--fpvec",
            str(vec),
            "--keys",
            str(keys),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    return out


def _open(html: Path, shot: Path) -> dict[str, Any]:
    """Load a report in headless Chromium; what it showed, logged and tried to fetch."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"console_errors": [], "page_errors": [], "requests": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(),
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
            page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            seen["headings"] = {
                h: page.get_by_role("heading", name=h, exact=True).first.is_visible() for h in SECTIONS
            }
            seen["verdict_text"] = page.locator("#verdict .verdict").inner_text()
            seen["verdict_visible"] = page.locator("#verdict .verdict").is_visible()
            seen["text"] = page.locator("body").inner_text()
            seen["scripts"] = page.locator("script").count()
            seen["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 5)])"
            )
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return seen


def test_report_json_validates_against_the_shipped_schema(
    report: Path, vector_and_keys: tuple[Path, Path]
) -> None:
    import jsonschema

    from huref.report import load_schema

    doc = json.loads(report.with_name("report.json").read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["verdict"]["verdict"] == "derived"
    assert doc["verdict"]["base"] == "llama-a"
    rows = {r["base"]: r for r in doc["passive"]}
    assert rows["llama-a"]["verdict"] == "derived" and rows["llama-b"]["verdict"] == "independent"
    (active,) = doc["active"]
    # keys made here were never trained in: the suspect must not answer them
    assert active["n"] == 4 and active["hits"] == 0 and active["near_miss_fsr"] == 0.0
    # nor rank them above decoys: 4 keys against 40 decoys, exchangeable for this suspect
    lt = active["likelihood"]
    assert (lt["n_keys"], lt["n_decoys"]) == (4, 40) and lt["p_value"] >= 0.01
    assert "key likelihood p" in report.read_text()
    # the report refers to the keys only through their commitment
    keys_path = vector_and_keys[1]
    assert str(keys_path) in doc["command"]  # the command line is recorded for reproducibility
    keys = json.loads(keys_path.read_text())["keys"]
    text = report.read_text() + report.with_name("report.json").read_text()
    assert not any(k in text for k in keys)


def test_schema_rejects_a_broken_report(report: Path) -> None:
    import jsonschema

    from huref.report import load_schema

    doc = json.loads(report.with_name("report.json").read_text())
    doc["verdict"]["verdict"] = "probably"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema())


def test_report_renders_in_headless_chromium(report: Path) -> None:
    shot = ARTIFACTS / "audit-report.png"
    seen = _open(report, shot)
    assert seen["verdict_visible"] and "derived" in seen["verdict_text"].lower()
    assert seen["headings"] == {h: True for h in SECTIONS}
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    # the only request is the page itself: images are data URIs, nothing leaves the page
    assert [u for u in seen["requests"] if not u.startswith("data:")] == [report.resolve().as_uri()]
    assert seen["images"] and all(ok and src == "data:" for ok, src in seen["images"])
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_hostile_model_name_and_config_render_as_inert_text(tiny_zoo: Path, tmp_path: Path) -> None:
    evil = tmp_path / HOSTILE_NAME
    shutil.copytree(tiny_zoo / "llama-a-int8", evil)
    cfg = json.loads((evil / "config.json").read_text())
    cfg["_name_or_path"] = HOSTILE_CONFIG
    cfg["huref_note"] = HOSTILE_CONFIG
    (evil / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "evil-report.html"
    assert _audit(["audit", str(evil), "--base", str(tiny_zoo / "llama-a"), "-o", str(out)]) == 0
    raw = out.read_text()
    assert "<script>alert" not in raw and "<img src=x" not in raw
    seen = _open(out, ARTIFACTS / "audit-report-hostile.png")
    assert seen["dialogs"] == [] and seen["scripts"] == 0
    assert seen["page_errors"] == [] and seen["console_errors"] == []
    # shown literally, as text
    assert HOSTILE_NAME in seen["text"]
    assert HOSTILE_CONFIG in seen["text"]
    doc = json.loads(out.with_name("evil-report.json").read_text())
    assert doc["suspect"]["name"] == HOSTILE_NAME


def test_audit_with_nothing_to_compare_exits_2_and_writes_nothing(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.html"
    assert _audit(["audit", str(tiny_zoo / "llama-a-sft"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to compare" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_audit_with_keys_of_another_vector_is_refused(
    tiny_zoo: Path, vector_and_keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from huref.fpvec import make_keys, save_keys

    vec, _ = vector_and_keys
    other = tmp_path / "other-keys.json"
    save_keys(make_keys(n=4, seed=8), other)
    out = tmp_path / "r.html"
    rc = _audit(
        ["audit", str(tiny_zoo / "llama-a-sft"), "--fpvec", str(vec), "--keys", str(other), "-o", str(out)]
    )
    assert rc == 2
    assert "do not belong" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("r.json").exists()


@pytest.mark.parametrize(
    ("make", "extra", "needle"),
    [
        (lambda d: (d / "r.html").mkdir(), [], "r.html is a folder"),
        (lambda d: (d / "r.json").mkdir(), [], "r.json is a folder"),
        # -o MODEL/config.html would have replaced the model's config.json with the evidence
        (
            lambda d: (d / "r.json").write_text('{"model_type": "llama"}'),
            [],
            "r.json exists and is not a huref report",
        ),
        (
            lambda d: (d / "r.html").write_text("<html><title>notes</title></html>"),
            [],
            "r.html exists and is not a huref report",
        ),
        (lambda d: os.mkfifo(d / "r.json"), [], "r.json exists and is not a regular file"),
        (lambda d: None, ["--fail-on", "derivd"], "--fail-on takes one of"),
    ],
)
def test_an_audit_that_cannot_be_written_is_refused_before_the_work(
    make: Any,
    extra: list[str],
    needle: str,
    tiny_zoo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huref.report.audit as audit

    monkeypatch.setattr(audit, "gather", lambda *a, **k: pytest.fail("the audit ran"))
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [
        "audit",
        str(tiny_zoo / "llama-a-sft"),
        "--base",
        str(tiny_zoo / "llama-a"),
        "-o",
        str(tmp_path / "r.html"),
    ]
    assert _audit(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error: ") and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_report_goes_into_a_folder_that_does_not_exist_yet(report: Path, tmp_path: Path) -> None:
    """The demo and scans write audits into fresh folders: they are created, not refused."""
    from huref.report.html import write_report

    ev = json.loads(report.with_name("report.json").read_text())
    html_path, json_path = write_report(ev, tmp_path / "new" / "deeper" / "r.html")
    assert html_path.is_file() and json_path.is_file()
    assert json.loads(json_path.read_text()) == ev


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        (("passive", 0, "ics_paper"), "non-finite number (nan) at $.passive[0].ics_paper"),
        (("passive", 0, "shared_tokens"), "non-finite number (nan) at $.passive[0].shared_tokens"),
        (("active", 0, "seconds"), "cannot be written as JSON"),  # a field the schema leaves open
    ],
    ids=["schema-number", "schema-integer", "outside-the-schema"],
)
def test_a_non_finite_number_in_the_evidence_is_an_error_not_invalid_json(
    path: tuple[Any, ...], needle: str, report: Path, tmp_path: Path
) -> None:
    """JSON has no NaN: json.dumps would write the bare word NaN, which no JSON reader accepts."""
    from huref.errors import ReportError
    from huref.report.html import write_report

    ev = json.loads(report.with_name("report.json").read_text())
    *where, key = path
    node = ev
    for k in where:
        node = node[k]
    node[key] = float("nan")
    with pytest.raises(ReportError) as e:
        write_report(ev, tmp_path / "r.html")
    assert needle in str(e.value) and "bug" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_report_replaces_an_earlier_huref_report(report: Path, tmp_path: Path) -> None:
    """Recognised by the page's generator tag (or an older page's title) and the evidence's schema."""
    from huref.report.html import PAGE_MARK, write_report

    ev = json.loads(report.with_name("report.json").read_text())
    html_path, json_path = write_report(ev, tmp_path / "r.html")
    assert PAGE_MARK in html_path.read_text()[:4096]
    write_report(ev, html_path)  # again: its own earlier report
    older = "\n".join(ln for ln in html_path.read_text().splitlines() if PAGE_MARK not in ln)
    html_path.write_text(older)  # a page written before the generator tag
    write_report(ev, html_path)
    assert PAGE_MARK in html_path.read_text() and json.loads(json_path.read_text()) == ev


@pytest.mark.parametrize(
    ("log10_p", "shown"),
    [
        (-5.96, "1.1e-6"),  # inconclusive
        (-6.04, "9.1e-7"),  # derived: p < 1e-6
        (-6.0, "1.0e-6"),  # not below the threshold: inconclusive
        (-6.0017, "9.9e-7"),  # 9.96e-7 rounds within its decade, not up to 1.0e-6
        (-2.0, "0.01"),
        (-2.0001, "9.9e-3"),  # just below the independence threshold
        (-0.8, "0.158"),
        (-1234.56, "2.8e-1235"),  # far below float range: from the logarithm
        (float("-inf"), "0"),
        (None, "n/a"),
    ],
)
def test_p_values_on_either_side_of_a_threshold_never_print_the_same(
    log10_p: float | None, shown: str
) -> None:
    from huref.invariants.stats import format_log10_p

    assert format_log10_p(log10_p) == shown


def test_the_page_shows_p_values_either_side_of_1e_6_apart(report: Path) -> None:
    """The passive p came from log10 as '1e-6.0' for both 1.1e-6 (inconclusive) and 9.1e-7
    (derived), and the active one as %.1e, which gives 1.0e-06 for 9.96e-7."""
    from huref.report.html import render_html

    ev = json.loads(report.with_name("report.json").read_text())
    ev["passive"][0]["log10_p_value"], ev["passive"][1]["log10_p_value"] = -5.96, -6.04
    ev["active"][0]["likelihood"]["p_value"] = 9.96e-7
    page = render_html(ev)
    assert ">1.1e-6<" in page and ">9.1e-7<" in page and ">9.9e-7<" in page
    assert "1e-6.0" not in page and "1.0e-06" not in page


def test_each_dog_is_captioned_with_what_its_cosine_means(report: Path) -> None:
    """The SFT suspect's dog sits with its base's (derived-like) and apart from the independent
    base's, and the page says so in words; a report written before the caption still renders."""
    from huref.encoder.closeness import closeness
    from huref.report.html import render_html

    ev = json.loads(report.with_name("report.json").read_text())
    dogs = {d["base"]: d for d in ev["dogs"]["bases"]}
    for d in dogs.values():
        assert d["closeness"] == {"band": closeness(d["cosine"]).band, "text": closeness(d["cosine"]).text}
    assert dogs["llama-a"]["closeness"]["band"] == "derived-like"
    assert dogs["llama-b"]["closeness"]["band"] == "unrelated-like"
    page = render_html(ev)
    assert f"cosine {dogs['llama-a']['closeness']['text']}" in page
    for d in ev["dogs"]["bases"]:
        del d["closeness"]
    old = render_html(ev)
    assert 'class="closeness' not in old and "(cosine " in old
