"""Synthetic data, training determinism, calibration and the weights file of the dog encoder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from huref.encoder import synthetic as syn
from huref.encoder.canonical import CHANNELS, GRID, canonical_from_buckets
from huref.encoder.model import CalibratedEncoder, Calibration
from huref.encoder.stackstats import pair_cosine
from huref.encoder.train import TrainConfig, gaussian_loss, nt_xent, train, training_batch
from huref.encoder.weights import load_encoder, load_encoder_file, read_metadata, save_encoder
from huref.errors import RenderError

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = TrainConfig(steps=3, families=2, siblings=2, calib_models=256, heldout_models=16, workers=0)


def test_factored_synthetic_stacks_equal_canonicalised_explicit_terms() -> None:
    """The fast generator forms no n x n matrix; it must equal the real canonicalisation of one."""
    g = torch.Generator().manual_seed(3)
    small = syn.SynthSpec(n_tokens=(120, 160), d_model=(16, 24), n_layers=(3, 4))
    base = syn.draw_models(g, 2, 2, small)
    derived = syn.derive(g, base, torch.ones(4))  # replaced tokens, pruned width, maybe dropped layers
    for models in (base, derived):
        quiet = replace(models, residual=torch.zeros_like(models.residual), cell_noise=torch.zeros(4))
        fast = syn.stacks(g, quiet)
        for i in range(4):
            slow = canonical_from_buckets(syn.explicit_terms(quiet, i), quiet.buckets[i])
            assert np.allclose(fast[i].numpy(), slow, atol=1e-3), (
                i,
                float(np.abs(fast[i].numpy() - slow).max()),
            )


def test_derivation_severity_orders_similarity_and_siblings_stay_apart() -> None:
    g = torch.Generator().manual_seed(4)
    base = syn.draw_models(g, 8, 4)
    a = syn.stacks(g, base)
    cos = {}
    for sev in (0.1, 0.9):
        b = syn.stacks(g, syn.derive(g, base, torch.full((32,), sev)))
        cos[sev] = np.median([pair_cosine(x, y) for x, y in zip(a, b, strict=True)])
    siblings = np.median([abs(pair_cosine(a[i], a[i + 1])) for i in range(0, 32, 4)])
    assert cos[0.1] > 0.85 and cos[0.9] < cos[0.1] - 0.1
    assert siblings < 0.3 < cos[0.9]


def test_training_batches_depend_on_seed_and_step_only() -> None:
    a1, b1 = training_batch(TINY, 5)
    a2, b2 = training_batch(TINY, 5)
    assert a1.shape == (4, CHANNELS, GRID, GRID)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, training_batch(TINY, 6)[0])
    assert not torch.equal(a1, training_batch(replace(TINY, seed=TINY.seed + 1), 5)[0])


def test_losses_reward_matching_views_and_gaussian_outputs() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 512, generator=g)
    assert float(nt_xent(z, z + 0.01 * torch.randn(64, 512, generator=g), 0.1)) < 0.01
    assert float(nt_xent(z, torch.randn(64, 512, generator=g), 0.1)) > 3.0
    gaussian = float(gaussian_loss(z, torch.Generator().manual_seed(1), 64))
    assert gaussian < 0.15  # the finite-sample floor of 64 draws is about 0.09
    assert float(gaussian_loss(3 * z + 1, torch.Generator().manual_seed(1), 64)) > 10 * gaussian
    assert float(gaussian_loss(z.pow(2), torch.Generator().manual_seed(1), 64)) > 10 * gaussian


def test_calibration_makes_skewed_correlated_outputs_standard_normal() -> None:
    g = torch.Generator().manual_seed(2)
    dim = 64
    mix = torch.randn(dim, dim, generator=g) / 8
    raw = (torch.randn(12000, dim, generator=g) @ mix).exp() + 3.0  # skewed, correlated, off-centre
    assert float(((raw - raw.mean(0)) / raw.std(0)).pow(3).mean()) > 0.5  # really skewed
    cal = Calibration(z_dim=dim)
    cal.fit(raw[:8000])
    z = cal(raw[8000:]).numpy()
    assert np.abs(z.mean(0)).max() < 0.1 and np.abs(z.std(0) - 1).max() < 0.1
    assert abs(float(((z - z.mean()) ** 3).mean())) < 0.1
    assert abs(float(np.corrcoef(z[:, 0], z[:, 1])[0, 1])) < 0.1


def test_tiny_training_is_reproducible_and_its_weights_round_trip(tmp_path: Path) -> None:
    model1, metrics1 = train(TINY)
    model2, _ = train(TINY)
    x = training_batch(TINY, 99)[0]
    z1, z2 = model1(x), model2(x)
    assert torch.equal(z1, z2)  # same seed, same thread count: same bits
    assert z1.shape == (4, 512) and torch.isfinite(z1).all()
    assert set(metrics1["heldout"]) >= {"mean_min", "std_max", "ks_pvalue"}
    path = save_encoder(
        model1, tmp_path / "enc.safetensors", {"width": TINY.width, "seed": TINY.seed}, metrics1
    )
    loaded = load_encoder_file(path)
    assert torch.equal(loaded(x), z1)
    assert read_metadata(path)["config"]["seed"] == TINY.seed
    assert torch.equal(load_encoder(path)(x), z1)  # explicit files are not hash-checked


def test_shipped_weights_match_their_pinned_hash_and_tampering_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huref.encoder import weights

    shipped = weights.shipped_path()
    model = load_encoder()
    assert isinstance(model, CalibratedEncoder)
    assert shipped.stat().st_size <= 20 * 1024 * 1024
    data = bytearray(shipped.read_bytes())
    data[-1000] ^= 0x01  # one bit of one weight
    (tmp_path / weights.WEIGHTS_FILE).write_bytes(bytes(data))
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path))
    with pytest.raises(RenderError, match="SHA-256"):
        load_encoder()
    (tmp_path / weights.WEIGHTS_FILE).unlink()
    with pytest.raises(RenderError, match="not found"):
        load_encoder()


def test_a_file_that_is_not_an_encoder_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bogus = tmp_path / "bogus.safetensors"
    save_file({"w": torch.zeros(2)}, str(bogus), metadata={"format": "pt"})
    with pytest.raises(RenderError, match="not a huref encoder"):
        load_encoder_file(bogus)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(RenderError):
        load_encoder_file(tmp_path / "junk.safetensors")


def _encoder_file(path: Path, config: object, metrics: object = None, width: int = 4) -> Path:
    """An encoder file with hand-written metadata (any JSON), weights of the given width."""
    import json

    from safetensors.torch import save_file

    from huref.encoder.weights import FORMAT, canonical_spec

    tensors = {k: v.contiguous() for k, v in CalibratedEncoder(width).state_dict().items()}
    meta = {
        "huref.encoder.format": FORMAT,
        "huref.encoder.canonical": json.dumps(canonical_spec()),
        "huref.encoder.config": json.dumps(config),
        "huref.encoder.metrics": json.dumps({"heldout": {}} if metrics is None else metrics),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], r"config is a list, not an object"),
        ({"width": "wide"}, r"width 'wide' is not an integer"),
        ({"width": True}, r"width True is not an integer"),
        ({"width": 4096}, r"width 4096 is not an integer in 1\.\.512"),
        ({"width": 8}, r"has shape \[4, 6, 4, 4\], but width 8 implies \[8, 6, 4, 4\]"),
    ],
    ids=["list", "str", "bool", "huge", "other-width"],
)
def test_malformed_encoder_config_is_refused_before_building(
    tmp_path: Path, config: object, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huref.encoder import weights

    path = _encoder_file(tmp_path / "enc.safetensors", config)

    def no_read(path: object) -> None:
        raise AssertionError(f"the tensors of {path} were read before the checks")

    monkeypatch.setattr(weights, "read_arrays", no_read)
    with pytest.raises(RenderError, match=message) as info:
        load_encoder_file(path)
    assert "\n" not in str(info.value)


def test_encoder_info_prints_what_the_metadata_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huref.cli import main

    path = _encoder_file(tmp_path / "enc.safetensors", {"width": 4, "seed": 7}, metrics={})
    capsys.readouterr()
    assert main(["encoder", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "seed 7" in out and "width 4" in out and "held-out metrics: not recorded" in out
    bad = _encoder_file(tmp_path / "bad.safetensors", [1, 2])
    assert main(["encoder", "info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error:") and "not an object" in err[0]


@pytest.mark.parametrize(
    ("metrics_json", "word"),
    [
        ('{"heldout": {"ks_pvalue": NaN}}', "NaN"),
        ('{"heldout": {"std_max": Infinity}}', "Infinity"),
        ('{"heldout": {"mean_min": -Infinity}}', "-Infinity"),
        ('{"heldout": {"mean_max": 1e999}}', "1e999"),
    ],
    ids=["nan", "inf", "minus-inf", "overflow"],
)
def test_encoder_metadata_with_non_finite_numbers_is_refused(
    tmp_path: Path, metrics_json: str, word: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Strict JSON has no NaN or infinity: ``encoder info --json`` must never print them."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from huref.cli import main

    path = _encoder_file(tmp_path / "enc.safetensors", {"width": 4})
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(path)), str(path), metadata={**meta, "huref.encoder.metrics": metrics_json})
    with pytest.raises(RenderError, match="not a finite number"):
        read_metadata(path)
    capsys.readouterr()
    assert main(["encoder", "info", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("huref: error:")
    assert word in err[0]
    good = _encoder_file(tmp_path / "good.safetensors", {"width": 4}, metrics={"heldout": {"n": 16}})
    assert main(["encoder", "info", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"heldout": {"n": 16}}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", "99999999999999999999"], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--threads", "100000000000"], "--threads"),
        (["--workers", "100000000000"], "--workers"),
    ],
    ids=["seed-huge", "seed-negative", "threads-huge", "workers-huge"],
)
def test_encoder_train_refuses_out_of_range_numbers_before_training(
    tmp_path: Path,
    args: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huref.cli import main
    from huref.encoder import train as train_module

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "train", no_training)
    out = tmp_path / "enc.safetensors"
    capsys.readouterr()
    assert main(["encoder", "train", "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error:") and needle in err[0]
    assert not out.exists()


def test_encoder_train_force_replaces_only_an_encoder_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huref.cli import main
    from huref.encoder import train as train_module
    from huref.encoder.weights import is_encoder_file, shipped_path

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "train", no_training)
    notes = tmp_path / "notes.safetensors"
    notes.write_text("mine")
    for target, needle in ((notes, "not a huref encoder file"), (shipped_path(), "shipped encoder")):
        before = target.read_bytes()
        capsys.readouterr()
        assert main(["encoder", "train", "-o", str(target), "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
        assert target.read_bytes() == before
    earlier = _encoder_file(tmp_path / "earlier.safetensors", {"width": 4})
    assert is_encoder_file(earlier) and not is_encoder_file(notes)
