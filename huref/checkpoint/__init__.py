"""Reading checkpoints of every supported format through one lazy interface.

The names below are imported on first use: ``import huref.checkpoint`` does not import torch."""

from typing import TYPE_CHECKING

from huref.lazy import lazy_exports

if TYPE_CHECKING:
    from huref.checkpoint.core import Checkpoint
    from huref.checkpoint.open import open_checkpoint

__all__ = ["Checkpoint", "open_checkpoint"]

__getattr__, __dir__ = lazy_exports(
    __name__, {"Checkpoint": "huref.checkpoint.core", "open_checkpoint": "huref.checkpoint.open"}, globals()
)
