"""Active evidence (FP-Vec): the suspect queried with each vector's secret keys.

One row per ``--fpvec``/``--keys`` pair (``huref.fpvec.report.active_evidence``: FSR on the keys,
the near-miss control, the key likelihood test, the greedy outputs; the keys themselves never,
only their commitment). Empty when the audit was given no vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huref.errors import UsageError
from huref.report.sections import AuditInputs, Section, register


def gather(inputs: AuditInputs) -> list[dict[str, Any]]:
    if not inputs.vectors:
        return []
    from huref.fpvec.report import active_evidence

    subject = inputs.subject
    if not isinstance(subject, (str, Path)):  # huref audit refuses --fpvec with --adapter-base first
        raise UsageError("FP-Vec evidence queries the suspect by its path, not an adapter merged into a base")
    return [active_evidence(subject, v, k) for v, k in inputs.vectors]


UNIT = {"type": "number", "minimum": 0, "maximum": 1}

ACTIVE_ROW = {
    "type": "object",
    "required": ["vector_name", "commitment", "fsr", "hits", "n", "near_miss_fsr", "outputs"],
    "properties": {
        "vector_name": {"type": "string"},
        "base": {"type": ["string", "null"]},
        "commitment": {"type": "string"},
        "fsr": UNIT,
        "hits": {"type": "integer", "minimum": 0},
        "n": {"type": "integer", "minimum": 1},
        "near_miss_fsr": UNIT,
        "likelihood": {
            "type": ["object", "null"],
            "required": ["p_value", "p_floor", "u", "n_keys", "n_decoys", "key_mean", "decoy_mean"],
            "properties": {
                "p_value": UNIT,
                "p_floor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "u": {"type": "number", "minimum": 0},
                "n_keys": {"type": "integer", "minimum": 1},
                "n_decoys": {"type": "integer", "minimum": 1},
                "key_mean": {"type": "number"},
                "decoy_mean": {"type": "number"},
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["text", "hit"],
                "properties": {"text": {"type": "string"}, "hit": {"type": "boolean"}},
            },
        },
    },
}

# the section's items in the page's method notes
METHOD = (
    "<li><strong>FSR</strong>: fraction of secret keys for which greedy decoding emits the fingerprint target; near-miss keys are altered keys that must not fire.</li>\n"
    "<li><strong>What a fingerprint survives</strong>: weight-only int8 and 4-bit round-to-nearest quantization of a stamped model leave it nearly intact; a half-and-half linear merge with a model that lacks it halves the vector and usually silences the greedy answers, leaving a weaker likelihood signal; further fine-tuning on unrelated data wears it away, within tens of steps at a high learning rate, and the likelihood test sees it for longer than greedy decoding does. FSR 0 with an unremarkable likelihood p therefore says the fingerprint is absent now, not that the suspect was never derived from the vector's base. Measurements: docs/fpvec.md, section Robustness.</li>\n"
)

register(
    Section(
        name="active",
        title="Active evidence (FP-Vec)",
        gather=gather,
        schema={"type": "array", "items": {"$ref": "#/$defs/active_row"}},
        defs={"active_row": ACTIVE_ROW},
        template=Path(__file__).with_name("active.html.j2"),
        order=30,
        method=METHOD,
    )
)
