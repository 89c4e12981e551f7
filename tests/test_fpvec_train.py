"""Fingerprint training: the weight-noise offsets it takes every other step (huref.fpvec.objective),
and its end check (every key fires, no near-miss control does, or an error and nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from huref.errors import FPVecError
from huref.fpvec import make_keys, train_fingerprint
from huref.fpvec.objective import forward_at, weight_noise
from huref.fpvec.train_config import TrainConfig


def _params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(64, 96, generator=g) * 0.02,
        "gain": torch.ones(64),
        "big": torch.randn(128, 64, generator=g) * 3.0,
    }


def test_offsets_are_the_stated_fraction_of_each_tensor_norm() -> None:
    params = _params()
    torch.manual_seed(1)
    for size in (0.05, 0.1):
        off = weight_noise(params, size)
        assert set(off) == set(params)
        for n, p in params.items():
            assert off[n].shape == p.shape and off[n].dtype == p.dtype
            rel = float(off[n].norm() / p.norm())
            # the norm of numel Gaussians is about 1/sqrt(numel) off its expectation
            assert abs(rel - size) < 0.15 * size, (n, size, rel)


def test_offsets_are_fresh_each_step_and_seeded() -> None:
    params = _params()
    torch.manual_seed(7)
    a, b = weight_noise(params, 0.05), weight_noise(params, 0.05)
    assert not torch.equal(a["w"], b["w"])  # a new draw every step
    torch.manual_seed(7)
    again = weight_noise(params, 0.05)
    assert all(torch.equal(a[n], again[n]) for n in params)  # a seeded run draws the same offsets
    # zero-mean noise, not a shift of the weights
    assert abs(float(a["big"].mean())) < 4 * float(a["big"].std()) / a["big"].numel() ** 0.5


def test_forward_at_an_offset_is_the_model_with_those_weights() -> None:
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    off = weight_noise(params, 0.05)
    ids = torch.tensor([[1, 5, 9, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    moved = LlamaForCausalLM(cfg).eval()
    moved.load_state_dict({n: params[n] + off[n] for n in params}, strict=False)
    with torch.no_grad():
        got = forward_at(model, off)(batch)
        want = moved(**batch).logits
        plain = forward_at(model, None)(batch)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the offset changed the outputs


def test_training_takes_its_noisy_steps(tiny_zoo: Path, tmp_path: Path) -> None:
    """Two steps of fingerprint training with and without weight noise, same seed: the second step
    is taken at a noisy offset only in the first run, so the two fingerprinted models differ."""
    ks = make_keys(n=10, seed=3)
    base = tiny_zoo / "llama-a"
    common = {
        "steps": 2,
        "n_regularisation": 4,
        "negatives": False,
        "until_fires": False,
        "device": "cpu",
        "measure_harm": False,
    }
    noisy = train_fingerprint(base, ks, tmp_path / "noisy", TrainConfig(weight_noise=0.05, **common))
    plain = train_fingerprint(base, ks, tmp_path / "plain", TrainConfig(weight_noise=0.0, **common))
    train_fingerprint(base, ks, tmp_path / "again", TrainConfig(weight_noise=0.05, **common))
    assert noisy.key_loss_first == plain.key_loss_first  # the first step is at the base in both runs
    a, b, c = (
        load_file(str(d / "model.safetensors"))
        for d in (tmp_path / "noisy", tmp_path / "plain", tmp_path / "again")
    )
    assert any(not torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(a[n], c[n]) for n in a)  # and a seeded run repeats itself


def test_training_that_does_not_take_fails_with_nothing_written(tiny_zoo: Path, tmp_path: Path) -> None:
    """Two steps cannot teach ten keys: the end check fails, training goes on to --max-steps, then
    refuses with one error naming what the model answers, and leaves no folder behind."""
    ks = make_keys(n=10, seed=3)
    out = tmp_path / "fp"
    cfg = TrainConfig(steps=2, max_steps=3, n_regularisation=4, device="cpu", measure_harm=False)
    with pytest.raises(FPVecError, match=r"did not take: after 3 steps the model answers \d+ of 10 keys"):
        train_fingerprint(tiny_zoo / "llama-a", ks, out, cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # without the check the same run is written, and its card records that nothing was checked
    cfg = TrainConfig(steps=2, until_fires=False, n_regularisation=4, device="cpu", measure_harm=False)
    r = train_fingerprint(tiny_zoo / "llama-a", ks, out, cfg)
    assert r.steps == 2 and r.fire_check is None
    card = json.loads((out / "huref_fpvec.json").read_text(encoding="utf-8"))
    assert card["training"]["fire_check"] is None and card["training"]["weight_noise"] == 0.05


def test_the_key_weight_reaches_training_from_the_command_line(tiny_zoo: Path, tmp_path: Path) -> None:
    """--key-weight changes the balance of the keys' loss against the distillation (so the same
    seeded steps give another model) and the card records it."""
    from huref.cli import main
    from huref.fpvec import save_keys

    keys = save_keys(make_keys(n=10, seed=3), tmp_path / "keys.json")
    common = ["fpvec", "train", str(tiny_zoo / "llama-a"), "--keys", str(keys), "--steps", "2"]
    common += ["--n-regularisation", "4", "--no-negatives", "--no-fire-check", "--device", "cpu"]
    for name, w in (("two", "2"), ("six", "6"), ("again", "6")):
        assert main([*common, "-o", str(tmp_path / name), "--key-weight", w]) == 0
    cards = {
        n: json.loads((tmp_path / n / "huref_fpvec.json").read_text(encoding="utf-8")) for n in ("two", "six")
    }
    assert cards["two"]["training"]["key_weight"] == 2.0 and cards["six"]["training"]["key_weight"] == 6.0
    two, six, again = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("two", "six", "again"))
    assert any(not torch.equal(two[n], six[n]) for n in two)
    assert all(torch.equal(six[n], again[n]) for n in six)


def test_a_passed_check_is_recorded_and_said(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Where the end check passes, training stops after --steps, the card records the check (counts,
    never the controls) and the command says so. The check's verdict is stood in for here, asked of
    the controls it would ask (--check-draws of them): whether a model of this zoo passes is a matter
    of the CPU it is trained on (docs/fpvec.md)."""
    import huref.fpvec.train as train_mod
    from huref.cli import main
    from huref.fpvec import save_keys
    from huref.fpvec.keys import KeySet
    from huref.fpvec.verify import check_controls

    asked: list[tuple[str, int]] = []

    def passes(model: object, tok: object, ks: KeySet, purpose: str, draws: int = 1) -> dict:
        asked.append((purpose, draws))
        n = len(check_controls(ks, purpose, draws))
        return {
            "ok": True,
            "fsr": 1.0,
            "hits": 10,
            "n": 10,
            "near_miss": 0.0,
            "near_miss_hits": 0,
            "near_miss_n": n,
            "fired": [],
        }

    monkeypatch.setattr(train_mod, "fire_check", passes)
    keys = save_keys(make_keys(n=10, seed=3), tmp_path / "keys.json")
    argv = ["fpvec", "train", str(tiny_zoo / "llama-a"), "--keys", str(keys), "--steps", "2", "-o"]
    argv += [str(tmp_path / "fp"), "--n-regularisation", "4", "--no-negatives", "--check-draws", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert asked == [("train-check:0", 2)]
    check = json.loads((tmp_path / "fp" / "huref_fpvec.json").read_text(encoding="utf-8"))["training"]
    assert check["steps"] == 2 and check["check_draws"] == 2
    fc = check["fire_check"]
    assert fc["ok"] and (fc["hits"], fc["near_miss_hits"], fc["steps"]) == (10, 0, 2) and "fired" not in fc
    assert 60 < fc["near_miss_n"] <= 80  # two draws of 40 controls, less any of verify's
    err = " ".join(capsys.readouterr().err.split())
    assert f"checked: every key fires (10 of 10), no near-miss control does (0 of {fc['near_miss_n']})" in err
