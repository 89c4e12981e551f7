"""Audit reports: evidence gathering, the JSON record and the self-contained HTML page."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema") / "report.schema.json"


@cache
def _core_schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return doc


def load_schema() -> dict[str, Any]:
    """The JSON schema every ``report.json`` validates against: the shipped core with the schema
    fragment of every registered report section merged in (``huref.report.sections``)."""
    from huref.report.sections import merge_schema

    return merge_schema(_core_schema())
