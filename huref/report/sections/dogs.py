"""Dog images: the suspect's and every candidate base's, with the cosine of their dog vectors and
what that cosine means among pairs of known lineage (huref.encoder.closeness).

Drawn when the auditor asks for them (``huref audit`` without ``--no-dogs``) and huref's dog
module can be imported; a dog that cannot be drawn (a fingerprint without robust terms, missing
encoder weights) does not sink the audit: the section holds the reason instead, and the page
says it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huref.encoder.closeness import BANDS, closeness
from huref.errors import HurefError
from huref.report.sections import AuditInputs, Section, register

log = logging.getLogger(__name__)


def gather(inputs: AuditInputs) -> dict[str, Any] | None:
    """PNG data (base64) of the suspect's dog and each base's, or null when not asked for."""
    if not inputs.with_dogs:
        return None
    try:
        from huref import dogs
    except ImportError:
        return None
    import base64

    import numpy as np

    sfp = inputs.fingerprint
    try:
        zs = dogs.dog_vector(sfp)
        out: dict[str, Any] = {
            "suspect": {"png": base64.b64encode(dogs.dog_png_bytes(sfp)).decode()},
            "bases": [],
        }
        for c in inputs.candidates:
            zb = dogs.dog_vector(c.fingerprint)
            cos = float(np.dot(zs, zb) / (np.linalg.norm(zs) * np.linalg.norm(zb)))
            near = closeness(cos)
            out["bases"].append(
                {
                    "base": c.name,
                    "png": base64.b64encode(dogs.dog_png_bytes(c.fingerprint)).decode(),
                    "cosine": cos,
                    "closeness": {"band": near.band, "text": near.text},
                }
            )
        return out
    except HurefError as e:  # a dog that cannot be drawn must not sink the audit; the page says why
        log.warning("dog images skipped: %s", e)
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}


SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        {
            "type": "object",
            "required": ["suspect", "bases"],
            "properties": {
                "suspect": {
                    "type": "object",
                    "required": ["png"],
                    "properties": {"png": {"type": "string", "contentEncoding": "base64"}},
                },
                "bases": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["base", "png", "cosine"],
                        "properties": {
                            # what the cosine means among pairs of known lineage (reports written
                            # before the caption have none)
                            "closeness": {
                                "type": "object",
                                "required": ["band", "text"],
                                "properties": {"band": {"enum": list(BANDS)}, "text": {"type": "string"}},
                            }
                        },
                    },
                },
            },
        },
    ]
}

register(
    Section(
        name="dogs",
        title="Dog images",
        gather=gather,
        schema=SCHEMA,
        template=Path(__file__).with_name("dogs.html.j2"),
        order=20,
    )
)
