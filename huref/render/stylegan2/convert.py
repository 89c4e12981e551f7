"""Official ``.pkl`` -> safetensors conversion, and loading a generator from either format.

The safetensors file holds the ``state_dict`` of our Generator (official tensor names) and, as
str->str metadata, ``{"format": "pt"}``, the init kwargs as JSON and the SHA-256 of the source
pickle (provenance for audit reports). Loading it never involves pickle at all, so a converted
generator can be shipped and reloaded without any of the unpickler's risk surface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from huref.checkpoint.outputs import check_output_file
from huref.errors import RenderError
from huref.render.stylegan2.network import Generator, generator_skeleton, materialise
from huref.render.stylegan2.rebuild import generator_from_pickle, plain

log = logging.getLogger(__name__)

KIND = "huref.stylegan2.generator"
META_KIND = "huref.kind"
META_KWARGS = "huref.stylegan2.init_kwargs"
META_SOURCE = "huref.stylegan2.source_sha256"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype names


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _standalone(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU copy: safetensors refuses shared or strided tensors."""
    return t.detach().to("cpu", torch.float32).contiguous().clone()


def save_generator(generator: Generator, out: str | Path, source_sha256: str = "") -> Path:
    """Write ``generator`` as safetensors atomically (temp file in the same folder, rename)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise RenderError(f"output folder {out.parent} does not exist")
    tensors = {k: _standalone(v) for k, v in generator.state_dict().items()}
    metadata = {
        "format": "pt",
        META_KIND: KIND,
        META_KWARGS: json.dumps(plain(generator.init_kwargs), sort_keys=True),
    }
    if source_sha256:
        metadata[META_SOURCE] = source_sha256
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote %s (%d tensors)", out, len(tensors))
    return out


def convert_pickle_to_safetensors(pkl: str | Path, out: str | Path, key: str = "G_ema") -> Path:
    """Safely read an official checkpoint and store its ``key`` generator as safetensors."""
    pkl, out = Path(pkl), check_output_file(out, [pkl])
    if not out.parent.is_dir():  # fail before the (possibly long) read of the checkpoint
        raise RenderError(f"output folder {out.parent} does not exist")
    generator = generator_from_pickle(pkl, key)
    return save_generator(generator, out, source_sha256=_sha256(pkl))


def load_generator_safetensors(path: str | Path, device: str = "cpu") -> Generator:
    """Rebuild a Generator from a file written by :func:`save_generator` and move it to
    ``device``. The configuration is checked and the tensor names (both ways), shapes and dtypes
    compared with the header before any network memory is allocated."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata: dict[str, str] = f.metadata() or {}
            if metadata.get(META_KIND) != KIND or META_KWARGS not in metadata:
                raise RenderError(
                    f"{path} is not a huref StyleGAN2 generator file "
                    f"(metadata {META_KIND}={metadata.get(META_KIND)!r})"
                )
            kwargs: Any = json.loads(metadata[META_KWARGS])
            if not isinstance(kwargs, dict):
                raise RenderError(f"{path}: {META_KWARGS} is not a JSON object")
            skeleton = generator_skeleton(kwargs, str(path))  # shapes only, no memory yet
            expected = skeleton.state_dict()
            names = set(f.keys())
            missing, unclaimed = sorted(set(expected) - names), sorted(names - set(expected))
            if missing:
                raise RenderError(f"{path} lacks tensor {missing[0]}")
            if unclaimed:
                raise RenderError(f"{path} has unexpected tensor {unclaimed[0]}")
            for name, target in expected.items():
                view = f.get_slice(name)  # header only
                shape, dtype = list(view.get_shape()), view.get_dtype()
                if shape != list(target.shape):
                    raise RenderError(
                        f"{path}: {name} has shape {shape}, expected {list(target.shape)}",
                    )
                if dtype not in FLOAT_DTYPES:
                    raise RenderError(f"{path}: {name} is {dtype}, not a floating-point tensor")
            # safetensors has checked that the data covers every header entry, so what is
            # allocated now is bounded by the size of the file
            generator = materialise(skeleton)
            for name, target in generator.state_dict().items():
                target.copy_(f.get_tensor(name).to(torch.float32))
    except (OSError, json.JSONDecodeError) as exc:
        raise RenderError(f"cannot read generator file {path}: {exc}") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError on corrupt headers
        if isinstance(exc, RenderError):
            raise
        raise RenderError(f"cannot read generator file {path}: {exc}") from exc
    return generator.eval().requires_grad_(False).to(device)


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    """Load from an official ``.pkl`` (restricted unpickler) or a huref ``.safetensors``,
    told apart by content, not by file name."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"generator checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header size, then the JSON header; test it first, since
    # that size's low byte may well be 0x80, the PROTO opcode that starts every pickle
    header_size = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and 8 + header_size <= path.stat().st_size:
        return load_generator_safetensors(path, device)
    return generator_from_pickle(path).to(device)
