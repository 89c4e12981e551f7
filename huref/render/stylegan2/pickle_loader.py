"""Restricted unpickler for official stylegan2-ada-pytorch ``.pkl`` checkpoints.

The official checkpoints are plain pickles in which every network is stored as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``; ``meta['module_src']`` holds the
Python source of the network module and the official loader *executes* it. A pickle can also
call any importable function (``os.system``...). This module therefore resolves only an explicit
allowlist of globals, each mapped to a function of ours that validates its arguments, and turns
every persistent object into an inert :class:`PersistentRecord` (its source text is never
compiled, never executed, not even kept). Everything else is refused with one clear line.

Why this is enough: pickle can only call objects that ``find_class`` returned (REDUCE, NEWOBJ)
or that ``persistent_load`` returned (refused here), so every call the stream makes lands in one
of the functions below. The one opcode that acts on an object *after* it was built, BUILD
(``__setstate__``, or attributes set one by one), is refused but on the numpy dtype stand-in,
the only object an official checkpoint builds so: on a tensor it would call
``Tensor.__setstate__`` and re-view its storage past the bounds checked below (uninitialised
memory), and on a class or function of this module it would change it for the whole process.
The pure-Python unpickler is used because the C one offers no hook for BUILD.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch

from huref.errors import RenderError, UnsafeFileError

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class PersistentRecord:
    """What ``_reconstruct_persistent_obj`` would have rebuilt, kept as data: never executed."""

    class_name: str
    version: int
    state: dict[str, Any]


class EasyDict(dict):  # type: ignore[type-arg]
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (no attribute magic is needed)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Record the class name and ``__dict__`` of a persistent object; ignore ``module_src``."""
    if not isinstance(meta, dict):
        raise UnsafeFileError(f"persistent object meta is a {type(meta).__name__}, not a dict")
    if meta.get("type") != "class":
        raise UnsafeFileError(f"persistent object of type {meta.get('type')!r} is not supported")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafeFileError("persistent object meta lacks a class_name string or a state dict")
    version = meta.get("version")
    return PersistentRecord(class_name, version if isinstance(version, int) else -1, dict(state))


def _load_from_bytes(data: Any) -> Any:
    """Storages are nested old-format ``torch.save`` blobs: read them with torch's own safe
    unpickler (``weights_only=True``), which refuses code in them just as we do."""
    if not isinstance(data, bytes):
        raise UnsafeFileError(f"storage blob is a {type(data).__name__}, not bytes")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:  # what weights_only raises on a refused global
        msg = f"storage blob refused by torch.load(weights_only=True): {exc}"
        raise UnsafeFileError(msg.splitlines()[0]) from None
    except Exception as exc:  # truncated blob, absurd sizes: corrupt, not malicious
        raise RenderError(f"corrupt storage blob: {str(exc).splitlines()[0]}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeFileError(f"storage blob holds a {type(storage).__name__}, not a storage")
    return storage


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """A strided view on a storage, with every bound checked before touching memory."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeFileError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if not (isinstance(storage_offset, int) and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise UnsafeFileError("tensor offset/size/stride are not non-negative integers")
    if len(size) != len(stride) or backward_hooks or metadata:
        raise UnsafeFileError("tensor carries hooks, metadata or mismatched size/stride")
    with warnings.catch_warnings():  # TypedStorage is deprecated but is what old blobs hold
        warnings.simplefilter("ignore", UserWarning)
        if isinstance(storage, torch.TypedStorage):
            dtype, untyped = storage.dtype, storage.untyped()
        else:
            dtype, untyped = torch.uint8, storage
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = untyped.nbytes() // itemsize
    span = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    last = storage_offset + span if all(size) else -1  # an empty view touches no element
    if storage_offset < 0 or last >= numel:
        raise UnsafeFileError(f"tensor view [{storage_offset}, {last}] exceeds storage of {numel}")
    return torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.Tensor:
    """Parameters come back as plain tensors: we only copy their values."""
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise UnsafeFileError("parameter is not a plain tensor, or carries backward hooks")
    return data


# numpy dtypes a checkpoint may use for plain scalar attributes (never 'O', the object dtype)
_NUMPY_SCALAR_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _NumpyDType:
    """Stand-in for ``numpy.dtype(name, align, copy)``; BUILD then sets its byte order."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if name not in _NUMPY_SCALAR_DTYPES:
            raise UnsafeFileError(f"numpy dtype {name!r} refused (only plain numeric dtypes)")
        self.name: str = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subdtype, names, fields, elsize, align, flags)
        ok = isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
        if not ok or any(s is not None for s in state[2:5]):
            raise UnsafeFileError("numpy dtype state is not a plain numeric dtype")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:  # type: ignore[type-arg]
        order = "" if self.byteorder == "|" else self.byteorder
        return np.dtype(order + self.name)  # e.g. '<f8'


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: decode the bytes, nothing else."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise UnsafeFileError("numpy scalar is not (plain dtype, bytes)")
    np_dtype = dtype.to_numpy()
    if len(data) != np_dtype.itemsize:
        raise UnsafeFileError(f"numpy scalar of {len(data)} bytes for dtype {dtype.name}")
    return np.frombuffer(data, dtype=np_dtype)[0]


def _make_set(items: Any = ()) -> set[Any]:
    if not isinstance(items, (list, tuple)):
        raise UnsafeFileError(f"builtins.set called on a {type(items).__name__}")
    return set(items)


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _make_set,
    ("__builtin__", "set"): _make_set,  # protocol-2 pickles written by Python 2 spell it so
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
}


def _load_build(self: Any) -> None:
    """BUILD, for the numpy dtype stand-in only (its byte order); refused on anything else."""
    state = self.stack.pop()
    target = self.stack[-1]
    if type(target) is not _NumpyDType:
        raise UnsafeFileError(
            f"refused BUILD on a {type(target).__name__}: official stylegan2 pickles set state on "
            "numpy dtypes only (nothing was changed)"
        )
    target.__setstate__(state)


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals an official stylegan2-ada-pytorch checkpoint needs."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused global {module}.{name}: not on the allowlist of what a "
                "stylegan2-ada-pytorch checkpoint needs (nothing was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"refused persistent id {str(pid)[:60]!r}: official stylegan2 pickles use none",
        )


def load_stylegan_pickle_stream(stream: BinaryIO, source: str = "<stream>") -> dict[str, Any]:
    """Unpickle an official checkpoint stream into plain data (dicts, records, tensors)."""
    head = stream.read(4)
    if head == _ZIP_MAGIC:
        raise RenderError(
            f"{source} is a zip archive (torch.save format), not a stylegan2-ada-pytorch "
            "pickle; re-export the generator as an official .pkl or a huref .safetensors"
        )
    if stream.seekable():
        stream.seek(-len(head), io.SEEK_CUR)
        payload: BinaryIO = stream
    else:
        payload = io.BytesIO(head + stream.read())
    try:
        data = RestrictedUnpickler(payload).load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{source}: {exc}") from None
    except RenderError:
        raise
    except Exception as exc:  # truncated stream, or allowed callables used with bad arguments
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RenderError(f"{source} is not a readable stylegan2 pickle: {first}") from exc
    if not isinstance(data, dict):
        raise RenderError(f"{source} holds a {type(data).__name__}, not the official dict")
    return data


def load_stylegan_pickle(path: str | Path) -> dict[str, Any]:
    """Read an official ``.pkl`` safely; returns its top-level dict (``G_ema`` etc. as records)."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"generator checkpoint {path} does not exist")
    log.info("reading %s with the restricted unpickler", path)
    with path.open("rb") as f:
        return load_stylegan_pickle_stream(f, str(path))
