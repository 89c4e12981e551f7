"""HuRef invariants: robust and published (paper) modes, comparison and calibrated statistics.

The names below are imported on first use: ``import huref.invariants`` does not import torch."""

from typing import TYPE_CHECKING

from huref.lazy import lazy_exports

if TYPE_CHECKING:
    from huref.invariants.compare import Comparison, compare_fingerprints, compare_paths
    from huref.invariants.extract import fingerprint_model
    from huref.invariants.fingerprint import Fingerprint
    from huref.invariants.fpfile import load_fingerprint, save_fingerprint
    from huref.invariants.settings import Settings

__all__ = [
    "Comparison",
    "Fingerprint",
    "Settings",
    "compare_fingerprints",
    "compare_paths",
    "fingerprint_model",
    "load_fingerprint",
    "save_fingerprint",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Comparison": "huref.invariants.compare",
        "compare_fingerprints": "huref.invariants.compare",
        "compare_paths": "huref.invariants.compare",
        "fingerprint_model": "huref.invariants.extract",
        "Fingerprint": "huref.invariants.fingerprint",
        "load_fingerprint": "huref.invariants.fpfile",
        "save_fingerprint": "huref.invariants.fpfile",
        "Settings": "huref.invariants.settings",
    },
    globals(),
)
