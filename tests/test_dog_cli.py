"""``huref dog`` and the huref.dogs API: valid images, the same dog for attacked models, a sheet for
several models, and bad input refused with one line, exit code 2 and no image left behind."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from huref.cli import main
from huref.dogs import dog_png_bytes, dog_vector, fingerprint_of, render_dog
from huref.errors import RenderError, UsageError
from huref.invariants.fingerprint import Fingerprint
from huref.invariants.fpfile import save_fingerprint
from huref.render import get_renderer
from huref.render.sheet import sheet_size

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fps(tiny_zoo: Path) -> dict:
    """Robust-mode fingerprints of the zoo models these tests draw."""
    names = ("llama-a", "llama-a-attack-residual-rotation", "llama-b", "gpt2-a")
    return {n: fingerprint_of(tiny_zoo / n) for n in names}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_dog_writes_a_png_and_prints_the_vector(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dog.png"
    code, stdout, _ = _run(capsys, "dog", str(tiny_zoo / "llama-a"), "-o", str(out), "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["renderer"] == "sketch" and doc["path"] == str(out)
    z = np.asarray(doc["z"])
    assert z.shape == (512,) and np.isfinite(z).all()
    assert 0.7 < np.linalg.norm(z) / np.sqrt(512) < 1.3  # a typical standard-normal vector
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (512, 512) and img.mode == "RGB"
    assert np.allclose(z, dog_vector(fingerprint_of(tiny_zoo / "llama-a")))


def test_a_fingerprint_file_gives_the_same_dog_as_its_checkpoint(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp_file = tmp_path / "fp.safetensors"
    assert main(["fingerprint", str(tiny_zoo / "stories260k"), "-o", str(fp_file), "--modes", "robust"]) == 0
    capsys.readouterr()
    zs = []
    for source in (fp_file, tiny_zoo / "stories260k"):
        code, stdout, _ = _run(capsys, "dog", str(source), "--json")
        assert code == 0
        zs.append(np.asarray(json.loads(stdout)["z"]))
    assert np.allclose(zs[0], zs[1], atol=1e-6)


def test_attacked_model_gets_its_base_dog_and_an_independent_model_does_not(fps: dict) -> None:
    base = dog_vector(fps["llama-a"])
    rotated = dog_vector(fps["llama-a-attack-residual-rotation"])
    other = dog_vector(fps["llama-b"])
    assert _cos(base, rotated) > 0.999
    assert abs(_cos(base, other)) < 0.3
    same = np.asarray(render_dog(base, size=64), dtype=float)
    near = np.asarray(render_dog(rotated, size=64), dtype=float)
    far = np.asarray(render_dog(other, size=64), dtype=float)
    assert np.abs(same - near).mean() < 1.0 < np.abs(same - far).mean()


def test_sheet_shows_every_model_with_its_label(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "sheet.png"
    models = [str(tiny_zoo / m) for m in ("llama-a", "llama-a-sft", "llama-b")]
    args = ["dog", *models, "--sheet", str(sheet), "--cell", "96", "--columns", "3"]
    args += ["--label", "base", "--label", "sft", "--label", "independent", "--json"]
    code, stdout, _ = _run(capsys, *args)
    assert code == 0
    doc = json.loads(stdout)
    assert [d["model"] for d in doc["dogs"]] == models and doc["sheet"] == str(sheet)
    assert Image.open(sheet).size == sheet_size(3, 3, 96, 1, 1)


def test_png_bytes_for_html_are_a_thumbnail(fps: dict) -> None:
    data = dog_png_bytes(fps["gpt2-a"], size=96)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data)).size == (96, 96)
    assert len(data) < 40_000


@pytest.mark.parametrize(
    "case",
    [
        "missing-model",
        "not-png",
        "missing-folder",
        "unknown-renderer",
        "stylegan2-without-checkpoint",
        "checkpoint-for-sketch",
        "two-models-one-output",
        "nothing-to-do",
        "bad-encoder",
        "label-count",
    ],
)
def test_bad_input_gives_one_error_line_exit_2_and_no_image(
    case: str, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, out = str(tiny_zoo / "llama-a"), str(tmp_path / "dog.png")
    args = {
        "missing-model": ["dog", str(tmp_path / "nope"), "-o", out],
        "not-png": ["dog", model, "-o", str(tmp_path / "dog.jpg")],
        "missing-folder": ["dog", model, "-o", str(tmp_path / "no" / "dog.png")],
        "unknown-renderer": ["dog", model, "-o", out, "--renderer", "skecth"],
        "stylegan2-without-checkpoint": ["dog", model, "-o", out, "--renderer", "stylegan2"],
        "checkpoint-for-sketch": ["dog", model, "-o", out, "--checkpoint", str(tmp_path / "g.pkl")],
        "two-models-one-output": ["dog", model, model, "-o", out],
        "nothing-to-do": ["dog", model],
        "bad-encoder": ["dog", model, "-o", out, "--encoder", str(tmp_path / "missing.safetensors")],
        "label-count": ["dog", model, "--sheet", out, "--label", "a", "--label", "b"],
    }[case]
    code, _, err = _run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error:")
    if case == "unknown-renderer":
        assert "did you mean 'sketch'" in lines[0] and "stylegan2" in lines[0]
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.tmp"))


def test_render_dog_refuses_bad_vectors() -> None:
    for bad in (np.zeros(511), np.full(512, np.nan), np.zeros((2, 512))):
        with pytest.raises(RenderError):
            render_dog(bad)
    with pytest.raises(UsageError, match="unknown renderer"):
        get_renderer("nope")


def test_encoder_info_reports_the_pinned_shipped_weights(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "encoder", "info", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["shipped"] is True
    h = doc["metrics"]["heldout"]
    assert h["n"] >= 1000 and h["ks_pvalue"] > 0.01


def test_encoder_train_refuses_bad_arguments_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "enc.safetensors"
    existing.write_bytes(b"x")
    for args in (["--steps", "0"], ["--calibration-models", "10"]):
        code, _, err = _run(capsys, "encoder", "train", "-o", str(tmp_path / "new.safetensors"), *args)
        assert code == 2 and err.startswith("huref: error:")
    code, _, err = _run(capsys, "encoder", "train", "-o", str(existing))
    assert code == 2 and "--force" in err
    assert existing.read_bytes() == b"x" and not (tmp_path / "new.safetensors").exists()


STYLEGAN2 = (
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "stylegan2" / "generator-64.pkl"
)


def test_stylegan2_renderer_draws_the_same_vector(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The official-format test generator (64 px) renders z through ``--renderer stylegan2``."""
    if not STYLEGAN2.is_file():
        pytest.skip(f"{STYLEGAN2} is absent")
    out = tmp_path / "dog.png"
    args = ["dog", str(tiny_zoo / "llama-a"), "-o", str(out), "--size", "64", "--json"]
    code, stdout, _ = _run(capsys, *args, "--renderer", "stylegan2", "--checkpoint", str(STYLEGAN2))
    assert code == 0
    doc = json.loads(stdout)
    assert doc["renderer"] == "stylegan2"
    img = np.asarray(Image.open(out), dtype=float)
    assert img.shape == (64, 64, 3) and img.std() > 5  # a picture, not a flat colour
    again = np.asarray(
        render_dog(np.asarray(doc["z"]), "stylegan2", size=64, checkpoint=str(STYLEGAN2)), dtype=float
    )
    assert np.abs(img - again).max() <= 1  # same z, same generator: same image


def _variant(fp: Fingerprint, path: Path, n: int | None = None, key: str | None = None) -> Path:
    """A sealed fingerprint file of fp as if taken with robust n (first n tokens) or another key."""
    robust = fp.robust
    assert robust is not None
    meta = {**fp.meta, "settings": {**fp.meta["settings"]}}
    if n is not None:
        meta["settings"]["n"] = n
        robust = dataclasses.replace(
            robust,
            token_ids=robust.token_ids[:n],
            token_strings=robust.token_strings[:n],
            terms=robust.terms[:, :, :n, :n].clone(),
        )
    if key is not None:
        robust = dataclasses.replace(robust, key_digest=key)
    return save_fingerprint(dataclasses.replace(fp, meta=meta, robust=robust), path)


def test_dog_refuses_inputs_fingerprinted_with_different_settings(
    fps: dict,
    tiny_zoo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = fps["llama-a"]
    assert base.meta["settings"]["n"] == 512
    plain = _variant(base, tmp_path / "plain.safetensors")
    small = _variant(base, tmp_path / "n128.safetensors", n=128)
    keyed = _variant(base, tmp_path / "keyed.safetensors", key="0123456789abcdef")
    sheet = tmp_path / "sheet.png"
    for args, difference in (
        ([plain, small, "--json"], "robust n 512 vs 128"),
        ([plain, keyed, "--sheet", sheet], "token key"),
        ([small, keyed, "--json"], "robust n 128 vs 512"),
    ):
        code, stdout, err = _run(capsys, "dog", *map(str, args))
        lines = err.strip().splitlines()
        assert code == 2 and stdout == "" and len(lines) == 1, err
        assert lines[0].startswith("huref: error:") and difference in lines[0]
    assert not sheet.exists() and not list(tmp_path.glob("*.tmp"))

    import huref.invariants

    def no_fingerprinting(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was fingerprinted before the settings were compared")

    with monkeypatch.context() as m:  # a checkpoint gets the default settings: not the key's
        m.setattr(huref.invariants, "fingerprint_model", no_fingerprinting)
        code, _, err = _run(capsys, "dog", str(keyed), str(tiny_zoo / "llama-a"), "--json")
        assert code == 2 and "token key" in err and "llama-a (fingerprinted here" in err
    code, stdout, _ = _run(capsys, "dog", str(plain), str(tiny_zoo / "llama-a"), "--json")
    assert code == 0
    z_file, z_checkpoint = (np.asarray(d["z"]) for d in json.loads(stdout)["dogs"])
    assert np.allclose(z_file, z_checkpoint, atol=1e-4)  # the file stores float16 terms


def test_dog_warns_when_n_is_outside_the_encoders_training_range(
    fps: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = _variant(fps["llama-a"], tmp_path / "n128.safetensors", n=128)
    code, stdout, err = _run(capsys, "dog", str(small), "--json")
    assert code == 0 and json.loads(stdout)["z"]
    assert err.startswith("huref: warning:") and "128 probe tokens" in err and "320..640" in err
    code, _, err = _run(capsys, "dog", str(_variant(fps["llama-a"], tmp_path / "a.safetensors")), "--json")
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("size-too-big", "--size must be 16..4096"),
        ("cell-too-big", "--cell 16..2048"),
        ("no-columns", "--columns must be at least 1"),
        ("output-is-a-folder", "is a folder"),
        ("sheet-is-a-folder", "is a folder"),
    ],
)
def test_bad_command_line_is_refused_before_any_fingerprinting(
    case: str,
    message: str,
    tiny_zoo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huref.dogs

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the command line was checked")

    for name in ("fingerprint_of", "fingerprints_of", "dog_vector"):
        monkeypatch.setattr(huref.dogs, name, no_work)
    model, out, folder = str(tiny_zoo / "llama-a"), str(tmp_path / "dog.png"), tmp_path / "d.png"
    folder.mkdir()
    args = {
        "size-too-big": ["-o", out, "--size", "4097"],
        "cell-too-big": ["--sheet", out, "--cell", "2049"],
        "no-columns": ["--sheet", out, "--columns", "0"],
        "output-is-a-folder": ["-o", str(folder)],
        "sheet-is-a-folder": ["--sheet", str(folder)],
    }[case]
    code, _, err = _run(capsys, "dog", model, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("huref: error:") and message in lines[0]
    assert list(tmp_path.rglob("*.png*")) == [folder] and not any(folder.iterdir())
