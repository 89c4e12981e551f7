"""The sketch renderer: valid, deterministic images whose likeness tracks the latent distance."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from huref.errors import RenderError
from huref.render.base import RENDERERS, Z_DIM
from huref.render.sketch import (
    FEATURES,
    LIPSCHITZ,
    SketchRenderer,
    feature_vector,
    features,
    projection,
)

RENDERER = SketchRenderer()


def neighbour(z: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A vector of z's norm at exactly this cosine to z: z mixed with orthogonal noise."""
    noise = rng.standard_normal(z.shape)
    noise -= (noise @ z) / (z @ z) * z
    noise *= np.linalg.norm(z) / np.linalg.norm(noise)
    return cosine * z + math.sqrt(1.0 - cosine**2) * noise


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference (0-255) of 32 x 32 box-filtered copies: the look, not the edges."""

    def small(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)

    return float(np.abs(small(a) - small(b)).mean())


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_render_is_512_square_rgb() -> None:
    img = RENDERER.render(np.random.default_rng(0).standard_normal(Z_DIM))
    assert img.size == (512, 512)
    assert img.mode == "RGB"


def test_render_twice_gives_identical_png_bytes() -> None:
    z = np.random.default_rng(1).standard_normal(Z_DIM)
    first, second = RENDERER.render(z), SketchRenderer().render(z.tolist())
    assert first.tobytes() == second.tobytes()
    assert png_bytes(first) == png_bytes(second)


def test_sketch_is_registered_with_a_factory_that_needs_no_arguments() -> None:
    renderer = RENDERERS.get("sketch")()
    assert renderer.name == "sketch"
    z = np.random.default_rng(2).standard_normal(Z_DIM)
    assert renderer.render(z).tobytes() == RENDERER.render(z).tobytes()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(Z_DIM - 1),
        np.zeros(Z_DIM + 1),
        np.zeros((1, Z_DIM)),
        np.array(3.0),
        np.concatenate([np.zeros(Z_DIM - 1), [np.nan]]),
        np.concatenate([[np.inf], np.zeros(Z_DIM - 1)]),
        ["x"] * Z_DIM,
    ],
    ids=["short", "long", "batched", "scalar", "nan", "inf", "text"],
)
def test_bad_vectors_raise_render_error(bad: object) -> None:
    with pytest.raises(RenderError):
        RENDERER.render(bad)  # type: ignore[arg-type]


def test_extreme_vectors_still_render_a_dog() -> None:
    # all features at 1/2, then at their limits 0 and 1: no division by zero, no empty shapes
    for z in (np.zeros(Z_DIM), 1e6 * np.ones(Z_DIM), -1e6 * np.ones(Z_DIM)):
        img = RENDERER.render(z)
        assert img.size == (512, 512)
        assert len(img.getcolors(1 << 20) or []) > 20  # drawn, not a flat background


def test_projection_rows_are_orthonormal_and_use_every_coordinate() -> None:
    w = projection()
    assert w.shape == (len(FEATURES), Z_DIM)
    np.testing.assert_allclose(w @ w.T, np.eye(len(FEATURES)), atol=1e-12)
    assert np.all(np.abs(w).max(axis=0) > 0.01)  # no coordinate of z is ignored
    assert len(set(FEATURES)) == len(FEATURES)
    assert 30 <= len(FEATURES) <= 45


def test_every_coordinate_of_z_changes_the_portrait() -> None:
    z = np.random.default_rng(3).standard_normal(Z_DIM)
    base = RENDERER.render(z).tobytes()
    for i in (0, 255, Z_DIM - 1):
        bumped = z.copy()
        bumped[i] += 1.0
        assert not np.array_equal(feature_vector(bumped), feature_vector(z))
        assert RENDERER.render(bumped).tobytes() != base


def test_features_are_uniform_for_gaussian_vectors() -> None:
    rng = np.random.default_rng(4)
    u = np.stack([feature_vector(rng.standard_normal(Z_DIM)) for _ in range(400)])
    assert u.min() >= 0.0 and u.max() <= 1.0
    # Phi of a standard normal is uniform: mean 1/2 and standard deviation 1/sqrt(12) = 0.289
    assert np.all(np.abs(u.mean(axis=0) - 0.5) < 0.06)
    assert np.all(np.abs(u.std(axis=0) - 0.289) < 0.04)
    assert set(features(rng.standard_normal(Z_DIM))) == set(FEATURES)


def test_feature_map_is_lipschitz() -> None:
    rng = np.random.default_rng(5)
    snap = math.sqrt(len(FEATURES)) * 2.0**-16  # the grid the features are snapped to
    ratios = []
    for scale in (1e-3, 1e-2, 0.1, 1.0, 10.0):
        for _ in range(10):
            z = rng.standard_normal(Z_DIM)
            dz = scale * rng.standard_normal(Z_DIM)
            du = np.linalg.norm(feature_vector(z + dz) - feature_vector(z))
            assert du <= LIPSCHITZ * np.linalg.norm(dz) + snap
            if scale >= 0.1:
                ratios.append(du / np.linalg.norm(dz))
    assert max(ratios) > 0.02  # and the bound is not vacuous: features do move with z


def test_pixel_distance_grows_with_latent_distance() -> None:
    cosines = (0.99, 0.95, 0.8, 0.0)
    dist = np.zeros(len(cosines))
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        z = rng.standard_normal(Z_DIM)
        img = RENDERER.render(z)
        for k, c in enumerate(cosines):
            dist[k] += pixel_distance(img, RENDERER.render(neighbour(z, c, rng))) / 8
    assert np.all(np.diff(dist) > 0), dist


def test_close_neighbours_look_far_more_alike_than_independent_dogs() -> None:
    # cosine 0.95 is what a fine-tuned model's vector keeps of its base's; independent
    # models' vectors are nearly orthogonal
    near, far = [], []
    for seed in range(16):
        rng = np.random.default_rng(200 + seed)
        z = rng.standard_normal(Z_DIM)
        img = RENDERER.render(z)
        near.append(pixel_distance(img, RENDERER.render(neighbour(z, 0.95, rng))))
        far.append(pixel_distance(img, RENDERER.render(rng.standard_normal(Z_DIM))))
    assert np.mean(near) < np.mean(far) / 3, (np.mean(near), np.mean(far))
    assert np.median(near) < np.percentile(far, 10)  # a typical neighbour beats a close stranger
