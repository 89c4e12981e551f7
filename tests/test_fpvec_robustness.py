"""huref.fpvec.robustness: RTN quantization, linear merges and the fine-tuning curve.

The quantizer and the merge are checked on small models built here (error bounds, exact
identities, what is left untouched); the fine-tuning curve on llama-a of the tiny zoo taught the
keys by plain cross-entropy (a fingerprint in seconds: its regularisation does not matter here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

from huref.errors import FPVecError
from huref.fpvec import data as D
from huref.fpvec.harm import corpus_ids
from huref.fpvec.keys import make_keys
from huref.fpvec.robustness import (
    Point,
    fsr_during_finetune,
    linear_weights,
    measure,
    merge_with,
    quantize_rtn,
    rtn_dequantize,
    rtn_scales,
    steps_to_lose,
)
from huref.lm.load import load_causal_lm


def _llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=80,  # 80 = 2 x 32 + 16: a ragged last group of 16 at group size 32
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return T.LlamaForCausalLM(cfg).eval()


def _gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = T.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return T.GPT2LMHeadModel(cfg).eval()


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


# --- quantization kernels -----------------------------------------------------------------------


def test_int8_rtn_is_within_half_a_step_of_each_row_scale() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 48, generator=g) * torch.logspace(-3, 1, 16)[:, None]  # rows 4 decades apart
    deq = rtn_dequantize(w, 8)
    scale = w.abs().amax(1, keepdim=True) / 127  # [16, 1]: symmetric absmax per output row
    assert torch.allclose(rtn_scales(w, 8), scale)
    assert ((w - deq).abs() <= scale / 2 * (1 + 1e-5)).all()
    levels = deq / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert not torch.equal(deq, w)  # it did quantize
    # one scale per row: a row's error is bounded by its own scale, not the largest row's
    assert (w - deq)[0].abs().max() <= scale[0, 0] / 2 * (1 + 1e-5)


def test_4bit_rtn_groups_run_along_the_input_dimension() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 80, generator=g)
    w[:, 32:64] *= 100.0  # one loud group of input columns per row
    deq = rtn_dequantize(w, 4, 32)
    scales = rtn_scales(w, 4, 32)
    assert scales.shape == (8, 3)  # groups [0, 32), [32, 64), [64, 80)
    for k, (lo, hi) in enumerate([(0, 32), (32, 64), (64, 80)]):
        s = w[:, lo:hi].abs().amax(1) / 7
        assert torch.allclose(scales[:, k], s)
        err = (w[:, lo:hi] - deq[:, lo:hi]).abs()
        assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()
        levels = deq[:, lo:hi] / s[:, None]
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 7 + 1e-3
    # the loud group does not coarsen its neighbours: per-row 4-bit would zero most of them
    quiet = (w[:, :32] - deq[:, :32]).abs().max()
    assert quiet < (w[:, :32] - rtn_dequantize(w, 4)[:, :32]).abs().max() / 10


def test_rtn_refuses_other_bit_widths_and_groups() -> None:
    w = torch.randn(4, 8)
    for bad in [{"bits": 3}, {"bits": 16}, {"bits": 4, "group": 0}]:
        with pytest.raises(FPVecError):
            rtn_dequantize(w, bad["bits"], bad.get("group"))
    with pytest.raises(FPVecError):
        quantize_rtn(_llama(), 5)


# --- quantizing a model -------------------------------------------------------------------------


def _make_representable(m: torch.nn.Module, qmax: int, group: int) -> None:
    """Every linear weight := k * 2^-6 with integers |k| <= qmax and each group holding +-qmax
    (a power-of-two scale, so absmax / qmax gives it back exactly)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p, transposed in linear_weights(m).values():
            w = p.data.t() if transposed else p.data  # [out, in] view
            k = torch.randint(-qmax, qmax + 1, w.shape, generator=g).float()
            k[:, ::group] = qmax  # the first column of every group
            w.copy_(k * 2.0**-6)


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2-conv1d"])
def test_quantizing_representable_weights_is_the_identity(make) -> None:
    for bits, group, qmax in [(8, None, 127), (4, 32, 7)]:
        m = make()
        _make_representable(m, qmax, group or 10**9)
        before = _weights(m)
        q = quantize_rtn(m, bits, group)
        after = _weights(q)
        assert all(torch.equal(before[n], after[n]) for n in before), (bits, group)


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2-conv1d"])
def test_quantize_rtn_touches_linear_weights_only_and_copies(make) -> None:
    m = make()
    before = _weights(m)
    q = quantize_rtn(m, 4, 32)
    after = _weights(q)
    lin = set(linear_weights(m))
    assert lin and all(n.endswith(".weight") for n in lin)
    assert all(torch.equal(before[n], p) for n, p in _weights(m).items())  # the input is unchanged
    for n in before:
        assert torch.equal(before[n], after[n]) == (n not in lin), n  # exactly the linear weights move
    embed = "model.embed_tokens.weight" if "model.embed_tokens.weight" in before else "transformer.wte.weight"
    assert embed not in lin  # embeddings (and a tied output layer with them) stay in full precision
    assert "lm_head.weight" not in lin
    # GPT-2's Conv1D stores [in, out]: its groups must still run along the input dimension
    for n in lin:
        _, transposed = linear_weights(m)[n]
        w = before[n].t() if transposed else before[n]
        got = after[n].t() if transposed else after[n]
        assert (
            (w - got).abs() <= rtn_scales(w, 4, 32).repeat_interleave(32, 1)[:, : w.shape[1]] / 2 + 1e-7
        ).all()


# --- merging ------------------------------------------------------------------------------------


def test_merge_with_weights_one_and_zero_return_the_inputs() -> None:
    a, b = _llama(0), _llama(1)
    wa, wb = _weights(a), _weights(b)
    one, zero, half = (
        _weights(merge_with(a, b, 1.0)),
        _weights(merge_with(a, b, 0.0)),
        _weights(merge_with(a, b, 0.5)),
    )
    for n in wa:
        assert torch.equal(one[n], wa[n]) and torch.equal(zero[n], wb[n]), n
        assert torch.allclose(half[n], (wa[n] + wb[n]) / 2), n
    assert not torch.equal(half["model.layers.0.mlp.up_proj.weight"], wa["model.layers.0.mlp.up_proj.weight"])
    assert all(torch.equal(wa[n], p) for n, p in _weights(a).items())  # inputs unchanged


def test_merge_with_refuses_mismatched_models() -> None:
    with pytest.raises(FPVecError, match="names differ"):
        merge_with(_llama(), _gpt2(), 0.5)
    other = _llama()
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(81, 64))
    with pytest.raises(FPVecError, match="shape"):
        merge_with(_llama(), other, 0.5)
    with pytest.raises(FPVecError):
        merge_with(_llama(), _llama(1), float("nan"))


# --- steps to lose the fingerprint --------------------------------------------------------------


def test_steps_to_lose_reads_the_first_recorded_step_below_the_threshold() -> None:
    curve = [
        Point(s, f, None, None, None) for s, f in [(0, 1.0), (25, 0.8), (50, 0.4), (75, 0.6), (100, 0.05)]
    ]
    assert steps_to_lose(curve, 0.5) == 50  # the first crossing, though FSR came back at 75
    assert steps_to_lose(curve, 0.1) == 100
    assert steps_to_lose(curve, 0.01) is None  # never within the curve
    assert steps_to_lose(curve, 1.01) == 0
    assert steps_to_lose(list(reversed(curve)), 0.5) == 50  # read in step order


@pytest.fixture(scope="module")
def taught(tiny_zoo: Path) -> tuple[torch.nn.Module, object, object, torch.Tensor]:
    """llama-a taught the keys by cross-entropy on the target alone (FSR 1.0 from ~80 steps)."""
    torch.set_num_threads(1)
    ks = make_keys(seed=11)
    tok = D.load_tokenizer(tiny_zoo / "llama-a")
    lm = load_causal_lm(tiny_zoo / "llama-a", torch.device("cpu"))
    answer = tuple(D.answer_ids(tok, ks.target))
    batch = D.collate([D.Example(tuple(D.prompt_ids(tok, k)), answer, "key") for k in ks.keys], D.pad_id(tok))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    lm.train()
    for _ in range(100):
        loss = lm(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    stream = corpus_ids(tok, max_chars=30_000)
    assert stream is not None
    return lm, tok, ks, stream


def test_fsr_during_finetune_records_a_curve_from_the_model_as_given(taught) -> None:
    lm, tok, ks, stream = taught
    before = _weights(lm)
    start = measure(lm, tok, ks, near_miss=False, decoys=10)
    assert start.fsr == 1.0
    curve = fsr_during_finetune(lm, tok, ks, stream, lr=1e-2, steps=12, every=5, near_miss=False, decoys=10)
    steps = [p.step for p in curve.points]
    assert steps == [0, 5, 10, 12]  # every `every` steps, and the last step
    assert curve.points[0].fsr == start.fsr and curve.points[0].p_value == start.p_value
    assert curve.points[0].loss is None and all(p.loss is not None for p in curve.points[1:])
    assert all(torch.equal(before[n], p) for n, p in _weights(lm).items())  # trained a copy
    # it trained: the fingerprint is gone at this rate, and steps_to_lose is read off this curve
    assert curve.points[-1].fsr < 0.5
    first = next(p.step for p in curve.points if p.fsr < 0.5)
    assert curve.steps_to_lose(0.5) == first and curve.to_json()["steps_to_fsr_below_0.5"] == first
    with pytest.raises(FPVecError):
        fsr_during_finetune(lm, tok, ks, stream, lr=1e-3, steps=10, every=0)
