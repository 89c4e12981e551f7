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
