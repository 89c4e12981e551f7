"""Format detection: one entry point, ``open_checkpoint(path)``, for every supported layout.

Supported: Hugging Face folders (single or sharded safetensors, ``pytorch_model*.bin``), single
``.safetensors`` files (with a ``config.json`` beside them or a config in their metadata),
llama2.c ``.bin`` exports and GGUF files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huref.checkpoint.gguf_io import GGUFSource
from huref.checkpoint.hashing import sha256_file
from huref.checkpoint.llama2c import Llama2cSource, looks_like_llama2c
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.source import TensorSource
from huref.checkpoint.torchbin import TorchBinSource
from huref.checkpoint.vocab import Vocab, load_vocab, vocab_from_list
from huref.errors import CheckpointError

CONFIG_METADATA_KEY = "huref.config"  # a single-file checkpoint may carry its config here


@dataclass
class Checkpoint:
    """A checkpoint on disk: its tensors (lazily), its config, its vocabulary."""

    path: Path
    format: str  # hf-safetensors | safetensors | hf-bin | llama2c | gguf
    source: TensorSource
    config: dict[str, Any]
    vocab: Vocab | None
    _hashes: dict[str, str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def weight_files(self) -> list[Path]:
        return self.source.weight_files()

    def sha256s(self) -> dict[str, str]:
        """file name -> SHA-256, streamed; computed once per Checkpoint."""
        if self._hashes is None:
            self._hashes = {p.name: sha256_file(p) for p in self.weight_files()}
        return dict(self._hashes)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: corrupt config.json (not valid JSON)") from None
    return _parse_config(text, f"{path}: corrupt config.json")


def _parse_config(text: str, what: str) -> dict[str, Any]:
    """A config document: a JSON object (nesting deep enough to exhaust the parser is corrupt too)."""
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{what} (not valid JSON)") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{what} (not a JSON object)")
    return cfg


def _open_folder(folder: Path) -> Checkpoint:
    st_index = folder / "model.safetensors.index.json"
    bin_index = folder / "pytorch_model.bin.index.json"
    st_files = sorted(folder.glob("*.safetensors"))
    bin_files = sorted(folder.glob("pytorch_model*.bin"))
    source: TensorSource
    if st_index.is_file():
        source, fmt = SafetensorsSource.from_index(st_index), "hf-safetensors"
    elif st_files:
        if len(st_files) > 1:
            raise CheckpointError(
                f"{folder}: {len(st_files)} safetensors files but no model.safetensors.index.json"
            )
        source, fmt = SafetensorsSource(st_files), "hf-safetensors"
    elif bin_index.is_file():
        source, fmt = TorchBinSource.from_index(bin_index), "hf-bin"
    elif bin_files:
        if len(bin_files) > 1:
            raise CheckpointError(f"{folder}: several pytorch_model*.bin files but no index")
        source, fmt = TorchBinSource(bin_files), "hf-bin"
    else:
        entries = [p.name for p in folder.iterdir()][:5]
        what = "empty folder" if not entries else f"found only {', '.join(entries)}"
        raise CheckpointError(f"{folder}: no weights (.safetensors or pytorch_model*.bin): {what}")
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        config = _read_config(cfg_path)
    else:
        meta = source.metadata().get(CONFIG_METADATA_KEY)
        if meta is None:
            raise CheckpointError(f"{folder}: no config.json (needed to know the architecture)")
        config = _parse_config(meta, f"{folder}: corrupt config in the weights' metadata")
    return Checkpoint(folder, fmt, source, config, load_vocab(folder))


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open any supported checkpoint lazily; nothing but headers is read here."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_dir():
        return _open_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        source = SafetensorsSource([p])
        cfg_beside = p.parent / "config.json"
        meta = source.metadata().get(CONFIG_METADATA_KEY)
        if meta is not None:
            config = _parse_config(meta, f"{p}: corrupt config in metadata")
        elif cfg_beside.is_file():
            config = _read_config(cfg_beside)
        else:
            raise CheckpointError(
                f"{p}: a bare safetensors file needs a config.json beside it (or '{CONFIG_METADATA_KEY}' metadata)"
            )
        return Checkpoint(p, "safetensors", source, config, load_vocab(p.parent))
    if suffix == ".gguf":
        g = GGUFSource(p)
        vocab = vocab_from_list(g.tokens, g.token_types, str(p)) if g.tokens else None
        return Checkpoint(p, "gguf", g, g.config, vocab)
    if suffix == ".bin":
        if looks_like_llama2c(p):
            s = Llama2cSource(p)
            return Checkpoint(p, "llama2c", s, s.config, None)
        source_b = TorchBinSource([p])
        cfg_beside = p.parent / "config.json"
        if not cfg_beside.is_file():
            raise CheckpointError(f"{p}: a bare .bin state dict needs a config.json beside it")
        return Checkpoint(p, "hf-bin", source_b, _read_config(cfg_beside), load_vocab(p.parent))
    raise CheckpointError(
        f"{p}: unrecognised checkpoint (expected a folder, .safetensors, .bin (llama2.c or PyTorch) or .gguf)"
    )
