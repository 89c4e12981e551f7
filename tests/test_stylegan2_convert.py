"""pkl -> safetensors conversion: atomic write, str->str metadata, identical images on reload."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from huref.errors import RenderError
from huref.render.stylegan2 import (
    convert_pickle_to_safetensors,
    generator_from_pickle,
    load_generator,
    load_generator_safetensors,
)
from huref.render.stylegan2.convert import META_KIND, META_KWARGS, META_SOURCE

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures" / "stylegan2"
PKL = FIXTURES / "generator-64.pkl"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent")
    out_dir = tmp_path_factory.mktemp("converted")
    out = convert_pickle_to_safetensors(PKL, out_dir / "generator-64.safetensors")
    assert sorted(p.name for p in out_dir.iterdir()) == ["generator-64.safetensors"]  # no temp
    return out


def test_converted_file_has_metadata_and_all_tensors(converted: Path) -> None:
    with safe_open(str(converted), framework="pt") as f:
        meta = f.metadata()
        names = list(f.keys())
    assert meta["format"] == "pt"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    kwargs = json.loads(meta[META_KWARGS])
    assert kwargs["z_dim"] == 64 and kwargs["img_resolution"] == 64
    assert kwargs["synthesis_kwargs"]["channel_base"] == 2048
    assert kwargs["mapping_kwargs"]["lr_multiplier"] == 0.01
    assert meta[META_SOURCE] == hashlib.sha256(PKL.read_bytes()).hexdigest()
    assert meta[META_KIND] == "huref.stylegan2.generator"
    assert len(names) == 106


def test_reloaded_generator_gives_identical_images(converted: Path) -> None:
    from_pkl = generator_from_pickle(PKL)
    from_st = load_generator_safetensors(converted)
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for psi, cutoff in [(1.0, None), (0.5, 8)]:
            a = from_pkl(z, psi, cutoff, noise_mode="const")
            b = from_st(z, psi, cutoff, noise_mode="const")
            assert torch.equal(a, b)
    ref = load_file(str(FIXTURES / "reference-64.safetensors"))
    with torch.no_grad():
        img = load_generator(converted)(ref["z"], 0.5, 8)  # format told apart by content
    diff = (img - ref["img_psi05_cutoff8"]).abs().max().item()
    print(f"safetensors img_psi05_cutoff8: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_tampered_safetensors_is_refused(converted: Path, tmp_path: Path) -> None:
    tensors = load_file(str(converted))
    with safe_open(str(converted), framework="pt") as f:
        meta = f.metadata()
    dropped = dict(tensors)
    dropped.pop("synthesis.b32.torgb.bias")
    save_file(dropped, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(RenderError, match=r"lacks tensor synthesis\.b32\.torgb\.bias"):
        load_generator_safetensors(tmp_path / "missing.safetensors")
    reshaped = dict(tensors, **{"mapping.w_avg": torch.zeros(65)})
    save_file(reshaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(RenderError, match=r"mapping\.w_avg has shape \[65\]"):
        load_generator_safetensors(tmp_path / "shape.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RenderError, match="not a huref StyleGAN2 generator"):
        load_generator(tmp_path / "nometa.safetensors")


def test_convert_errors_leave_nothing_behind(tmp_path: Path) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent")
    with pytest.raises(RenderError, match="does not exist"):
        convert_pickle_to_safetensors(PKL, tmp_path / "no" / "such" / "dir.safetensors")
    with pytest.raises(RenderError, match="does not exist"):
        convert_pickle_to_safetensors(tmp_path / "absent.pkl", tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_output_and_no_temp_file(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huref.render.stylegan2.convert as convert

    out = tmp_path / "g.safetensors"
    out.write_bytes(b"previous version")

    def half_write(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(convert, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        convert.save_generator(load_generator_safetensors(converted), out)
    assert out.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_convert_command_writes_a_loadable_generator(tmp_path: Path) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent")
    from huref.cli import main

    out = tmp_path / "g.safetensors"
    assert main(["convert-stylegan2", str(PKL), "-o", str(out)]) == 0
    g = load_generator_safetensors(out)
    assert sum(p.numel() for p in g.parameters()) > 0
    assert main(["convert-stylegan2", str(PKL), "-o", str(out)]) == 2  # never overwrites


TINY = {
    "z_dim": 8,
    "c_dim": 0,
    "w_dim": 8,
    "img_resolution": 8,
    "img_channels": 3,
    "mapping_kwargs": {"num_layers": 2},
    "synthesis_kwargs": {"channel_base": 64, "channel_max": 8},
}


@pytest.fixture()
def tiny_file(tmp_path: Path) -> Path:
    """A tiny generator with random weights, saved the way convert-stylegan2 saves one."""
    from huref.render.stylegan2 import Generator, save_generator

    g = Generator(**TINY)
    torch.manual_seed(0)
    with torch.no_grad():
        for t in g.state_dict().values():
            t.copy_(torch.randn_like(t))
    return save_generator(g, tmp_path / "tiny.safetensors")


def test_tiny_generator_round_trips_through_the_checked_loader(tiny_file: Path) -> None:
    g = load_generator(tiny_file)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    assert g(z).shape == (2, 3, 8, 8)
    for name, t in load_file(str(tiny_file)).items():
        assert torch.equal(g.state_dict()[name], t), name  # every tensor came from the file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"w_dim": 200_000}, r"w_dim = 200000 is outside"),
        ({"z_dim": "8"}, r"z_dim must be an integer"),
        ({"synthesis_kwargs": {"channel_base": 64, "channel_max": 0}}, r"channel_max = 0"),
        ({"mapping_kwargs": {"num_layers": 2.5}}, r"num_layers must be an integer"),
        ({"img_resolution": 16}, r"lacks tensor|has shape"),  # valid, but not these tensors
        ({"extra": 1}, r"bad generator configuration"),
    ],
    ids=["huge", "str", "zero-channels", "float-layers", "other-shapes", "unknown-argument"],
)
def test_bad_configuration_in_safetensors_metadata_is_refused(
    tiny_file: Path, tmp_path: Path, change: dict, message: str
) -> None:
    with safe_open(str(tiny_file), framework="pt") as f:
        meta = f.metadata()
    meta[META_KWARGS] = json.dumps({**TINY, **change})
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(tiny_file)), str(bad), metadata=meta)
    with pytest.raises(RenderError, match=message) as info:
        load_generator(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_integer_tensors_are_refused_from_the_header(tiny_file: Path, tmp_path: Path) -> None:
    with safe_open(str(tiny_file), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny_file))
    tensors["mapping.w_avg"] = tensors["mapping.w_avg"].to(torch.int64)
    bad = tmp_path / "int.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(RenderError, match=r"mapping\.w_avg is I64"):
        load_generator(bad)
