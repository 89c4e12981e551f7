"""Which torch device a ``--device`` value names: cpu, cuda, cuda:N or auto, nothing else.

Anything torch would accept is not enough: ``meta`` gives tensors without data, ``mps`` or
``foo`` fail deep inside a computation, and ``cpu:5`` or ``cuda:9`` name a device that does not
exist. Each is refused here, before any work, with one line.
"""

from __future__ import annotations

import re

import torch

from huref.errors import HurefError, UsageError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
_CUDA = re.compile(r"cuda(?::(\d{1,4}))?")


def resolve_device(name: str, error: type[HurefError] = UsageError) -> torch.device:
    """The device ``name`` asks for; auto is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = _CUDA.fullmatch(name)
    if m is None:
        raise error(f"--device takes {DEVICE_CHOICES} (got {name!r})")
    if not torch.cuda.is_available():
        raise error(f"--device {name} asked for, but no GPU is available")
    if m.group(1) is not None:
        index, count = int(m.group(1)), torch.cuda.device_count()
        if index >= count:
            raise error(f"--device {name}: no such GPU ({count} here, numbered from cuda:0)")
        return torch.device("cuda", index)
    return torch.device("cuda")
