"""One resolver turns what a user names into a fingerprint (huref.invariants.resolve)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from huref.errors import UsageError
from huref.invariants import Settings, save_fingerprint
from huref.invariants.resolve import resolve_fingerprint

ROBUST = Settings(modes=("robust",))


def test_a_checkpoint_is_fingerprinted_and_a_fingerprint_file_read(tiny_zoo: Path, tmp_path: Path) -> None:
    computed = resolve_fingerprint(tiny_zoo / "llama-a", ROBUST)
    assert not computed.from_file and computed.model is not None
    assert computed.name == "llama-a" and computed.model.ckpt.path == tiny_zoo / "llama-a"
    path = save_fingerprint(computed.fingerprint, tmp_path / "a.safetensors")
    read = resolve_fingerprint(path, Settings(modes=("paper",)))  # settings do not apply to a file
    assert read.from_file and read.model is None and read.name == "llama-a"
    assert read.fingerprint.paper is None  # the file's own content, not a paper-mode fingerprint
    assert read.fingerprint.robust is not None and computed.fingerprint.robust is not None
    # a file is read into numpy arrays (without torch), an extraction gives torch tensors
    assert torch.equal(torch.as_tensor(read.fingerprint.robust.terms), computed.fingerprint.robust.terms)


def test_the_guard_wraps_fingerprinting_a_checkpoint_only(tiny_zoo: Path, tmp_path: Path) -> None:
    seen: list[Path] = []

    @contextlib.contextmanager
    def guard(p: Path) -> Iterator[None]:
        seen.append(p)
        yield
        raise UsageError("changed meanwhile")  # the guard's verdict reaches the caller

    with pytest.raises(UsageError, match="changed meanwhile"):
        resolve_fingerprint(tiny_zoo / "llama-a", ROBUST, while_reading=guard)
    assert seen == [tiny_zoo / "llama-a"]
    path = save_fingerprint(
        resolve_fingerprint(tiny_zoo / "llama-b", ROBUST).fingerprint, tmp_path / "b.safetensors"
    )
    resolve_fingerprint(path, while_reading=guard)  # a file is read, not fingerprinted: no guard
    assert seen == [tiny_zoo / "llama-a"]


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is a FIFO"):
        resolve_fingerprint(fifo)
