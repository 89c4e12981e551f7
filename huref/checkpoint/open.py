"""Format detection: one entry point, ``open_checkpoint(path)``, for every supported layout.

Supported: Hugging Face folders (single or sharded safetensors, ``pytorch_model*.bin``), single
``.safetensors`` files (with a ``config.json`` beside them or a config in their metadata),
llama2.c ``.bin`` exports, GGUF files, and PEFT LoRA/DoRA adapter folders (read as their base
with the adapter merged in, tensor by tensor; see huref.checkpoint.adapter).
"""

from __future__ import annotations

import os
from pathlib import Path

from huref.checkpoint.adapter import is_adapter_folder, open_adapter
from huref.checkpoint.core import Checkpoint, parse_config, read_config
from huref.checkpoint.gguf_io import GGUFSource
from huref.checkpoint.llama2c import Llama2cSource, looks_like_llama2c
from huref.checkpoint.quant import wrap_quantized
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.source import TensorSource
from huref.checkpoint.torchbin import TorchBinSource
from huref.checkpoint.vocab import load_vocab, vocab_from_list
from huref.errors import CheckpointError, UsageError
from huref.paths import refuse_special, shown

CONFIG_METADATA_KEY = "huref.config"  # a single-file checkpoint may carry its config here


def _present(path: Path, what: str) -> bool:
    """Whether a checkpoint's companion file is there; a FIFO, device or socket in its place is
    refused, not passed over as absent nor opened."""
    refuse_special(path, what, CheckpointError)
    return path.is_file()


def _open_folder(folder: Path) -> Checkpoint:
    st_index = folder / "model.safetensors.index.json"
    bin_index = folder / "pytorch_model.bin.index.json"
    st_files = sorted(folder.glob("*.safetensors"))
    bin_files = sorted(folder.glob("pytorch_model*.bin"))
    source: TensorSource
    if _present(st_index, "index"):
        source, fmt = SafetensorsSource.from_index(st_index), "hf-safetensors"
    elif st_files:
        if len(st_files) > 1:
            raise CheckpointError(
                f"{shown(folder)}: {len(st_files)} safetensors files but no model.safetensors.index.json"
            )
        source, fmt = SafetensorsSource(st_files), "hf-safetensors"
    elif _present(bin_index, "index"):
        source, fmt = TorchBinSource.from_index(bin_index), "hf-bin"
    elif bin_files:
        if len(bin_files) > 1:
            raise CheckpointError(f"{shown(folder)}: several pytorch_model*.bin files but no index")
        source, fmt = TorchBinSource(bin_files), "hf-bin"
    else:
        entries = [shown(p.name) for p in folder.iterdir()][:5]
        what = "empty folder" if not entries else f"found only {', '.join(entries)}"
        raise CheckpointError(f"{shown(folder)}: no weights (.safetensors or pytorch_model*.bin): {what}")
    cfg_path = folder / "config.json"
    if _present(cfg_path, "config.json"):
        config = read_config(cfg_path)
    else:
        meta = source.metadata().get(CONFIG_METADATA_KEY)
        if meta is None:
            raise CheckpointError(f"{shown(folder)}: no config.json (needed to know the architecture)")
        config = parse_config(meta, f"{shown(folder)}: corrupt config in the weights' metadata")
    source = wrap_quantized(source, config)  # quantized linears read as float, one at a time
    return Checkpoint(folder, fmt, source, config, load_vocab(folder))


def open_checkpoint(path: str | Path, adapter_base: str | Path | None = None) -> Checkpoint:
    """Open any supported checkpoint lazily; nothing but headers is read here.

    A PEFT adapter folder opens as its base with the adapter merged in when read; its base is
    ``adapter_base`` when given, else the one its adapter_config.json names.
    """
    p = Path(path)
    if not p.exists():
        from huref.checkpoint.hub import hub_reference
        from huref.checkpoint.hub_ranges import open_hub_checkpoint

        ref = hub_reference(os.fspath(path))  # owner/name[@rev]: read from the hub (or its cache)
        if ref is not None and adapter_base is None:
            return open_hub_checkpoint(ref, open_checkpoint)
        raise CheckpointError(f"{shown(p)}: no such file or folder")
    refuse_special(p, "checkpoint", CheckpointError)  # before anything opens it
    if is_adapter_folder(p):
        return open_adapter(p, adapter_base, open_checkpoint)
    if adapter_base is not None:
        raise UsageError(f"{shown(p)}: an adapter base was given, but this is not a PEFT adapter folder")
    if p.is_dir():
        return _open_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        source = SafetensorsSource([p])
        cfg_beside = p.parent / "config.json"
        meta = source.metadata().get(CONFIG_METADATA_KEY)
        if meta is not None:
            config = parse_config(meta, f"{shown(p)}: corrupt config in metadata")
        elif _present(cfg_beside, "config.json"):
            config = read_config(cfg_beside)
        else:
            raise CheckpointError(
                f"{shown(p)}: a bare safetensors file needs a config.json beside it "
                f"(or '{CONFIG_METADATA_KEY}' metadata)"
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
        if not _present(cfg_beside, "config.json"):
            raise CheckpointError(f"{shown(p)}: a bare .bin state dict needs a config.json beside it")
        return Checkpoint(p, "hf-bin", source_b, read_config(cfg_beside), load_vocab(p.parent))
    raise CheckpointError(
        f"{shown(p)}: unrecognised checkpoint (expected a folder, .safetensors, .bin (llama2.c or PyTorch) "
        "or .gguf)"
    )
