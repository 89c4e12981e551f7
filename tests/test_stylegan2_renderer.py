"""The "stylegan2" renderer plug-in: 512-d z in, deterministic 512x512 RGB image out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import huref.render.stylegan2  # noqa: F401  (registers the renderer)
from huref.errors import RenderError
from huref.render.base import RENDERERS, Z_DIM
from huref.render.stylegan2 import Generator, StyleGAN2Renderer, to_pil

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures" / "stylegan2"
PKL = FIXTURES / "generator-64.pkl"


@pytest.fixture(scope="module")
def renderer() -> StyleGAN2Renderer:
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent")
    made = RENDERERS.get("stylegan2")(checkpoint=PKL, psi=0.5, cutoff=8, device="cpu")
    assert isinstance(made, StyleGAN2Renderer)
    return made


def _z(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(Z_DIM)


def test_render_gives_deterministic_512_rgb_image(renderer: StyleGAN2Renderer) -> None:
    image = renderer.render(_z(0))
    assert isinstance(image, Image.Image)
    assert image.size == (512, 512) and image.mode == "RGB"
    again = np.asarray(renderer.render(_z(0)))
    assert np.array_equal(np.asarray(image), again)
    other = np.asarray(renderer.render(_z(1))).astype(int)
    assert np.abs(other - again).mean() > 1.0  # another vector gives another image
    assert np.asarray(image).std() > 1.0  # not a flat image


def test_render_uses_first_z_dim_values_with_truncation(renderer: StyleGAN2Renderer) -> None:
    z = _z(2)
    tail_changed = z.copy()
    tail_changed[64:] += 5.0  # the fixture generator has z_dim 64
    assert np.array_equal(np.asarray(renderer.render(z)), np.asarray(renderer.render(tail_changed)))
    raw = renderer.render_raw(z)
    with torch.no_grad():
        want = renderer.generator(torch.tensor(z[None, :64], dtype=torch.float32), 0.5, 8)[0]
    assert torch.equal(raw, want)


def test_official_8bit_conversion() -> None:
    img = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 6).repeat(3, 1, 1)
    pixels = np.asarray(to_pil(img, size=6))[0, :, 0]
    assert pixels.tolist() == [0, 0, 128, 191, 255, 255]  # x * 127.5 + 128, clamped, truncated


@pytest.mark.parametrize("bad", [np.zeros(511), np.zeros((2, 512)), np.full(512, np.nan)])
def test_bad_vectors_are_refused(renderer: StyleGAN2Renderer, bad: np.ndarray) -> None:
    with pytest.raises(RenderError):
        renderer.render(bad)


def test_generator_wider_than_512_is_refused() -> None:
    wide = Generator(
        z_dim=600,
        c_dim=0,
        w_dim=8,
        img_resolution=4,
        img_channels=3,
        mapping_kwargs={"num_layers": 1},
        synthesis_kwargs={"channel_max": 8},
    )
    with pytest.raises(RenderError, match="600"):
        StyleGAN2Renderer(wide)


def test_missing_checkpoint_is_a_render_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="does not exist"):
        RENDERERS.get("stylegan2")(checkpoint=tmp_path / "nope.pkl")
