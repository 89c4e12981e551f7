"""The numpy inference path of the dog encoder equals the torch network it transcribes.

Dogs are drawn with numpy (encoder/infer.py, weights read with safetensors' numpy interface); the
encoder is trained in torch (model.py). These tests hold the two equal on real zoo fingerprints,
on synthetic stacks, on stacks far outside the calibration's knots, and for a freshly built
encoder of another width, so neither can change without the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from huref.encoder import synthetic as syn
from huref.encoder import weights
from huref.encoder.canonical import CHANNELS, GRID, canonical_stack, standardise_channels
from huref.encoder.infer import NumpyEncoder, state_shapes
from huref.encoder.model import CalibratedEncoder
from huref.encoder.weights import load_encoder, load_numpy_encoder, load_numpy_encoder_file, save_encoder
from huref.errors import RenderError

pytestmark = pytest.mark.usefixtures("one_thread")

Z_TOL = 2e-5  # float32 torch network against the float64 numpy one, relative beyond |z| = 1


def _z_gap(z_numpy: np.ndarray, z_torch: np.ndarray) -> float:
    """Largest difference, relative where |z| > 1 (the far stack's z reaches 40)."""
    return float((np.abs(z_numpy - z_torch) / np.maximum(1.0, np.abs(z_torch))).max())


ZOO = ("llama-a", "llama-a-sft", "llama-b", "gpt2-a", "llama-a-prune-depth", "llama-a-attack-vocab-expand")


def _torch_z(model: CalibratedEncoder, stacks: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(stacks, dtype=torch.float32)).numpy()


def _torch_raw(model: CalibratedEncoder, stacks: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encoder(torch.as_tensor(stacks, dtype=torch.float32)).numpy()


def _synthetic_stacks() -> np.ndarray:
    """Synthetic base models, derivatives of them, and stacks the calibration never saw (pure
    noise, a scaled copy far outside the knots, a stack with empty buckets)."""
    g = torch.Generator().manual_seed(11)
    base = syn.draw_models(g, 3, 2)
    derived = syn.derive(g, base, torch.full((6,), 0.5))
    real = torch.cat([syn.stacks(g, base), syn.stacks(g, derived)]).numpy()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, CHANNELS, GRID, GRID)).astype(np.float32)
    far = 40.0 * real[:1]  # every coordinate beyond the quantile knots: the linear tails
    holes = real[1:2].copy()
    holes[:, :, :5] = 0.0
    holes[:, :, :, :5] = 0.0
    return np.concatenate([real, noise, far, holes])


@pytest.fixture(scope="module")
def zoo_stacks(tiny_zoo: Path) -> np.ndarray:
    from huref.invariants import Settings, fingerprint_model

    settings = Settings(modes=("robust",))
    return np.stack([canonical_stack(fingerprint_model(tiny_zoo / n, settings)) for n in ZOO])


def test_numpy_z_equals_torch_z_on_real_zoo_stacks(zoo_stacks: np.ndarray) -> None:
    torch_model, np_model = load_encoder(), load_numpy_encoder()
    raw_t, raw_n = _torch_raw(torch_model, zoo_stacks), np_model.raw(zoo_stacks)
    assert np.allclose(raw_n, raw_t, rtol=1e-4, atol=1e-4 * np.abs(raw_t).max())
    z_t, z_n = _torch_z(torch_model, zoo_stacks), np_model(zoo_stacks)
    assert z_n.shape == (len(ZOO), 512) and z_n.dtype == np.float64
    assert _z_gap(z_n, z_t) < Z_TOL, _z_gap(z_n, z_t)
    # the models are not all alike: equality is not a constant output
    assert np.abs(z_n[0] - z_n[2]).max() > 1.0
    for i in range(len(ZOO)):
        assert np.allclose(np_model.encode(zoo_stacks[i]), z_n[i], rtol=0, atol=1e-10)


def test_numpy_z_equals_torch_z_on_synthetic_and_out_of_range_stacks() -> None:
    stacks = _synthetic_stacks()
    z_t, z_n = _torch_z(load_encoder(), stacks), load_numpy_encoder()(stacks)
    assert np.isfinite(z_n).all()
    # float32 rounding in the torch network grows with the input: the far stack is 40 x larger
    scale = np.maximum(1.0, np.sqrt((stacks.astype(np.float64) ** 2).mean((1, 2, 3))))
    for i in range(len(stacks)):
        assert _z_gap(z_n[i], z_t[i]) < Z_TOL * scale[i], (i, _z_gap(z_n[i], z_t[i]))
    assert np.abs(z_n[-2]).max() > 5.0  # the far stack really left the knots' range


def test_a_new_encoder_of_another_width_reads_back_into_numpy_equal_to_torch(tmp_path: Path) -> None:
    """A random network of width 8 with a fitted calibration: every weight index matters, so a
    wrong patch order or flatten order in the numpy transcription would show."""
    torch.manual_seed(5)
    model = CalibratedEncoder(width=8).eval().requires_grad_(False)
    stacks = _synthetic_stacks()
    g = torch.Generator().manual_seed(6)
    fit = torch.randn(4000, CHANNELS, GRID, GRID, generator=g)
    with torch.no_grad():
        model.calibration.fit(model.encoder(fit).exp())  # skewed: the quantile maps are not identity
    path = save_encoder(model, tmp_path / "enc8.safetensors", {"width": 8}, {})
    np_model = load_numpy_encoder_file(path)
    assert np_model.conv1_w.shape == (8, CHANNELS, 4, 4)
    raw = np.exp(np_model.raw(stacks))
    with torch.no_grad():
        z_t = model.calibration(torch.as_tensor(raw)).numpy()
        raw_t = model.encoder(torch.as_tensor(stacks)).numpy()
    assert np.allclose(np_model.raw(stacks), raw_t, rtol=1e-4, atol=1e-5)
    # calibration alone, both in float64: a transcription mistake moves z by O(1). Not to 1e-9: the
    # raw outputs of this random network reach 2e10, and numpy's and torch's float64 matrix products
    # sum in different orders (2e-4 apart in the whitened value, 5e-5 in z, on an AMD EPYC)
    assert np.abs(np_model.calibrate(raw) - z_t).max() < 1e-3


def test_state_shapes_are_the_torch_networks_state_dict() -> None:
    for width in (1, 8, 64):
        want = {k: tuple(v.shape) for k, v in CalibratedEncoder(width).state_dict().items()}
        assert state_shapes(width) == want


def test_numpy_standardisation_equals_the_training_batch_one() -> None:
    g = torch.Generator().manual_seed(2)
    pooled = 3.0 * torch.randn(8, CHANNELS, GRID, GRID, generator=g) + 1.0
    counts = torch.randint(0, 4, (8, GRID), generator=g).to(torch.float32)  # some empty buckets
    counts[0] = 0.0  # a stack with no live cell at all
    a = syn.standardise_batch(pooled, counts).numpy()
    b = standardise_channels(pooled.numpy(), counts.numpy())
    assert b.dtype == np.float32 and np.allclose(a, b, atol=1e-5)
    assert (b[0] == 0).all() and (b[1][:, counts[1].numpy() == 0] == 0).all()
    live = b[1][:, counts[1].numpy() > 0][:, :, counts[1].numpy() > 0]
    assert np.allclose(live.reshape(CHANNELS, -1).std(1), 1.0, atol=1e-4)


def test_numpy_encoder_refuses_a_stack_of_the_wrong_shape() -> None:
    enc: NumpyEncoder = load_numpy_encoder()
    with pytest.raises(ValueError, match="expected"):
        enc.raw(np.zeros((1, CHANNELS, GRID // 2, GRID // 2)))


def test_an_encoder_file_with_integer_weights_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(weights.shipped_path()), framework="numpy") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(weights.shipped_path()))
    tensors["encoder.net.0.bias"] = tensors["encoder.net.0.bias"].astype(np.int32)
    path = tmp_path / "ints.safetensors"
    save_file(tensors, str(path), metadata=meta)

    def no_read(p: object) -> None:
        raise AssertionError(f"the tensors of {p} were read before the checks")

    monkeypatch.setattr(weights, "read_arrays", no_read)
    with pytest.raises(RenderError, match=r"encoder\.net\.0\.bias has dtype I32"):
        load_numpy_encoder_file(path)
