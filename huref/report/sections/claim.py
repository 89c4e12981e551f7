"""What the suspect's model card claims about its base, weighed against the passive evidence.

Shown inside the verdict box (``huref.checkpoint.card``: each claimed base against the per-base
verdicts; confirms, contradicts, cannot test or no claim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huref.report.sections import AuditInputs, Section, register


def gather(inputs: AuditInputs) -> dict[str, Any]:
    from huref.checkpoint.card import read_claims, weigh_claims

    return weigh_claims(read_claims(inputs.suspect.ckpt.path), inputs.gathered["passive"])


SCHEMA = {
    "type": "object",
    "required": ["status", "summary", "relation", "claims", "derived_from_unclaimed", "card_error"],
    "properties": {
        "status": {"enum": ["confirms", "contradicts", "cannot test", "no claim"]},
        "summary": {"type": "string"},
        "relation": {"type": ["string", "null"]},
        "claims": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["base", "source", "compared_as", "match", "verdict", "status"],
            },
        },
        "derived_from_unclaimed": {"type": "array", "items": {"type": "string"}},
        "card_error": {"type": ["string", "null"]},
    },
}

register(
    Section(
        name="claim",
        title="Claimed base",
        gather=gather,
        schema=SCHEMA,
        template=Path(__file__).with_name("claim.html.j2"),
        order=10,
        slot="verdict",
    )
)
