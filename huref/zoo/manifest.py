"""A zoo's manifest, ``zoo.json``: its recipe hash, the document written last, and reading it back.

The recipe hash covers the preset, whether stories260K is imported, and the source code that
builds the zoo (every module of huref.zoo and huref.lm): a changed recipe rebuilds the zoo.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from huref.errors import UsageError
from huref.zoo import calibration
from huref.zoo.presets import Preset

ZOO_VERSION = "1"


def recipe_hash(preset: Preset, stories: Path | None) -> str:
    """Preset, stories flag and the source code that builds the zoo (huref.zoo and the training
    loop and corpus of huref.lm): a changed recipe rebuilds the zoo."""
    code = hashlib.sha256()
    here = Path(__file__).parent
    for f in [*sorted(here.glob("*.py")), *sorted((here.parent / "lm").glob("*.py"))]:
        code.update(f.read_bytes())
    blob = json.dumps(
        {"v": ZOO_VERSION, "preset": preset.recipe(), "stories": bool(stories), "code": code.hexdigest()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished(dest: Path, key: str) -> str | None:
    """A text field of the finished zoo's manifest in ``dest``; None when there is no zoo, the
    manifest is unreadable, or the field is missing or not text."""
    try:
        doc = json.loads((dest / "zoo.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def built_with(dest: Path, recipe: str) -> bool:
    """Whether ``dest`` holds a finished zoo of this recipe (an unreadable manifest is not one)."""
    return _finished(dest, "recipe") == recipe


def manifest_doc(preset: Preset, recipe: str, entries: list[dict], build_seconds: float) -> dict:
    """The ``zoo.json`` document: how the zoo was built and one entry per model, sorted by name
    (a realistic zoo adds its calibration summary)."""
    return {
        "zoo_version": ZOO_VERSION,
        "preset": preset.name,
        "recipe": recipe,
        "build_seconds": build_seconds,
        "tokenizer": "_tokenizer/tokenizer.json",
        "heldout": "_data/streams.safetensors#heldout",
        "regime": preset.regime,
        **({"calibration": calibration.summary(entries)} if preset.regime == "realistic" else {}),
        "models": sorted(entries, key=lambda e: e["name"]),
    }


def write_manifest(root: Path, doc: dict) -> None:
    (root / "zoo.json").write_text(json.dumps(doc, indent=2) + "\n")


def built_preset(dest: Path) -> str | None:
    """The preset of the finished zoo in ``dest``, or None (no zoo, or an unreadable manifest)."""
    return _finished(dest, "preset")


def load_manifest(zoo: str | Path) -> dict:
    path = Path(zoo) / "zoo.json"
    if not path.is_file():
        raise UsageError(f"{zoo}: no zoo.json (build one with 'huref zoo build')")
    return json.loads(path.read_text())
