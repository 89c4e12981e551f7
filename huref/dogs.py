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

from huref.errors import RenderError, UsageError
from huref.invariants.fingerprint import Fingerprint
from huref.paths import refuse_special

DEFAULT_RENDERER = "sketch"


def dog_vector(fp: Fingerprint, encoder: str | Path | None = None) -> np.ndarray:
    """The 512-d dog vector of a fingerprint (robust terms needed); encoder: weights file or
    None for the shipped, hash-checked one."""
    from huref.encoder.canonical import canonical_stack
    from huref.encoder.weights import load_numpy_encoder

    # numpy all the way (encoder/infer.py): a dog from a fingerprint file needs no tensor library
    z = load_numpy_encoder(encoder).encode(canonical_stack(fp))
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
    from huref.invariants import Settings
    from huref.invariants.resolve import resolve_fingerprint

    return resolve_fingerprint(path, Settings(modes=("robust",))).fingerprint


def robust_settings(fp: Fingerprint) -> tuple[int, str]:
    """(requested robust n, token-selection key digest) of a fingerprint: what decides which
    tokens were probed. The requested n, not the count of probe tokens: a small vocabulary
    gives fewer tokens at the same setting."""
    from huref.encoder.canonical import robust_terms

    mt = robust_terms(fp)  # FingerprintError when there are no robust terms
    settings = fp.meta.get("settings")
    n = settings.get("n") if isinstance(settings, dict) else None
    return (n if isinstance(n, int) and not isinstance(n, bool) else mt.n), mt.key_digest


def check_same_robust_settings(sources: Sequence[tuple[str, tuple[int, str]]]) -> None:
    """Refuse (UsageError) inputs whose robust fingerprints chose their tokens differently: their
    dogs would differ for that reason alone, so related models would look unrelated."""
    if len({settings for _, settings in sources}) <= 1:
        return
    (name_a, (n_a, key_a)), (name_b, (n_b, key_b)) = (
        sources[0],
        next(item for item in sources if item[1] != sources[0][1]),
    )
    what = f"robust n {n_a} vs {n_b}" if n_a != n_b else f"token key {key_a} vs {key_b}"
    raise UsageError(
        f"{name_a} and {name_b} were fingerprinted with different settings ({what}): their dogs "
        "are not comparable; fingerprint every model with the same --n and --token-key"
    )


def fingerprints_of(paths: Sequence[str | Path]) -> list[Fingerprint]:
    """Fingerprints of inputs whose dogs are shown together. Fingerprint files are read first
    and must agree with each other and with the default robust settings that the checkpoints
    among the inputs get (those always agree), before any checkpoint is fingerprinted."""
    from huref.invariants import Settings, load_fingerprint
    from huref.invariants.fpfile import is_fingerprint_file
    from huref.invariants.resolve import resolve_fingerprint
    from huref.invariants.tokens import key_digest

    settings = Settings(modes=("robust",))
    for p in paths:
        refuse_special(p, "input")
    files = {i: load_fingerprint(p) for i, p in enumerate(paths) if is_fingerprint_file(p)}
    sources = [(str(paths[i]), robust_settings(fp)) for i, fp in files.items()]
    if len(files) < len(paths):
        first = next(str(p) for i, p in enumerate(paths) if i not in files)
        sources.append(
            (f"{first} (fingerprinted here, default settings)", (settings.n, key_digest(settings.key)))
        )
    check_same_robust_settings(sources)
    return [
        files[i] if i in files else resolve_fingerprint(p, settings).fingerprint for i, p in enumerate(paths)
    ]


def encoder_n_range(encoder: str | Path | None = None) -> tuple[int, int]:
    """The probe-token counts the encoder was trained on: ``n_tokens`` of its recorded config
    when present, else the range of huref's synthetic training models (every recipe of
    ``huref encoder train`` draws from it)."""
    from huref.encoder.canonical import TRAINING_N_TOKENS
    from huref.encoder.weights import read_metadata, shipped_path

    recorded = read_metadata(encoder if encoder is not None else shipped_path())["config"].get("n_tokens")
    if (
        isinstance(recorded, list)
        and len(recorded) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in recorded)
    ):
        return recorded[0], recorded[1]
    return TRAINING_N_TOKENS


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
