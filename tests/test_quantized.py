"""Quantized checkpoints (GPTQ, AWQ, FP8) read as float weights, one tensor at a time.

Each test writes the tiny zoo's ``llama-a`` in a quantized release form with its own quantize and
pack code, written from the format's documented layout (not huref's), then checks that huref's
dequantized weights equal the test's own dequantization exactly, lie within the format's
quantization error of the float weights, and that the quantized model is judged ``derived``
from its float base and ``independent`` of the unrelated ``llama-b``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from quantkit import is_linear, mutate, write_release
from safetensors.torch import load_file

from huref.checkpoint.open import open_checkpoint
from huref.errors import ArchitectureError, CheckpointError
from huref.invariants.compare import compare_fingerprints, compare_paths, load_any

AWQ_NIBBLE_COLUMN = (0, 2, 4, 6, 1, 3, 5, 7)  # the AWQ GEMM packing order, as documented


# ---------------------------------------------------------------- independent GPTQ / AWQ packers


def _pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``values`` [n, cols] (each < 2**bits) down each column as one little-endian bit
    stream into uint32 words [n*bits/32, cols]."""
    n, cols = values.shape
    words = np.zeros((-(-n * bits // 32) + 1, cols), dtype=np.uint64)  # one spare word for spills
    for i in range(n):
        bit = i * bits
        w, s = divmod(bit, 32)
        v = values[i].astype(np.uint64)
        words[w] |= (v << np.uint64(s)) & np.uint64(0xFFFFFFFF)
        if s + bits > 32:
            words[w + 1] |= v >> np.uint64(32 - s)
    return words[: -(-n * bits // 32)].astype(np.uint32).view(np.int32)


def _gptq(w: torch.Tensor, bits: int, group: int, act_order: bool, sym: bool, v2: bool, seed: int):
    """GPTQ-style round-to-nearest: returns the packed tensors and the test's own dequantization."""
    out_f, in_f = w.shape
    wt = w.t().double().numpy()  # [in, out]
    rng = np.random.default_rng(seed)
    order = rng.permutation(in_f) if act_order else np.arange(in_f)
    g_idx = np.empty(in_f, dtype=np.int32)
    g_idx[order] = np.arange(in_f) // group  # act-order: groups follow the permuted column order
    n_groups = in_f // group
    maxq = 2**bits - 1
    scales = np.zeros((n_groups, out_f))
    zeros = np.zeros((n_groups, out_f), dtype=np.int64)
    for g in range(n_groups):
        rows = wt[g_idx == g]
        lo, hi = np.minimum(rows.min(0), 0), np.maximum(rows.max(0), 0)
        if sym:
            amax = np.maximum(np.abs(lo), hi)
            scales[g] = np.where(amax > 0, 2 * amax / maxq, 1.0)
            zeros[g] = (maxq + 1) // 2
        else:
            sc = np.where(hi > lo, (hi - lo) / maxq, 1.0)
            if not v2:  # the classic format cannot store a zero point of 0: widen such ranges by a step
                lo = np.where(-lo / sc < 0.5, -sc, lo)
                sc = np.where(hi > lo, (hi - lo) / maxq, 1.0)
            scales[g] = sc
            zeros[g] = np.clip(np.round(-lo / sc), 0 if v2 else 1, maxq)
    scales = scales.astype(np.float16).astype(np.float64)
    q = np.clip(np.round(wt / scales[g_idx]) + zeros[g_idx], 0, maxq).astype(np.int64)
    stored_zeros = zeros if v2 else zeros - 1  # the classic format stores zero - 1
    own = ((q - zeros[g_idx]) * scales[g_idx]).T
    tensors = {
        "qweight": torch.from_numpy(_pack_stream(q, bits)),
        "qzeros": torch.from_numpy(_pack_stream(stored_zeros.T & maxq, bits).T.copy()),
        "scales": torch.from_numpy(scales.astype(np.float16)),
        "g_idx": torch.from_numpy(g_idx),
    }
    return tensors, torch.from_numpy(own).float(), torch.from_numpy(scales[g_idx].T).float()


def _awq_pack(values: np.ndarray) -> np.ndarray:
    """[r, c] 4-bit values -> int32 [r, c/8], nibble k of word j holding column 8j + ORDER[k]."""
    r, c = values.shape
    words = np.zeros((r, c // 8), dtype=np.uint64)
    for k, col in enumerate(AWQ_NIBBLE_COLUMN):
        words |= values[:, col::8].astype(np.uint64) << np.uint64(4 * k)
    return words.astype(np.uint32).view(np.int32)


def _awq(w: torch.Tensor, group: int):
    out_f, in_f = w.shape
    wt = w.t().double().numpy()
    n_groups = in_f // group
    gi = np.arange(in_f) // group
    scales, zeros = np.zeros((n_groups, out_f)), np.zeros((n_groups, out_f), dtype=np.int64)
    for g in range(n_groups):
        rows = wt[gi == g]
        lo, hi = rows.min(0), rows.max(0)
        scales[g] = np.where(hi > lo, (hi - lo) / 15, 1.0)
        zeros[g] = np.clip(np.round(-lo / scales[g]), 0, 15)
    scales = scales.astype(np.float16).astype(np.float64)
    q = np.clip(np.round(wt / scales[gi]) + zeros[gi], 0, 15).astype(np.int64)
    own = ((q - zeros[gi]) * scales[gi]).T
    tensors = {
        "qweight": torch.from_numpy(_awq_pack(q)),
        "qzeros": torch.from_numpy(_awq_pack(zeros)),
        "scales": torch.from_numpy(scales.astype(np.float16)),
    }
    return tensors, torch.from_numpy(own).float(), torch.from_numpy(scales[gi].T).float()


def _fp8(w: torch.Tensor, block: int | None):
    """Per-block (or per-tensor) amax / 448 scales; weight stored as float8_e4m3fn."""
    out_f, in_f = w.shape
    if block is None:
        s = (w.abs().max() / 448.0).reshape(1)
        full = s.expand(out_f, in_f)
    else:
        nb0, nb1 = -(-out_f // block), -(-in_f // block)
        s = torch.empty(nb0, nb1)
        for a in range(nb0):
            for b in range(nb1):
                s[a, b] = w[a * block : (a + 1) * block, b * block : (b + 1) * block].abs().max() / 448.0
        full = torch.kron(s, torch.ones(block, block))[:out_f, :in_f]
    q = (w / full).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale_inv": s}, q.float() * full, full


# ---------------------------------------------------------------- the zoo in each format


def _quantize_zoo(zoo: Path, dst: Path, kind: str, **kw) -> tuple[dict, dict]:
    """Write llama-a quantized; returns (test's own dequantization, error bound) per float name."""
    src = load_file(str(zoo / "llama-a" / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    own: dict[str, torch.Tensor] = {}
    bound: dict[str, torch.Tensor] = {}
    for i, (name, w) in enumerate(sorted(src.items())):
        if not is_linear(name) or (kind == "gptq" and w.shape[1] * kw["bits"] % 32):
            # kept float, as releases keep modules their kernels cannot pack (3-bit needs in % 32 == 0)
            out[name] = w
            continue
        pre = name[: -len("weight")]
        if kind == "gptq":
            parts, own[name], scale = _gptq(w, seed=i, **kw)
            bound[name] = scale * (0.5 + 2 ** kw["bits"] * 2.0**-11)  # half a step + float16 scale rounding
        elif kind == "awq":
            parts, own[name], scale = _awq(w, **kw)
            bound[name] = scale * (0.5 + 16 * 2.0**-11)
        else:
            parts, own[name], scale = _fp8(w, **kw)
            bound[name] = w.abs() * 2.0**-4 + scale * 2.0**-9
        out.update({pre + k: v for k, v in parts.items()})
    if kind == "gptq":
        qcfg = {
            "quant_method": "gptq",
            "bits": kw["bits"],
            "group_size": kw["group"],
            "desc_act": kw["act_order"],
            "sym": kw["sym"],
            "checkpoint_format": "gptq_v2" if kw["v2"] else "gptq",
        }
    elif kind == "awq":
        qcfg = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": kw["group"],
            "version": "gemm",
            "zero_point": True,
        }
    else:
        qcfg = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
        if kw["block"] is not None:
            qcfg["weight_block_size"] = [kw["block"], kw["block"]]
    write_release(zoo, dst, out, qcfg)
    return own, bound


CASES = {
    "gptq4-actorder-asym": ("gptq", {"bits": 4, "group": 16, "act_order": True, "sym": False, "v2": False}),
    "gptq8-sym": ("gptq", {"bits": 8, "group": 32 // 2, "act_order": False, "sym": True, "v2": False}),
    "gptq3-v2": ("gptq", {"bits": 3, "group": 16, "act_order": False, "sym": False, "v2": True}),
    "gptq2": ("gptq", {"bits": 2, "group": 16, "act_order": True, "sym": False, "v2": False}),
    "awq4": ("awq", {"group": 16}),
    "fp8-block": ("fp8", {"block": 32}),
    "fp8-tensor": ("fp8", {"block": None}),
}
DERIVED = ("gptq4-actorder-asym", "gptq3-v2", "awq4", "fp8-block")


@pytest.fixture(scope="module")
def quant_zoo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, dict]]:
    root = tmp_path_factory.mktemp("quant")
    made = {}
    for case, (kind, kw) in CASES.items():
        own, bound = _quantize_zoo(tiny_zoo, root / case, kind, **kw)
        made[case] = (root / case, own, bound)
    return made


@pytest.mark.parametrize("case", list(CASES))
def test_dequantized_weights_match_the_packed_values(quant_zoo, tiny_zoo: Path, case: str) -> None:
    path, own, bound = quant_zoo[case]
    ck = open_checkpoint(path)
    floats = load_file(str(tiny_zoo / "llama-a" / "model.safetensors"))
    names = set(ck.source.names())
    assert names == set(floats)  # float names only: the auxiliary tensors are hidden
    for name, expect in own.items():
        got = ck.source.read(name)
        assert got.dtype == torch.float32 and got.shape == floats[name].shape
        assert torch.equal(got, expect), name  # exactly the test's own dequantization
        assert bool(((got - floats[name]).abs() <= bound[name] + 1e-6).all()), name  # within quant error
        rows = [3, 0, 7]
        assert torch.equal(ck.source.read_rows(name, rows), expect[rows])


@pytest.fixture(scope="module")
def base_prints(tiny_zoo: Path) -> dict:
    return {b: load_any(tiny_zoo / b)[0] for b in ("llama-a", "llama-b")}


@pytest.mark.parametrize("case", DERIVED)
def test_quantized_model_is_derived_from_its_base_only(quant_zoo, base_prints: dict, case: str) -> None:
    fq = load_any(quant_zoo[case][0])[0]  # fingerprinted through the quantized reader
    same = compare_fingerprints(fq, base_prints["llama-a"])
    other = compare_fingerprints(fq, base_prints["llama-b"])
    print(f"{case}: robust ICS vs llama-a {same.ics:.4f}, vs llama-b {other.ics:.4f}")
    assert same.verdict == "derived", (case, same.ics)
    assert other.verdict == "independent", (case, other.ics)


def test_inspect_names_the_format_and_bit_width(quant_zoo, capsys: pytest.CaptureFixture[str]) -> None:
    from huref.cli import main

    assert main(["inspect", str(quant_zoo["gptq4-actorder-asym"][0]), "--no-hash"]) == 0
    assert "gptq 4-bit, group 16, act-order, asym" in capsys.readouterr().out
    assert main(["inspect", str(quant_zoo["fp8-block"][0]), "--json", "--no-hash"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] == "fp8 (e4m3) 8-bit, 32x32 blocks"


def test_bad_quantized_checkpoints_are_refused(quant_zoo, tmp_path: Path) -> None:
    gptq = quant_zoo["gptq4-actorder-asym"][0]
    q = "model.layers.0.self_attn.q_proj."

    def unknown(t, c):
        c["quantization_config"]["quant_method"] = "mystery"

    def bits(t, c):
        c["quantization_config"]["bits"] = 8  # packed as 4-bit: shapes no longer agree

    def nan_scale(t, c):
        t[q + "scales"][0, 0] = float("nan")

    def stray(t, c):
        t[q + "extra_aux"] = torch.zeros(3)

    with pytest.raises(CheckpointError, match="unsupported quant_method"):
        open_checkpoint(mutate(gptq, tmp_path / "u", unknown))
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        open_checkpoint(mutate(gptq, tmp_path / "b", bits))
    ck = open_checkpoint(mutate(gptq, tmp_path / "n", nan_scale))
    with pytest.raises(CheckpointError, match="non-finite scales"):
        ck.source.read(q + "weight")
    ck = open_checkpoint(mutate(gptq, tmp_path / "s", stray))
    assert q + "extra_aux" in ck.source.names()  # not claimed: the architecture check still sees it
    with pytest.raises(ArchitectureError, match="not claimed"):
        compare_paths(ck.path, gptq)
