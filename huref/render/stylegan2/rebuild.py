"""Rebuild a huref :class:`Generator` from the inert records of an official checkpoint.

The configuration comes only from the checkpoint (``_init_args`` / ``_init_kwargs`` of the
``Generator`` record); the structure is then checked both ways, module by module: every record
must carry the official class name of the module it fills, every parameter and buffer we
declare must be present with the right shape, every tensor in the record must be claimed, and
the plain attributes the official modules store (``conv_clamp``, ``up``, ``weight_gain``...)
must agree with the ones our modules derived from the configuration.

Peak memory: the configuration is checked (config.py) and the network is first built on the meta
device; every check above runs against that skeleton, and real storage is allocated only once
the record is known to hold every tensor, so a load costs about twice the tensors in the file.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from huref.errors import RenderError
from huref.render.stylegan2.network import Generator, generator_skeleton, materialise
from huref.render.stylegan2.pickle_loader import PersistentRecord, load_stylegan_pickle

log = logging.getLogger(__name__)

MAX_NESTING = 16  # official configurations nest 3 deep; a self-referencing list never ends


def plain(value: Any, _depth: int = 0) -> Any:
    """EasyDicts, tuples and numpy scalars -> JSON-able dicts, lists and Python numbers."""
    if _depth > MAX_NESTING:
        raise RenderError(f"the generator configuration is nested more than {MAX_NESTING} deep")
    if isinstance(value, dict):
        return {str(k): plain(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, _depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise RenderError(f"unexpected {type(value).__name__} in the generator configuration")


def generator_kwargs(record: PersistentRecord) -> dict[str, Any]:
    """The official ``Generator(...)`` call of a record, as keyword arguments."""
    if record.class_name != Generator.official_name:
        raise RenderError(f"expected a Generator record, found {record.class_name!r}")
    args, kwargs = record.state.get("_init_args", ()), record.state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise RenderError("generator record lacks _init_args/_init_kwargs")
    try:
        bound = inspect.signature(Generator.__init__).bind(None, *plain(args), **plain(kwargs))
    except TypeError as exc:
        raise RenderError(f"generator _init_kwargs do not match Generator(...): {exc}") from None
    bound.arguments.pop("self")
    return dict(bound.arguments)


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, (tuple, list)):
        return isinstance(ours, list) and list(ours) == plain(theirs)
    theirs = plain(theirs) if isinstance(theirs, np.generic) else theirs
    if not (theirs is None or isinstance(theirs, (bool, int, float, str))):
        return False  # a tensor or a record where the official module stores a plain value
    if isinstance(ours, float) or isinstance(theirs, float):
        if not (isinstance(ours, (int, float)) and isinstance(theirs, (int, float))):
            return False
        return math.isclose(ours, theirs, rel_tol=1e-6)
    return bool(ours == theirs)


def _tensors(state: dict[str, Any], key: str, where: str) -> dict[str, torch.Tensor]:
    """The non-None tensors of ``state[key]`` (``_parameters`` or ``_buffers``)."""
    table = state.get(key, {})
    if not isinstance(table, dict):
        raise RenderError(f"{where}: {key} is a {type(table).__name__}, not a dict")
    for name, value in table.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise RenderError(f"{where}.{name} is a {type(value).__name__}, not a tensor")
    return {k: v for k, v in table.items() if v is not None}


def claim_record_tensors(
    module: nn.Module, record: Any, where: str, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Check a record against ``module`` (recursively: class names, attributes, tensor names,
    shapes, finiteness) and return its tensors by ``state_dict`` name. ``module`` may live on the
    meta device: nothing is read from or written to it."""
    expected = getattr(module, "official_name", type(module).__name__)
    if not isinstance(record, PersistentRecord):
        raise RenderError(f"{where}: expected a {expected} record, found {type(record).__name__}")
    if record.class_name != expected:
        raise RenderError(
            f"{where}: unknown or misplaced class {record.class_name!r} (expected {expected})",
        )
    state = record.state
    for attr, ours in getattr(module, "official_attrs", dict)().items():
        if attr in state and not _same(ours, state[attr]):
            raise RenderError(
                f"{where}.{attr} is {plain(state[attr])!r} in the checkpoint but "
                f"the configuration implies {ours!r}"
            )
    theirs = {**_tensors(state, "_parameters", where), **_tensors(state, "_buffers", where)}
    theirs_t = theirs
    ours_t = {
        **dict(module.named_parameters(recurse=False, remove_duplicate=False)),
        **dict(module.named_buffers(recurse=False, remove_duplicate=False)),
    }
    missing, unclaimed = sorted(set(ours_t) - set(theirs_t)), sorted(set(theirs_t) - set(ours_t))
    if missing:
        raise RenderError(f"checkpoint lacks tensor {where}.{missing[0]}")
    if unclaimed:
        raise RenderError(
            f"checkpoint tensor {where}.{unclaimed[0]} is not part of the StyleGAN2 structure",
        )
    claimed: dict[str, torch.Tensor] = {}
    for name, target in ours_t.items():
        source = theirs_t[name]
        if tuple(source.shape) != tuple(target.shape):
            raise RenderError(
                f"{where}.{name} has shape {list(source.shape)}, expected {list(target.shape)}",
            )
        if not (source.is_floating_point() and torch.isfinite(source).all()):
            raise RenderError(f"{where}.{name} is not a finite floating-point tensor")
        claimed[prefix + name] = source
    children = state.get("_modules", {})
    if not isinstance(children, dict):
        raise RenderError(f"{where}: _modules is a {type(children).__name__}, not a dict")
    ours_m = dict(module.named_children())
    theirs_m = {k: v for k, v in children.items() if v is not None}
    if set(ours_m) != set(theirs_m):
        extra, lack = sorted(set(theirs_m) - set(ours_m)), sorted(set(ours_m) - set(theirs_m))
        what = (
            f"unexpected submodule {where}.{extra[0]}"
            if extra
            else f"checkpoint lacks submodule {where}.{lack[0]}"
        )
        raise RenderError(what)
    for name, child in ours_m.items():
        claimed.update(claim_record_tensors(child, theirs_m[name], f"{where}.{name}", f"{prefix}{name}."))
    return claimed


def generator_from_record(record: Any, where: str = "G_ema") -> Generator:
    """Build our Generator from a ``Generator`` record and load every tensor into it."""
    if not isinstance(record, PersistentRecord):
        raise RenderError(f"expected a persistent Generator object, found {type(record).__name__}")
    skeleton = generator_skeleton(generator_kwargs(record), where)
    sources = claim_record_tensors(skeleton, record, where)  # every check, nothing allocated
    generator = materialise(skeleton)
    targets = generator.state_dict()
    if set(targets) != set(sources):  # claim_record_tensors checked both ways; belt and braces
        raise RenderError(f"{where}: the checkpoint's tensors do not cover the network")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(sources[name].to(torch.float32))
    generator.eval().requires_grad_(False)
    log.info("rebuilt StyleGAN2 generator: %s", generator.init_kwargs)
    return generator


def generator_from_pickle(path: str | Path, key: str = "G_ema") -> Generator:
    """Safely load an official stylegan2-ada-pytorch ``.pkl`` and return its ``key`` network."""
    data = load_stylegan_pickle(path)
    if key not in data:
        raise RenderError(f"{path} has no {key!r} entry (keys: {', '.join(map(str, data))})")
    return generator_from_record(data[key], key)
