"""FP-Vec active fingerprints: secret keys, training, vectors, stamping, verification, harm.

One function per step (the CLI ``huref fpvec ...`` is a thin shell around them):
``make_keys``/``save_keys``/``load_keys`` -> ``train_fingerprint`` -> ``extract_vector`` ->
``stamp_model`` -> ``verify_model``; ``perplexity_change`` measures harmlessness.
"""

from huref.fpvec.harm import HarmReport, heldout_perplexity, perplexity_change
from huref.fpvec.keys import KeySet, load_keys, make_keys, near_miss_keys, save_keys
from huref.fpvec.stamp import StampResult, stamp_model
from huref.fpvec.train import train_fingerprint
from huref.fpvec.train_config import TrainConfig, TrainReport
from huref.fpvec.vector import Vector, extract_vector, open_vector
from huref.fpvec.verify import VerifyResult, verify_model

__all__ = [
    "HarmReport",
    "KeySet",
    "StampResult",
    "TrainConfig",
    "TrainReport",
    "Vector",
    "VerifyResult",
    "extract_vector",
    "heldout_perplexity",
    "load_keys",
    "make_keys",
    "near_miss_keys",
    "open_vector",
    "perplexity_change",
    "save_keys",
    "stamp_model",
    "train_fingerprint",
    "verify_model",
]
