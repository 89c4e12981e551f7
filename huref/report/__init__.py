"""Audit reports: evidence gathering, the JSON record and the self-contained HTML page."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema") / "report.schema.json"


@cache
def load_schema() -> dict[str, Any]:
    """The JSON schema every ``report.json`` validates against (shipped with huref)."""
    doc: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return doc
