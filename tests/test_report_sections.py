"""A report section is declared once (``huref.report.sections``) and the audit, the report schema
and the page derive from that declaration. Two toy sections, one shown as a section of the page
(its partial a template file) and one inside the verdict box (its partial a string), are
registered here and looked for in report.json, in the schema it is validated against and in the
HTML page, with no other edit anywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main
from huref.errors import ReportError
from huref.report.sections import SECTIONS, AuditInputs, Section, in_slot, registered

HOSTILE = "<script>alert('toy')</script>\"&"


def _toy_gather(inputs: AuditInputs) -> dict[str, Any]:
    passive = inputs.gathered["passive"]
    return {
        "layers": inputs.suspect.cfg.n_layers,
        "bases": [c.name for c in inputs.candidates],
        "derived_from": [p["base"] for p in passive if p["verdict"] == "derived"],
        "seen": sorted(inputs.gathered),  # the sections gathered before this one
        "note": HOSTILE,  # a string the page must show as text
    }


TOY_SCHEMA = {
    "type": "object",
    "required": ["layers", "bases", "derived_from", "seen", "note"],
    "properties": {
        "layers": {"type": "integer", "minimum": 1},
        "bases": {"type": "array", "items": {"type": "string"}},
        "derived_from": {"type": "array", "items": {"type": "string"}},
        "seen": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string"},
    },
}

TOY_PARTIAL = (
    '<p class="note">{{ value.layers }} layers; bases {{ value.bases | join(", ") }}; '
    "derived from {{ value.derived_from | join(', ') }}; saw {{ value.seen | join(' ') }}</p>\n"
    '<p id="toy-note">{{ value.note }}</p>\n'
    '<p id="toy-of">{{ section.name }} of {{ ev.suspect.name }}</p>\n'  # the declaration, the record
)


def _stamp(inputs: AuditInputs) -> str | None:
    """A verdict-slot toy: says which sections it saw, or nothing when the audit has no base."""
    return " ".join(sorted(inputs.gathered)) if inputs.candidates else None


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Section, Section]]:
    partial = tmp_path_factory.mktemp("partials") / "toy.html.j2"
    partial.write_text(TOY_PARTIAL, encoding="utf-8")
    toy = Section(
        name="toy",
        title="Toy section",
        gather=_toy_gather,
        schema=TOY_SCHEMA,
        template=partial,  # a template file
        order=25,  # between the dog images (20) and the active evidence (30)
        method="<li><strong>Toy</strong>: {{ 'the suspect & its bases' }}, counted</li>\n",
    )
    stamp = Section(
        name="toy_stamp",
        title="Toy stamp",
        gather=_stamp,
        schema={"type": ["string", "null"], "pattern": "^[a-z_ ]+$"},
        template='    <div id="toy-stamp">saw {{ value }}</div>\n',  # a string
        order=20,  # after the model card's claims (10)
        slot="verdict",
    )
    with registered(toy), registered(stamp):
        yield toy, stamp
    assert "toy" not in SECTIONS and "toy_stamp" not in SECTIONS


@pytest.fixture(scope="module")
def audited(
    toys: tuple[Section, Section], tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("toy-audit") / "report.html"
    argv = ["audit", str(tiny_zoo / "llama-a-sft"), "--base", str(tiny_zoo / "llama-a")]
    assert main([*argv, "--base", str(tiny_zoo / "llama-b"), "--no-pcs", "--no-dogs", "-o", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.read_text()


def _section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_the_builtin_sections_are_registered_in_page_order() -> None:
    assert [s.name for s in in_slot("evidence")] == ["passive", "dogs", "active"]
    assert [s.name for s in in_slot("verdict")] == ["claim"]


def test_a_registered_section_is_gathered_into_report_json_in_its_order(
    audited: tuple[dict[str, Any], str], tiny_zoo: Path
) -> None:
    ev, _ = audited
    core = ["schema", "huref_version", "created", "finished", "command", "settings", "suspect", "verdict"]
    assert list(ev) == [*core, "passive", "dogs", "toy", "active"]
    n_layers = json.loads((tiny_zoo / "llama-a-sft" / "config.json").read_text())["num_hidden_layers"]
    assert ev["toy"] == {
        "layers": n_layers,
        "bases": ["llama-a", "llama-b"],
        "derived_from": ["llama-a"],  # read from the passive section gathered before it
        "seen": ["dogs", "passive"],  # and not the active section, gathered after it
        "note": HOSTILE,
    }
    assert ev["dogs"] is None and ev["active"] == []  # --no-dogs, no vector: nothing to show
    # the verdict slot: after the core's keys and the card's claim; it saw every evidence section
    assert list(ev["verdict"]) == ["verdict", "base", "because", "rule", "claim", "toy_stamp"]
    assert ev["verdict"]["toy_stamp"] == "active claim dogs passive toy"
    assert ev["verdict"]["verdict"] == "derived"  # the overall verdict does not read toy sections


def test_a_registered_section_is_shown_on_the_page_escaped_and_in_place(
    audited: tuple[dict[str, Any], str],
) -> None:
    _, page = audited
    # dogs and active have nothing to show here, so they have no <section>
    assert _section_ids(page) == ["verdict", "identity", "passive", "toy", "method", "reproducibility"]
    toy = page[page.index('<section id="toy">') : page.index('<section id="method">')]
    assert "<h2>Toy section</h2>" in toy
    assert "bases llama-a, llama-b; derived from llama-a; saw dogs passive" in toy
    assert '<p id="toy-of">toy of llama-a-sft</p>' in toy
    assert "&lt;script&gt;alert(&#39;toy&#39;)&lt;/script&gt;&#34;&amp;" in toy
    assert "<script>" not in page
    verdict = page[page.index('<section id="verdict">') : page.index('<section id="identity">')]
    assert '<div id="toy-stamp">saw active claim dogs passive toy</div>' in verdict
    # its method note, in section order: after the passive evidence's notes, before the active's
    notes = page[page.index('<section id="method">') : page.index('<section id="reproducibility">')]
    toy_note = "<li><strong>Toy</strong>: the suspect &amp; its bases, counted</li>"
    assert (
        notes.index("<strong>p-value</strong>") < notes.index(toy_note) < notes.index("<strong>FSR</strong>")
    )


def test_the_merged_schema_enforces_a_sections_fragment(audited: tuple[dict[str, Any], str]) -> None:
    from huref.report import load_schema
    from huref.report.html import validate_evidence

    ev, _ = audited
    schema = load_schema()
    assert schema["properties"]["toy"] == TOY_SCHEMA and "toy" in schema["required"]
    assert "toy_stamp" in schema["properties"]["verdict"]["properties"]
    validate_evidence(ev)
    bad = json.loads(json.dumps(ev))
    bad["toy"]["layers"] = "many"
    with pytest.raises(ReportError, match=r"\$\.toy\.layers"):
        validate_evidence(bad)
    bad = json.loads(json.dumps(ev))
    del bad["toy"]["note"]
    with pytest.raises(ReportError, match="'note' is a required property"):
        validate_evidence(bad)
    bad = json.loads(json.dumps(ev))
    bad["verdict"]["toy_stamp"] = "NOT <lower case>"
    with pytest.raises(ReportError, match=r"\$\.verdict\.toy_stamp"):
        validate_evidence(bad)
    bad = json.loads(json.dumps(ev))
    del bad["toy"]  # an evidence-slot section's key is always written
    with pytest.raises(ReportError, match="'toy' is a required property"):
        validate_evidence(bad)


def test_a_section_with_nothing_to_show_keeps_its_key_and_leaves_the_page(
    audited: tuple[dict[str, Any], str],
) -> None:
    from huref.report.html import render_html

    ev, _ = audited
    quiet = {**ev, "toy": None, "verdict": {**ev["verdict"], "toy_stamp": None}}
    page = render_html(quiet)
    assert "toy" not in _section_ids(page) and 'id="toy-stamp"' not in page
    assert "<strong>Toy</strong>" in page  # the method notes explain it all the same
    older = {k: v for k, v in ev.items() if k != "toy"}  # a record written before the section existed
    assert "toy" not in _section_ids(render_html(older))


def test_a_section_is_refused_a_core_name_a_bad_name_a_second_registration_a_bad_slot_or_taken_defs(
    toys: tuple[Section, Section],
) -> None:
    toy, _ = toys
    with pytest.raises(ValueError, match="shadow"):
        SECTIONS.add("verdict", Section("verdict", "x", _stamp, {}, "", 1))
    with pytest.raises(ValueError, match="lower-case"):
        SECTIONS.add("Toy-1", Section("Toy-1", "x", _stamp, {}, "", 1))  # also the id of an element
    with pytest.raises(ValueError, match="twice"):
        SECTIONS.add("toy", toy)
    with pytest.raises(ValueError, match="slot"):
        SECTIONS.add("toy2", Section("toy2", "x", _stamp, {}, "", 1, slot="sidebar"))
    with pytest.raises(ValueError, match="passive_row"):
        SECTIONS.add("toy3", Section("toy3", "x", _stamp, {}, "", 1, defs={"passive_row": {}}))
    assert "toy2" not in SECTIONS and "toy3" not in SECTIONS


def test_a_section_registered_for_a_block_leaves_the_schema_after_it() -> None:
    from huref.report import load_schema

    extra = Section("toy_block", "x", _stamp, {"type": "null"}, "", 1)
    with registered(extra):
        assert "toy_block" in load_schema()["required"]
    assert "toy_block" not in SECTIONS and "toy_block" not in load_schema()["properties"]
