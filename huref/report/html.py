"""Rendering the evidence record as one self-contained HTML file (jinja2, autoescaped).

Everything that comes from a model (names, paths, config strings, generated text) reaches the
page only through autoescaped template fields or the escaping SVG builders; the page loads
nothing from the network (a Content-Security-Policy forbids it) and embeds images as data URIs.
The page iterates over the registered report sections (``huref.report.sections``); their
partials are rendered by the same autoescaping environment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
from jinja2 import ChoiceLoader, Environment, FunctionLoader, PackageLoader, StrictUndefined

from huref.checkpoint.atomic import atomic_file
from huref.errors import ReportError
from huref.invariants.calibration import format_log10_p, format_p
from huref.invariants.statistics import report_rows, schema_properties
from huref.report import load_schema
from huref.report.plots import alignment_svg, heatmap_svg
from huref.report.sections import SECTIONS, in_slot


def _fmt(v: float | None, d: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def _section_partial(name: str) -> str | None:
    """The source of a registered section's partial (``section:NAME``) or method notes
    (``section-method:NAME``)."""
    part, _, section = name.partition(":")
    if part not in ("section", "section-method") or section not in SECTIONS:
        return None
    # Jinja drops one final newline of a template's source: one more keeps the partial's own
    return SECTIONS.get(section).source(part) + "\n"


def _env() -> Environment:
    env = Environment(
        loader=ChoiceLoader([PackageLoader("huref.report", "templates"), FunctionLoader(_section_partial)]),
        autoescape=True,  # every template is HTML, a section's partial given as a string included
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        fmt=_fmt,
        pfmt=format_log10_p,
        pvalue=format_p,
        heatmap=_heatmap,
        alignment=_alignment,
        statistics=report_rows,  # the registered statistics of a passive row (huref.invariants.statistics)
        sections=in_slot,  # the registered report sections of a slot, huref's own loaded (huref.report.sections)
    )
    return env


def _heatmap(p: dict[str, Any]) -> str:
    hi = [(int(a), int(b)) for a, b, _ in p["layer_alignment"]]
    return heatmap_svg(p["layer_similarity"], f"base {p['base']}", "suspect", highlight=hi)


def _alignment(p: dict[str, Any]) -> str:
    n_b = len(p["layer_similarity"][0]) if p["layer_similarity"] else 0
    return alignment_svg(
        p["layer_alignment"], len(p["layer_similarity"]), n_b, f"base {p['base']}", "suspect"
    )


def render_html(ev: dict[str, Any], json_name: str = "report.json") -> str:
    return _env().get_template("audit.html.j2").render(ev=ev, json_name=json_name)


# How a file that a report may replace is recognised as an earlier huref report: the page by the
# generator tag near its top (or, for pages written before the tag, their title), the evidence by
# its "schema" field.
PAGE_MARK = '<meta name="generator" content="huref-report/'
LEGACY_PAGE_MARK = "<title>huref audit: "
EVIDENCE_SCHEMA_PREFIX = "huref-report/"
MAX_EVIDENCE_BYTES = 1 << 30  # a larger .json is not read to find out: it is not ours


def _is_report_page(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    return PAGE_MARK in head or LEGACY_PAGE_MARK in head


def _is_report_evidence(p: Path) -> bool:
    if p.stat().st_size > MAX_EVIDENCE_BYTES:
        return False
    try:
        doc = json.loads(p.read_bytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith(EVIDENCE_SCHEMA_PREFIX)


def report_paths(html_path: str | Path) -> tuple[Path, Path]:
    """(report.html, report.json beside it), refused up front where either cannot be a file (a
    missing folder is created when they are written) or would replace a file that is not an
    earlier huref report (``-o MODEL/config.html`` would replace the model's config.json)."""
    html_path = Path(html_path)
    json_path = html_path.with_suffix(".json")
    for p, ours in ((html_path, _is_report_page), (json_path, _is_report_evidence)):
        if p.is_dir():
            raise ReportError(f"{p} is a folder; the report and its evidence are files")
        if p.exists() and not p.is_file():
            raise ReportError(f"{p} exists and is not a regular file; choose another report name")
        if p.is_file() and not ours(p):
            raise ReportError(
                f"{p} exists and is not a huref report, which the report would replace; "
                "choose another report name"
            )
    return html_path, json_path


def _finite_number(checker: Any, instance: Any) -> bool:
    """JSON has no NaN or infinity: a Python float that is one is not a JSON number."""
    return bool(_BASE.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(instance))


_BASE = jsonschema.Draft202012Validator
# the schema's validator, with "number" (and so "integer") meaning a finite number
EvidenceValidator = jsonschema.validators.extend(
    _BASE, type_checker=_BASE.TYPE_CHECKER.redefine("number", _finite_number)
)


def evidence_schema() -> dict[str, Any]:
    """The report schema (the core and every registered section's fragment) with the registered
    statistics' fragments merged into the passive row."""
    doc = load_schema()  # a fresh document: it may be edited
    doc["$defs"]["passive_row"]["properties"].update(schema_properties())
    return doc


def validate_evidence(ev: dict[str, Any]) -> None:
    """Refuse (ReportError) an evidence record that does not fit the shipped schema."""
    try:
        EvidenceValidator(evidence_schema()).validate(ev)
    except jsonschema.ValidationError as e:
        if isinstance(e.instance, float) and not math.isfinite(e.instance):
            raise ReportError(
                f"the evidence holds a non-finite number ({e.instance}) at {e.json_path}; "
                "that is a bug in huref: please report it"
            ) from None
        raise ReportError(
            f"the evidence does not fit the report schema at {e.json_path}: {e.message}"
        ) from None


def write_report(ev: dict[str, Any], html_path: str | Path) -> tuple[Path, Path]:
    """Write report.html and its evidence (same stem, .json) atomically; returns both paths.
    Both are written to temporary files first: neither is left without the other."""
    html_path, json_path = report_paths(html_path)
    validate_evidence(ev)
    try:  # strict JSON: a NaN where the schema does not look would make the file unreadable
        text = json.dumps(ev, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise ReportError(f"the evidence cannot be written as JSON ({e}); that is a bug in huref") from None
    page = render_html(ev, json_path.name)
    with atomic_file(json_path) as tmp_json, atomic_file(html_path) as tmp_html:
        tmp_json.write_text(text, encoding="utf-8")
        tmp_html.write_text(page, encoding="utf-8")
    return html_path, json_path
