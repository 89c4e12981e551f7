"""Active evidence for an audit report: one vector, its key file, one suspect.

The key file must be the one the vector was made with: its commitment (a salted hash of the keys)
is recorded in the vector, and a key file that does not open to it is refused, so a report can
never show an FSR measured with keys that do not belong to the vector it names. The report
carries the commitment, the greedy outputs and the likelihood test's scores, never the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huref.errors import FPVecError
from huref.fpvec.keys import KeySet, load_keys
from huref.fpvec.vector import Vector, open_vector
from huref.fpvec.verify import verify_model


def open_vector_and_keys(vector: str | Path, keys: str | Path) -> tuple[Vector, KeySet]:
    """The vector (metadata checked) and its key file, refused unless the keys open its commitment.
    Cheap (headers and a small JSON file): an audit calls it before any other work."""
    vec = open_vector(vector)
    ks = load_keys(keys)
    if ks.commitment != vec.commitment:
        raise FPVecError(
            f"{keys}: these keys do not belong to {Path(vector).name} "
            f"(commitment {ks.commitment[:16]}... against the vector's {vec.commitment[:16]}...)"
        )
    return vec, ks


def active_evidence(suspect: str | Path, vector: str | Path, keys: str | Path) -> dict[str, Any]:
    """Query the suspect with the vector's keys (and the near-miss control); a report row."""
    vec, ks = open_vector_and_keys(vector, keys)
    res = verify_model(suspect, ks, near_miss=True)
    nm, lt = res.near_miss, res.likelihood
    return {
        "vector_name": Path(vector).name,
        "base": vec.doc["base"]["name"],  # a string: open_vector checks the metadata's types
        "commitment": res.key_commitment,
        "fsr": res.fsr,
        "hits": res.hits,
        "n": res.n,
        "near_miss_fsr": nm.fsr if nm is not None else 0.0,
        "near_miss_hits": nm.hits if nm is not None else 0,
        "near_miss_n": nm.n if nm is not None else 0,
        "likelihood": None if lt is None else lt.summary(),
        "outputs": [{"text": o, "hit": ks.target in o} for o in res.outputs],
        "seconds": round(res.seconds, 2),
    }
