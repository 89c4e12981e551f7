"""Shared fixtures: paths to ../shared, a quiet transformers, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STORIES = SHARED / "models" / "stories260K" / "stories260K.bin"


@pytest.fixture
def stories_path() -> Path:
    if not STORIES.is_file():
        pytest.skip("../shared/models/stories260K is absent (outside this project's CI)")
    return STORIES


def _zoo_dir() -> Path:
    return Path(os.environ.get("HUREF_ZOO_CACHE", REPO / ".zoo" / "tiny"))


@pytest.fixture(scope="session")
def tiny_zoo() -> Path:
    """The tiny zoo, built once per machine (reused while its recipe matches) with stories260K.

    Test sessions running side by side share the cache: one builds it while the others wait on a
    lock beside it (a second build would only repeat the first)."""
    import fcntl

    from huref.zoo.build import build_zoo

    stories = STORIES if STORIES.is_file() else None
    dest = _zoo_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_zoo(dest, "tiny", stories=stories, workers=2)


@pytest.fixture(scope="session")
def zoo_manifest(tiny_zoo: Path) -> dict:
    import json

    return json.loads((tiny_zoo / "zoo.json").read_text())


@pytest.fixture(scope="session")
def zoo_fingerprints(tiny_zoo: Path, zoo_manifest: dict) -> dict:
    """Fingerprints (robust + paper, default settings) of every zoo model, computed once."""
    from huref.invariants import Settings, fingerprint_model

    return {m["name"]: fingerprint_model(tiny_zoo / m["path"], Settings()) for m in zoo_manifest["models"]}


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine: one thread is much faster than two that wait."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
