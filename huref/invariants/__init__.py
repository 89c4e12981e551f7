"""HuRef invariants: robust and published (paper) modes, comparison and calibrated statistics."""

from huref.invariants.compare import Comparison, compare_fingerprints, compare_paths
from huref.invariants.extract import Settings, fingerprint_model
from huref.invariants.fingerprint import Fingerprint
from huref.invariants.fpfile import load_fingerprint, save_fingerprint

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
