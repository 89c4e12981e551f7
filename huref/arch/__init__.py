"""Architectures as data, and the role-level view of a checkpoint."""

from huref.arch.families import ARCHITECTURES, spec_for
from huref.arch.model import Model, Norm, load_model
from huref.arch.spec import ArchConfig, ArchSpec, Rule

__all__ = ["ARCHITECTURES", "ArchConfig", "ArchSpec", "Model", "Norm", "Rule", "load_model", "spec_for"]
