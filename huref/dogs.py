"""Dog images of models: the Python API behind ``huref dog``, the scan index and audit reports.

A model's dog is ``render(encoder(canonical_stack(robust terms)))``: derived models share their
base's dog (up to small changes), unrelated models get unrelated dogs. The dog is for eyeballing;
the statistics live in ``huref compare``.

    from huref.dogs import dog_vector, render_dog, dog_png_bytes
    z = dog_vector(fp)                      # (512,) float64, ~ N(0, I) over models
    img = render_dog(z)                     # PIL image, embedded "sketch" renderer
    png = dog_png_bytes(fp, size=160)       # thumbnail PNG bytes for HTML embedding
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huref.errors import RenderError
from huref.invariants.fingerprint import Fingerprint

DEFAULT_RENDERER = "sketch"


def dog_vector(fp: Fingerprint, encoder: str | Path | None = None) -> np.ndarray:
    """The 512-d dog vector of a fingerprint (robust terms needed); encoder: weights file or
    None for the shipped, hash-checked one."""
    from huref.encoder.canonical import canonical_stack
    from huref.encoder.weights import encode, load_encoder

    z = encode(canonical_stack(fp), load_encoder(encoder)).numpy().astype(np.float64)
    if not np.isfinite(z).all():
        raise RenderError(f"the dog vector of {fp.name} is not finite")
    return z


@lru_cache(maxsize=8)
def _renderer(name: str, frozen_opts: str) -> Any:
    from huref.render import get_renderer

    return get_renderer(name, **json.loads(frozen_opts))


def get_cached_renderer(name: str = DEFAULT_RENDERER, **opts: Any) -> Any:
    """A renderer built once per (name, options): loading a StyleGAN2 checkpoint is slow."""
    try:
        frozen = json.dumps(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}, sort_keys=True
        )
    except TypeError as e:
        raise RenderError(f"renderer options must be plain values ({e})") from None
    return _renderer(name, frozen)


def render_dog(
    z: np.ndarray, renderer: str = DEFAULT_RENDERER, size: int | None = None, **opts: Any
) -> Image.Image:
    """The dog portrait of z (RGB); size resizes the renderer's output (square, pixels)."""
    from huref.render.base import Z_DIM

    vec = np.asarray(z, dtype=np.float64)
    if vec.shape != (Z_DIM,):
        raise RenderError(f"a dog vector has {Z_DIM} values, got shape {vec.shape}")
    if not np.isfinite(vec).all():
        raise RenderError("the dog vector contains NaN or infinite values")
    if size is not None and size < 16:
        raise RenderError(f"dog images need at least 16 pixels, got {size}")
    if renderer == "sketch" and size is not None:
        opts = {"size": size, **opts}  # draw at the requested size directly
    img = get_cached_renderer(renderer, **opts).render(vec).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def dog_png_bytes(
    fp: Fingerprint,
    size: int = 160,
    renderer: str = DEFAULT_RENDERER,
    encoder: str | Path | None = None,
    **opts: Any,
) -> bytes:
    """A size x size PNG of the fingerprint's dog, for embedding in HTML (data: URIs)."""
    return png_bytes(render_dog(dog_vector(fp, encoder), renderer, size=size, **opts))


def fingerprint_of(path: str | Path) -> Fingerprint:
    """A fingerprint file is read (seal verified); anything else is fingerprinted (robust mode)."""
    from huref.invariants import Settings, fingerprint_model, load_fingerprint
    from huref.invariants.fpfile import is_fingerprint_file

    if is_fingerprint_file(path):
        return load_fingerprint(path)
    return fingerprint_model(path, Settings(modes=("robust",)))


def dog_sheet(
    items: Sequence[tuple[str, np.ndarray]],
    renderer: str = DEFAULT_RENDERER,
    columns: int | None = None,
    cell: int = 192,
    caption_lines: Sequence[str] | None = None,
    **opts: Any,
) -> Image.Image:
    """A contact sheet of (label, z) pairs, rendered at the cell size."""
    from huref.render.sheet import contact_sheet

    images = [(label, render_dog(z, renderer, size=cell, **opts)) for label, z in items]
    return contact_sheet(images, columns=columns, cell=cell, caption_lines=caption_lines)
