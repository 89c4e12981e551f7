"""Commands that write files never write over what they read nor over someone else's file, and
arguments are checked before any work: a bad one is one ``huref: error:`` line and exit code 2,
with every file left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from formatkit import tiny_llama

from huref.cli import main
from huref.errors import HurefError, UsageError

SMALL = ["--n", "16", "--paper-n", "16"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guard")
    model, _ = tiny_llama()
    model.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def model(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error:"), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ fingerprint -o


def test_fingerprint_output_over_the_model_weights_is_refused(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(tmp_path)
    weights = model / "model.safetensors"
    _refused(["fingerprint", model, "-o", weights, *SMALL], capsys, "input")
    _refused(["fingerprint", weights, "-o", weights, *SMALL], capsys, "input")
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)
    before[link.name] = before["model/model.safetensors"]
    _refused(["fingerprint", model, "-o", link, *SMALL], capsys, "input")
    assert _tree(tmp_path) == before


def test_fingerprint_output_inside_the_model_folder_is_refused(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second .safetensors file would leave the folder unreadable as a model."""
    before = _tree(tmp_path)
    _refused(["fingerprint", model, "-o", model / "fp.safetensors", *SMALL], capsys, "model folder")
    # a bare weights file reads its config.json from beside it: that folder is the model too
    _refused(
        ["fingerprint", model / "model.safetensors", "-o", model / "fp.safetensors", *SMALL],
        capsys,
        "model folder",
    )
    assert _tree(tmp_path) == before
    assert main(["inspect", str(model)]) == 0


def test_fingerprint_never_overwrites_a_file_that_is_not_a_fingerprint(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.safetensors"
    shutil.copy(model / "model.safetensors", other)
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    before = _tree(tmp_path)
    for target in (other, notes):
        _refused(["fingerprint", model, "-o", target, *SMALL], capsys, "not a huref fingerprint")
    assert _tree(tmp_path) == before


def test_fingerprint_replaces_an_earlier_fingerprint(model: Path, tmp_path: Path) -> None:
    from huref.invariants import load_fingerprint

    out = tmp_path / "fp.safetensors"
    assert main(["fingerprint", str(model), "-o", str(out), *SMALL]) == 0
    assert main(["fingerprint", str(model), "-o", str(out), "--n", "24", "--paper-n", "16"]) == 0
    fp = load_fingerprint(out)
    assert fp.robust is not None and fp.robust.n == 24


# ------------------------------------------------------------------ other writers


def test_dog_image_inside_the_model_folder_is_refused(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(tmp_path)
    _refused(["dog", model, "-o", model / "dog.png"], capsys, "model folder")
    _refused(["dog", model, "--sheet", model / "sheet.png"], capsys, "model folder")
    same = tmp_path / "dog.png"
    _refused(["dog", model, "-o", same, "--sheet", same], capsys, "same file")
    assert _tree(tmp_path) == before


def test_fpvec_vector_inside_a_model_folder_is_refused(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(tmp_path)
    _refused(["fpvec", "extract", model, model, "-o", model / "v.safetensors"], capsys, "model folder")
    assert _tree(tmp_path) == before


def test_stylegan2_conversion_never_writes_over_its_input(tmp_path: Path) -> None:
    from huref.render.stylegan2.convert import convert_pickle_to_safetensors

    pkl = tmp_path / "G.pkl"
    pkl.write_bytes(b"not really a pickle")
    link = tmp_path / "G.safetensors"
    link.symlink_to(pkl)
    with pytest.raises(HurefError, match="input"):
        convert_pickle_to_safetensors(pkl, link)
    assert pkl.read_bytes() == b"not really a pickle"


# ------------------------------------------------------------------ compare --fail-on


@pytest.mark.parametrize("fail_on", ["bogus", "Derived", ""])
def test_compare_refuses_an_unknown_fail_on_verdict(
    model: Path, fail_on: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(["compare", model, model, "--fail-on", fail_on, *SMALL], capsys, "--fail-on")


def test_compare_fail_on_a_known_verdict_still_exits_1(model: Path, tmp_path: Path) -> None:
    fp = tmp_path / "fp.safetensors"
    assert main(["fingerprint", str(model), "-o", str(fp), *SMALL]) == 0
    assert main(["compare", str(fp), str(fp), "--json", "--no-registry", "--fail-on", "derived"]) == 1


# ------------------------------------------------------------------ zoo build and demo


def test_zoo_and_demo_refuse_a_file_as_their_zoo_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused(["zoo", "build", afile], capsys, "not a folder")
    _refused(["demo", "--zoo", afile, "--out", tmp_path / "out"], capsys, "not a folder")
    assert afile.read_text() == "mine" and not (tmp_path / "out").exists()


def _folder_with_outputs(root: Path) -> Path:
    for sub in ("scan", "fpvec", "registry", "suspects"):
        (root / sub).mkdir(parents=True)
        (root / sub / "keep.txt").write_text(sub)
    return root


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "bogus"], "unknown preset"),
        (["--workers", "0"], "--workers"),
        ([], "did not write"),  # not a folder the demo wrote
    ],
    ids=["bad-preset", "bad-workers", "foreign-folder"],
)
def test_demo_checks_its_arguments_before_removing_anything(
    tmp_path: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _folder_with_outputs(tmp_path / "out")
    before = _tree(tmp_path)
    _refused(["demo", "--out", out, "--zoo", tmp_path / "zoo", *args], capsys, needle)
    assert _tree(tmp_path) == before


def test_demo_out_and_zoo_must_not_nest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["demo", "--out", tmp_path / "d", "--zoo", tmp_path / "d" / "zoo"], capsys, "separate")
    _refused(["demo", "--out", tmp_path / "z" / "out", "--zoo", tmp_path / "z"], capsys, "separate")
    assert list(tmp_path.iterdir()) == []


def test_demo_replaces_only_its_own_outputs_once_the_zoo_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder the demo marked (or an earlier run's, known by its demo.json) is reused; its old
    outputs are removed only after the zoo is ready, so a failed build leaves them in place."""
    from huref import demo
    from huref.zoo import build

    def failing_build(*args: object, **kwargs: object) -> Path:
        raise UsageError("zoo build failed")

    monkeypatch.setattr(build, "build_zoo", failing_build)
    legacy = _folder_with_outputs(tmp_path / "legacy")
    (legacy / "demo.json").write_text(json.dumps({"audits": [], "index": "x", "ok": True}))
    before = _tree(legacy)
    cfg = demo.DemoConfig(out=legacy, zoo=tmp_path / "zoo", preset="tiny")
    with pytest.raises(UsageError, match="zoo build failed"):
        demo.run_demo(cfg)
    assert (legacy / demo.MARKER).is_file()
    assert {k: v for k, v in _tree(legacy).items() if k != demo.MARKER} == before

    marked = _folder_with_outputs(tmp_path / "marked")
    (marked / demo.MARKER).write_text("")
    demo.check_config(demo.DemoConfig(out=marked, zoo=tmp_path / "zoo"))  # accepted
    (tmp_path / "empty").mkdir()
    demo.check_config(demo.DemoConfig(out=tmp_path / "empty", zoo=tmp_path / "zoo"))


def test_demo_on_a_fresh_folder_marks_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huref import demo
    from huref.zoo import build

    monkeypatch.setattr(build, "build_zoo", lambda *a, **k: (_ for _ in ()).throw(UsageError("stop")))
    out = tmp_path / "new" / "out"
    with pytest.raises(UsageError):
        demo.run_demo(demo.DemoConfig(out=out, zoo=tmp_path / "zoo", preset="tiny"))
    assert os.listdir(out) == [demo.MARKER]
