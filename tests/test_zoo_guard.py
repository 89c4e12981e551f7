"""A zoo of one preset is never silently replaced by another, and evaluations read a zoo as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import huref.zoo.build
from huref.errors import UsageError
from huref.zoo.build import build_zoo, existing_or_built


def _fake_zoo(dest: Path, preset: str) -> Path:
    dest.mkdir()
    (dest / "zoo.json").write_text(json.dumps({"preset": preset, "recipe": "0" * 16, "models": []}))
    (dest / "llama-a").mkdir()
    (dest / "llama-a" / "model.safetensors").write_bytes(b"weights trained for half an hour")
    return dest


def _files(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


def test_building_another_preset_over_a_zoo_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    zoo = _fake_zoo(tmp_path / "zoo", "realistic")
    before = _files(zoo)
    with pytest.raises(UsageError, match="holds a 'realistic' zoo"):
        build_zoo(zoo, "tiny")
    assert _files(zoo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # no temporary folder left


def test_evaluations_read_an_existing_zoo_of_any_preset_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*a: object, **k: object) -> Path:
        raise AssertionError("an existing zoo was rebuilt")

    monkeypatch.setattr(huref.zoo.build, "build_zoo", no_build)
    for preset in ("realistic", "demo"):
        zoo = _fake_zoo(tmp_path / preset, preset)
        assert existing_or_built(zoo) == zoo
    with pytest.raises(AssertionError, match="rebuilt"):  # an empty folder does get built
        existing_or_built(tmp_path / "empty")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"preset": 3, "recipe": null}'])
def test_an_unreadable_manifest_is_no_finished_zoo(text: str, tmp_path: Path) -> None:
    from huref.zoo.manifest import built_preset, built_with

    (tmp_path / "zoo.json").write_text(text)
    assert built_preset(tmp_path) is None and not built_with(tmp_path, "0" * 16)
    assert built_preset(tmp_path / "missing") is None and not built_with(tmp_path / "missing", "0" * 16)
