"""Architectures as data, and the role-level view of a checkpoint.

The names below are imported on first use: ``import huref.arch`` does not import torch."""

from typing import TYPE_CHECKING

from huref.lazy import lazy_exports

if TYPE_CHECKING:
    from huref.arch.config import ArchConfig, MoEConfig
    from huref.arch.families import ARCHITECTURES, spec_for
    from huref.arch.model import Model, Norm, load_model
    from huref.arch.roles import Role
    from huref.arch.spec import ArchSpec, Rule

__all__ = [
    "ARCHITECTURES",
    "ArchConfig",
    "ArchSpec",
    "MoEConfig",
    "Model",
    "Norm",
    "Role",
    "Rule",
    "load_model",
    "spec_for",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ARCHITECTURES": "huref.arch.families",
        "spec_for": "huref.arch.families",
        "Model": "huref.arch.model",
        "Norm": "huref.arch.model",
        "load_model": "huref.arch.model",
        "ArchConfig": "huref.arch.config",
        "ArchSpec": "huref.arch.spec",
        "MoEConfig": "huref.arch.config",
        "Role": "huref.arch.roles",
        "Rule": "huref.arch.spec",
    },
    globals(),
)
