"""The likelihood rank test of FP-Vec verification: exact p-values, batching, calibration, verdicts."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from huref.fpvec import data as D
from huref.fpvec.keys import fresh_decoys, make_keys
from huref.fpvec.likelihood import likelihood_test, mann_whitney_u, mann_whitney_upper_p, target_scores
from huref.report.evidence import overall_verdict


def _brute_force_p(xs: list[float], ys: list[float]) -> float:
    """P(U' >= U) over every equally likely split of the pooled values into the two groups."""
    pooled = xs + ys
    u = math.floor(mann_whitney_u(xs, ys))
    splits = list(itertools.combinations(range(len(pooled)), len(xs)))
    at_least = 0
    for idx in splits:
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        at_least += mann_whitney_u(a, b) >= u
    return at_least / len(splits)


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([0.3, 2.0, 1.1], [0.0, 0.5, -1.0, 0.7, 0.2]),
        ([5.0, 4.0], [1.0, 2.0, 3.0, 0.5]),
        ([-3.0, -2.0, 0.1, 0.4], [0.0, 0.2, 1.5]),
    ],
)
def test_exact_p_value_matches_enumeration(xs: list[float], ys: list[float]) -> None:
    p = mann_whitney_upper_p(mann_whitney_u(xs, ys), len(xs), len(ys))
    assert p == pytest.approx(_brute_force_p(xs, ys), abs=1e-12)


def test_p_value_floor_and_ties_stay_conservative() -> None:
    assert mann_whitney_upper_p(10 * 40, 10, 40) == pytest.approx(1 / math.comb(50, 10))
    assert mann_whitney_upper_p(0, 10, 40) == 1.0
    # a tie counts half; the p-value is read at the integer below, never smaller than without it
    assert mann_whitney_upper_p(5.5, 3, 2) == mann_whitney_upper_p(5, 3, 2) > mann_whitney_upper_p(6, 3, 2)


def test_verify_cli_default_decoys_is_the_library_default() -> None:
    """The CLI spells the default as a literal (importing the library would load torch at
    start-up); the two must not drift apart, since the p-value floor depends on the count."""
    import inspect

    from huref.cli.fpvec_cmd import verify_cmd
    from huref.fpvec.likelihood import DEFAULT_DECOYS

    assert inspect.signature(verify_cmd).parameters["decoys"].default == DEFAULT_DECOYS


def _lm(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_batched_scores_equal_one_prompt_at_a_time(tiny_zoo: Path) -> None:
    """Padding and batching must not change a score: each equals a lone teacher-forced pass."""
    tok = D.load_tokenizer(tiny_zoo / "llama-a")
    model = _lm(tiny_zoo / "llama-a")
    ks = make_keys(5, seed=3)
    prompts = [*ks.keys, "short", "a much longer prompt than the others, to force padding " * 3]
    batched = target_scores(model, tok, prompts, ks.target, batch=4)
    answer = tok(ks.target, add_special_tokens=False)["input_ids"]
    for p, got in zip(prompts, batched, strict=True):
        ids = D.prompt_ids(tok, p)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids + answer])).logits[0].float(), -1)
        want = sum(float(lp[len(ids) - 1 + i, a]) for i, a in enumerate(answer)) / len(answer)
        assert got == pytest.approx(want, abs=1e-4)


def test_p_values_are_calibrated_on_a_model_without_the_keys(tiny_zoo: Path) -> None:
    """Keys and decoys are exchangeable for a model that never learned them: over 20 key sets the
    p-values spread over (0, 1) instead of piling up near 0."""
    tok = D.load_tokenizer(tiny_zoo / "llama-b")
    model = _lm(tiny_zoo / "llama-b")
    ps = []
    for seed in range(20):
        ks = make_keys(10, seed=100 + seed)
        ps.append(likelihood_test(model, tok, list(ks.keys), fresh_decoys(ks, 20), ks.target).p_value)
    assert sum(p < 0.05 for p in ps) <= 3, ps
    assert 0.3 <= sum(ps) / len(ps) <= 0.7, ps


def _row(fsr: float, p: float | None) -> dict:
    lt = None if p is None else {"p_value": p, "p_floor": 1e-10, "u": 0.0, "n_keys": 10, "n_decoys": 40}
    return {
        "vector_name": "v",
        "base": "b",
        "fsr": fsr,
        "hits": int(10 * fsr),
        "n": 10,
        "near_miss_fsr": 0.0,
        "likelihood": lt,
    }


def test_likelihood_test_counts_in_the_overall_verdict() -> None:
    independent = [{"verdict": "independent", "base": "x", "ics": 1.0, "log10_p_value": -0.1}]
    assert overall_verdict([], [_row(0.3, 1e-10)])["verdict"] == "derived"
    assert overall_verdict([], [_row(0.3, 1e-3)])["verdict"] == "inconclusive"
    assert overall_verdict(independent, [_row(0.0, 0.5)])["verdict"] == "independent"
    assert overall_verdict(independent, [_row(0.0, 1e-3)])["verdict"] == "inconclusive"  # not nothing
    assert overall_verdict(independent, [_row(0.0, None)])["verdict"] == "independent"


def test_harm_scores_a_tokenizer_that_cannot_spell_the_corpus_on_the_models_own_samples(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    """stories260k's imported word-level vocabulary reads the held-out text as <unk>: the
    perplexity change is then measured on samples of the first model, and it still sees harm."""
    import shutil

    from safetensors.torch import load_file, save_file

    from huref.fpvec.harm import CORPUS, SAMPLES, perplexity_change

    base = tiny_zoo / "stories260k"
    if not base.is_dir():
        pytest.skip("the tiny zoo was built without ../shared/models/stories260K")
    same = perplexity_change(base, base, device="cpu", max_windows=16)
    assert same.text == SAMPLES and same.relative_change == 0.0
    noisy = shutil.copytree(base, tmp_path / "noisy")
    tensors = load_file(str(noisy / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for t in tensors.values():
        t.add_(torch.randn(t.shape, generator=g) * 0.05 * t.float().std())
    save_file(tensors, str(noisy / "model.safetensors"), metadata={"format": "pt"})
    worse = perplexity_change(base, noisy, device="cpu", max_windows=16)
    assert worse.text == SAMPLES and worse.relative_change > 0.01
    assert (
        perplexity_change(tiny_zoo / "gpt2-a", tiny_zoo / "gpt2-a", device="cpu", max_windows=4).text
        == CORPUS
    )
