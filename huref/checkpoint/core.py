"""What an opened checkpoint is (``Checkpoint``) and how its config document is read.

Kept apart from huref.checkpoint.open so that the readers open.py dispatches to (adapters, the
hub) can build a Checkpoint without importing the dispatcher: they are handed the opener instead.
Importing it does not import torch (``huref arch validate config.json`` reads configs with it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.checkpoint.files import MAX_CONFIG_DEPTH, nesting_depth_exceeds, read_json
from huref.checkpoint.hashing import sha256_file
from huref.checkpoint.vocab import Vocab
from huref.errors import CheckpointError
from huref.paths import shown

if TYPE_CHECKING:  # adapter.py builds Checkpoints, so it imports this module, not the reverse
    from huref.checkpoint.adapter import AdapterInfo
    from huref.checkpoint.source import TensorSource


@dataclass
class Checkpoint:
    """A checkpoint on disk: its tensors (lazily), its config, its vocabulary."""

    path: Path
    format: str  # hf-safetensors | safetensors | hf-bin | llama2c | gguf
    source: TensorSource
    config: dict[str, Any]
    vocab: Vocab | None
    _hashes: dict[str, str] | None = field(default=None, repr=False)
    adapter: AdapterInfo | None = None  # a PEFT adapter read merged into its base
    origin: str | None = None  # the hub repository id it was resolved from ("owner/name@rev")

    @property
    def name(self) -> str:
        if self.adapter is not None:  # names both: "my-lora (LoRA adapter on llama-7b)"
            return self.adapter.display_name
        if self.origin is not None:  # a hub snapshot folder is named by its commit
            return self.origin
        return self.path.stem if self.path.is_file() else self.path.name

    def weight_files(self) -> list[Path]:
        return self.source.weight_files()

    def sha256s(self) -> dict[str, str]:
        """file name -> SHA-256, streamed; computed once per Checkpoint."""
        if self._hashes is None:
            self._hashes = {p.name: sha256_file(p) for p in self.weight_files()}
        return dict(self._hashes)


def read_config(path: Path) -> dict[str, Any]:
    return check_config(read_json(path, "config.json"), f"{shown(path)}: corrupt config.json")


def parse_config(text: str, what: str) -> dict[str, Any]:
    """A config document carried as text (a single file's metadata)."""
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError):  # nesting deep enough to exhaust the parser is corrupt too
        raise CheckpointError(f"{what} (not valid JSON)") from None
    return check_config(cfg, what)


def check_config(cfg: Any, what: str) -> dict[str, Any]:
    """A config is a JSON object, nested no deeper than real configs are (the values themselves
    are checked by the architecture's config reader, where their meaning is known)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{what} (not a JSON object)")
    if nesting_depth_exceeds(cfg, MAX_CONFIG_DEPTH):
        raise CheckpointError(f"{what} (nested deeper than {MAX_CONFIG_DEPTH} levels)")
    return cfg


Opener = Callable[[Path], Checkpoint]  # open_checkpoint, handed to readers that open a base
