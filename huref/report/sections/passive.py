"""Passive evidence: one row per candidate base, the suspect compared with it (HuRef invariants).

A base whose fingerprint cannot be compared with the suspect's keeps a row that says why, with
every measure null, so the page lists every base the auditor asked about. The registered comparison statistics (``huref.invariants.statistics``) ride
in each row; their schema fragments are merged into ``passive_row`` when the evidence is
validated (``huref.report.html.evidence_schema``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huref.report.sections import AuditInputs, Section, register


def gather(inputs: AuditInputs) -> list[dict[str, Any]]:
    from huref.errors import FingerprintError
    from huref.invariants import compare_fingerprints
    from huref.invariants.compare import expert_summary, match_summary

    sm = inputs.suspect
    rows: list[dict[str, Any]] = []
    for c in inputs.candidates:
        pcs = inputs.with_pcs and c.model is not None  # PCS needs both checkpoints' weights
        try:
            cmp = compare_fingerprints(
                c.fingerprint,
                inputs.fingerprint,
                inputs.null,
                c.model.ckpt if (pcs and c.model) else None,
                sm.ckpt if pcs else None,
            )
        except FingerprintError as e:
            rows.append(
                {
                    "base": c.name,
                    "source": c.source,
                    "comparable": False,
                    "error": str(e),
                    "verdict": None,
                    "ics": None,
                    "ics_paper": None,
                    "pcs": None,
                    "z": None,
                    "p_value": None,
                    "log10_p_value": None,
                    "layer_alignment": [],
                    "layer_similarity": [],
                    "shared_tokens": 0,
                    "base_layers": c.fingerprint.n_layers,
                }
            )
            continue
        row = cmp.to_json()
        row.update(
            {
                "base": c.name,
                "source": c.source,
                "comparable": True,
                "error": None,
                "base_layers": c.fingerprint.n_layers,
            }
        )
        row.pop("a", None)
        row.pop("b", None)
        if row.get("expert_origin"):  # a dense base against an MoE suspect, or the reverse
            row["expert_summary"] = expert_summary(row["expert_origin"])
        if row.get("expert_matches"):  # an MoE base against an MoE suspect
            row["match_summary"] = match_summary(row["expert_matches"])
        rows.append(row)
    return rows


_NUM = {"$ref": "#/$defs/num"}

PASSIVE_ROW = {
    "type": "object",
    "required": [
        "base",
        "source",
        "comparable",
        "error",
        "verdict",
        "ics",
        "ics_paper",
        "pcs",
        "z",
        "p_value",
        "log10_p_value",
        "layer_alignment",
        "layer_similarity",
        "shared_tokens",
    ],
    "properties": {
        "base": {"type": "string"},
        "source": {"type": "string"},
        "comparable": {"type": "boolean"},
        "error": {"type": ["string", "null"]},
        "verdict": {"anyOf": [{"$ref": "#/$defs/verdict"}, {"type": "null"}]},
        "ics": _NUM,
        "ics_paper": _NUM,
        "pcs": _NUM,
        "z": _NUM,
        "p_value": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "log10_p_value": {"type": ["number", "null"], "maximum": 0},
        "layer_alignment": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "integer"}, {"type": "number"}],
                "minItems": 3,
                "maxItems": 3,
            },
        },
        "layer_similarity": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "shared_tokens": {"type": "integer", "minimum": 0},
        "null": {"$ref": "#/$defs/null_model"},
        "layer_tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["layer_a", "layer_b", "neurons", "agreements", "log10_p"],
            },
        },
        "expert_origin": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "layer_dense",
                    "layer_sparse",
                    "expert",
                    "neurons",
                    "agreements",
                    "log10_p",
                    "from_dense",
                ],
            },
        },
        "expert_summary": {"type": "string"},
        "expert_matches": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "layer_a",
                    "layer_b",
                    "expert_a",
                    "expert_b",
                    "neurons",
                    "agreements",
                    "log10_p",
                    "related",
                ],
            },
        },
        "match_summary": {"type": "string"},
    },
}


def _always(value: Any) -> bool:
    return True  # the table lists every base asked about, and says so when there were none


# the section's items in the page's method notes
METHOD = (
    "<li><strong>Robust ICS</strong> (0-100): cosine of huref's robust invariant terms per layer (attention Q·K and V·O products and the feature-space FFN response, each evaluated on the same probe-token rows after the layer's own input norm), averaged over the monotone layer alignment. Unchanged by residual permutations, signed permutations, gain-folded rotations, norm-gain rescaling, per-head Q/K and V/O mixing, FFN neuron permutation, up/down rescaling, global scaling, vocabulary permutation and expansion; depth-pruned models align to a subsequence of their parent's layers.</li>\n"
    "<li><strong>Paper ICS</strong>: the published HuRef measure (raw embedding rows, last two layers, Hadamard-gated FFN term), for comparison with the literature; it changes under norm-gain rescaling, sign flips and rotations.</li>\n"
    "<li><strong>PCS</strong>: cosine of all parameters matched by name and shape; empty when shapes differ or only fingerprints were available. Trivially defeated by any residual transform.</li>\n"
    "<li><strong>Z</strong>: robust ICS against the distribution of robust ICS between independently trained models (the registry's independent pairs when it holds at least five, else the built-in null).</li>\n"
    "<li><strong>p-value</strong>: FFN neurons are matched between the models twice, from their gate (or input) responses and from their residualised up (or write-out) responses, by linear assignment; the number of neurons on which the matchings agree is compared with its exact distribution under the null hypothesis that the models were trained independently (the second matching is then a uniformly random injection, except for up to 8% of the neurons, which models trained on the same data may share by convergent learning: those agreements are discounted); layers combine by Fisher's method. The null is an assumption; it was checked on independently trained zoo models, two of them trained only to check it.</li>\n"
)

register(
    Section(
        name="passive",
        title="Passive evidence",
        gather=gather,
        schema={"type": "array", "items": {"$ref": "#/$defs/passive_row"}},
        defs={"passive_row": PASSIVE_ROW},
        template=Path(__file__).with_name("passive.html.j2"),
        order=10,
        method=METHOD,
        show=_always,
    )
)
