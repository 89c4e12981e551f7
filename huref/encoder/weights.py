"""Shipped encoder weights: where they live, how they are written, and how they are checked.

The weights are a safetensors file (no pickle) in the top-level ``encoders/`` folder of the
repository, next to their model card. The folder is found, in order, from:

1. the environment variable ``HUREF_ENCODERS_DIR`` (a folder holding the weights file);
2. ``<folder containing the huref package>/encoders``: the repository checkout, which is what an
   editable install (``pip install -e .``) imports from.

A non-editable install does not carry the weights (they are not package data): set
``HUREF_ENCODERS_DIR`` to a copy of ``encoders/``, or pass ``--encoder FILE``.

The shipped file's SHA-256 is pinned below: a file that does not match is refused, since every
dog ever rendered depends on these exact bits. Files trained by ``huref encoder train`` are
loaded when named explicitly; their metadata must describe the same canonical stack.

Reading and checking use safetensors' numpy interface (no pickle, no tensor library): dogs are
drawn with :func:`load_numpy_encoder`; :func:`load_encoder` builds the torch network (training,
evaluation) from the same checked arrays.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from huref.checkpoint.hashing import sha256_file
from huref.encoder.canonical import BUCKET_KEY, CHANNELS, DEPTH_SLOTS, GRID
from huref.encoder.infer import NumpyEncoder, state_shapes
from huref.errors import CheckpointError, RenderError
from huref.render.base import Z_DIM

if TYPE_CHECKING:
    from huref.encoder.model import CalibratedEncoder

FORMAT = "huref-encoder/1"
ENCODER_NAME = "huref-dog-encoder-v1"
WEIGHTS_FILE = f"{ENCODER_NAME}.safetensors"
SHIPPED_SHA256 = "b5f11ddf74bc55ca17bf630e59ff8dc7ae96a21e9b126ec346c66d5c383ef970"  # encoders/README.md
ENV_DIR = "HUREF_ENCODERS_DIR"
MAX_WIDTH = 512  # DogEncoder width: 64 shipped; 512 is ~11M parameters (45 MB)
FLOAT_DTYPES = ("F16", "F32", "F64")  # safetensors dtypes numpy reads (the shipped file: F32, F64)


def canonical_spec() -> dict[str, Any]:
    """What a stack means: an encoder trained for another grid or bucket key is refused."""
    return {
        "grid": GRID,
        "depth_slots": DEPTH_SLOTS,
        "channels": CHANNELS,
        "bucket_key": BUCKET_KEY.decode(),
        "z_dim": Z_DIM,
    }


def encoders_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "encoders"


def shipped_path() -> Path:
    return encoders_dir() / WEIGHTS_FILE


def save_encoder(
    model: CalibratedEncoder, path: str | Path, config: dict[str, Any], metrics: dict[str, Any]
) -> Path:
    """Write the weights (float32 network, float64 calibration) with their recipe as metadata.

    Wall-clock timings (metrics["timing"]) are left out, so the same recipe gives the same bytes.
    """
    from huref.checkpoint.atomic import atomic_file
    from huref.checkpoint.writer import TensorPlan, write_safetensors_file

    path = Path(path)
    metrics = {k: v for k, v in metrics.items() if k != "timing"}
    tensors = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    meta = {
        "huref.encoder.format": FORMAT,
        "huref.encoder.name": ENCODER_NAME,
        "huref.encoder.canonical": json.dumps(canonical_spec(), sort_keys=True),
        "huref.encoder.config": json.dumps(config, sort_keys=True),
        "huref.encoder.metrics": json.dumps(metrics, sort_keys=True),
    }
    # huref's own writer: the safetensors library orders the metadata by a per-process hash, so
    # identical weights would get different bytes (and SHA-256s) from run to run
    plan = [TensorPlan(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    with atomic_file(path) as tmp:
        write_safetensors_file(tmp, plan, lambda p: tensors[p.name], dict(sorted(meta.items())))
        os.chmod(tmp, 0o644)  # weights are for sharing
    return path


def _non_finite(word: str) -> float:
    raise ValueError(f"{word} is not a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"{text} is not a finite number")
    return value


def is_encoder_file(path: str | Path) -> bool:
    """A file written by :func:`save_encoder` (by its metadata; the tensors are not checked)."""
    try:
        read_metadata(path)
    except RenderError:
        return False
    return True


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The recipe, metrics and canonical stack recorded in an encoder file; NaN and infinities,
    which strict JSON cannot carry, are refused (``encoder info --json`` prints these numbers)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise RenderError(f"{path}: not a readable encoder weights file ({e})") from None
    if raw.get("huref.encoder.format") != FORMAT:
        raise RenderError(f"{path}: not a huref encoder file (format {raw.get('huref.encoder.format')!r})")
    try:
        meta = {
            key: json.loads(raw[f"huref.encoder.{key}"], parse_constant=_non_finite, parse_float=_finite)
            for key in ("canonical", "config", "metrics")
        }
    except KeyError as e:
        raise RenderError(f"{path}: incomplete encoder metadata (no {e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise RenderError(f"{path}: corrupt encoder metadata ({e})") from None
    for key, value in meta.items():
        if not isinstance(value, dict):
            raise RenderError(f"{path}: encoder metadata {key} is a {type(value).__name__}, not an object")
    return meta


def network_width(path: str | Path, config: dict[str, Any]) -> int:
    """The encoder width a file's config declares, refused unless a plain int in 1..MAX_WIDTH."""
    width = config.get("width", 64)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise RenderError(f"{path}: encoder width {width!r} is not an integer in 1..{MAX_WIDTH}")
    return width


def check_tensor_shapes(path: str | Path, width: int) -> None:
    """Compare the file's header (names both ways, shapes, float dtypes) with the network its
    config declares, before anything is allocated for it."""
    from safetensors import safe_open

    want = state_shapes(width)  # by arithmetic: costs no memory whatever the width
    try:
        with safe_open(str(path), framework="numpy") as f:
            names: list[str] = f.keys()  # a safe_open handle is not iterable
            have = {name: tuple(f.get_slice(name).get_shape()) for name in names}
            dtypes = {name: str(f.get_slice(name).get_dtype()) for name in names}
    except (SafetensorError, OSError) as e:
        raise RenderError(f"{path}: not a readable encoder weights file ({e})") from None
    missing, unclaimed = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise RenderError(f"{path}: encoder weights lack tensor {missing[0]} (width {width})")
    if unclaimed:
        raise RenderError(f"{path}: unexpected tensor {unclaimed[0]} in the encoder weights")
    for name, shape in want.items():
        if have[name] != shape:
            raise RenderError(
                f"{path}: {name} has shape {list(have[name])}, but width {width} implies {list(shape)}"
            )
        if dtypes[name] not in FLOAT_DTYPES:
            raise RenderError(
                f"{path}: {name} has dtype {dtypes[name]}, not one of {', '.join(FLOAT_DTYPES)}"
            )


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a (checked) weights file, as numpy arrays."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise RenderError(f"{path}: not a readable encoder weights file ({e})") from None


def read_checked(path: str | Path, expected_sha256: str | None = None) -> tuple[int, dict[str, np.ndarray]]:
    """(network width, tensors) of an encoder file, after every check: the bytes' SHA-256 when
    expected_sha256 is given, the metadata, the canonical stack it was trained for, then the
    header's tensor names and shapes, all before the tensors are read."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"encoder weights {path} not found (see encoders/README.md or set {ENV_DIR})")
    if expected_sha256 is not None:
        try:
            digest = sha256_file(path)
        except CheckpointError as e:
            raise RenderError(str(e)) from None
        if digest != expected_sha256:
            raise RenderError(
                f"{path}: SHA-256 {digest[:16]}... is not the shipped encoder's {expected_sha256[:16]}...; "
                "restore the file or pass your own with --encoder"
            )
    meta = read_metadata(path)
    if meta["canonical"] != canonical_spec():
        raise RenderError(f"{path}: trained for canonical stack {meta['canonical']}, not {canonical_spec()}")
    width = network_width(path, meta["config"])
    check_tensor_shapes(path, width)
    return width, read_arrays(path)


def load_encoder_file(path: str | Path, expected_sha256: str | None = None) -> CalibratedEncoder:
    """The torch network of an encoder file; with expected_sha256, refuse a file whose bytes differ."""
    import torch

    from huref.encoder.model import CalibratedEncoder

    width, state = read_checked(path, expected_sha256)
    model = CalibratedEncoder(width)
    try:
        model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise RenderError(f"{path}: encoder weights do not fit the network ({e})") from None
    return model.eval().requires_grad_(False)


def load_numpy_encoder_file(path: str | Path, expected_sha256: str | None = None) -> NumpyEncoder:
    """The numpy encoder (infer.py) of an encoder file, checked as :func:`load_encoder_file`."""
    _, state = read_checked(path, expected_sha256)
    return NumpyEncoder.from_state(state)


def _cache_key(path: str | Path | None) -> tuple[str, str | None, int]:
    """(resolved path, pinned SHA-256 or None, mtime): the shipped file is hash-checked."""
    p = Path(path) if path is not None else shipped_path()
    expected = SHIPPED_SHA256 if path is None else None
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        raise RenderError(
            f"encoder weights {p} not found (see encoders/README.md or set {ENV_DIR})"
        ) from None
    return str(p.resolve()), expected, mtime


@lru_cache(maxsize=4)
def _cached(path: str, expected: str | None, mtime_ns: int) -> CalibratedEncoder:
    return load_encoder_file(path, expected)


@lru_cache(maxsize=4)
def _cached_numpy(path: str, expected: str | None, mtime_ns: int) -> NumpyEncoder:
    return load_numpy_encoder_file(path, expected)


def load_encoder(path: str | Path | None = None) -> CalibratedEncoder:
    """The shipped encoder (hash-checked), or the file at path, as a torch network; cached per
    file and mtime."""
    return _cached(*_cache_key(path))


def load_numpy_encoder(path: str | Path | None = None) -> NumpyEncoder:
    """The shipped encoder (hash-checked), or the file at path, for numpy inference; cached per
    file and mtime."""
    return _cached_numpy(*_cache_key(path))
