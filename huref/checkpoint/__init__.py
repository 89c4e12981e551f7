"""Reading checkpoints of every supported format through one lazy interface."""

from huref.checkpoint.open import Checkpoint, open_checkpoint

__all__ = ["Checkpoint", "open_checkpoint"]
