"""bitsandbytes and compressed-tensors releases of a tiny zoo base, read back through huref.

compressed-tensors releases are written by the reference package itself (its compressors, with
scales from its ``calculate_qparams``, and the ``quantization_config`` it dumps), and huref's
weights must equal the package's own dequantization. bitsandbytes releases are written by the
test from the documented serialisation (see below) and checked against the test's own
dequantization. Both must lie within the format's error of the float weights and fingerprint as
``derived`` from their base and ``independent`` of another base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors import (
    FloatQuantizationCompressor,
    IntQuantizationCompressor,
    PackedQuantizationCompressor,
)
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
from compressed_tensors.quantization.utils import calculate_qparams
from quantkit import is_linear, mutate, write_release
from safetensors.torch import load_file

from huref.checkpoint.open import open_checkpoint
from huref.errors import CheckpointError
from huref.invariants.compare import compare_fingerprints, load_any

# ---------------------------------------------------------------- bitsandbytes
# Written by the test from the documented serialisation (bitsandbytes itself is not in the lock:
# peft imports it whenever it builds a LoRA layer, which costs seconds per process and prints
# warnings on a machine without its CPU kernels). The NF4 code book is the one published with
# QLoRA; the FP4 and double-quantization code books are the test's own, since a reader must use
# the code books stored in the file.

NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # code bit 3 is the sign


def _nearest(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return (x.reshape(-1, 1) - book.reshape(1, -1)).abs().argmin(1).to(torch.uint8)


def _blockwise(flat: torch.Tensor, book: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax per block of ``size``) of ``flat`` against a code book spanning [-1, 1]."""
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, -n % size)).reshape(-1, size)
    absmax = padded.abs().amax(1)
    codes = _nearest(padded / absmax.clamp_min(1e-12)[:, None], book)[:n]
    return codes, absmax


def _bnb_linear(w: torch.Tensor, kind: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The tensors of one linear as transformers saves a bitsandbytes model, and their float value."""
    out, n_in = w.shape
    if kind == "int8":
        scb = w.abs().amax(1)
        q = torch.round(w / scb[:, None] * 127).to(torch.int8)
        own = q.to(torch.float32) * (scb / 127)[:, None]
        return {"weight": q, "SCB": scb, "weight_format": torch.tensor(0, dtype=torch.uint8)}, own
    book = torch.tensor(NF4) if kind == "nf4" else torch.tensor(E2M1 + [-v for v in E2M1]) / 6
    codes, absmax = _blockwise(w.reshape(-1), book, 64)
    codes = torch.nn.functional.pad(codes, (0, codes.numel() % 2))
    packed = (codes[0::2] << 4 | codes[1::2]).reshape(-1, 1)  # the earlier code in the high nibble
    state: dict = {"quant_type": kind, "blocksize": 64, "dtype": "float32", "shape": [out, n_in]}
    tensors = {"weight": packed, "weight.quant_map": book}
    if kind == "nf4":  # double quantization: absmax minus its mean, 8-bit codes per 256 blocks
        offset = float(absmax.mean())
        nested_book = torch.linspace(-1, 1, 256)
        acodes, nabsmax = _blockwise(absmax - offset, nested_book, 256)
        absmax = nested_book[acodes.long()] * nabsmax.repeat_interleave(256)[: acodes.numel()] + offset
        state |= {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": offset}
        tensors |= {
            "weight.absmax": acodes,
            "weight.nested_absmax": nabsmax,
            "weight.nested_quant_map": nested_book,
        }
    else:
        tensors["weight.absmax"] = absmax
    blob = json.dumps(state).encode()
    tensors[f"weight.quant_state.bitsandbytes__{kind}"] = torch.tensor(list(blob), dtype=torch.uint8)
    own = book[codes[: out * n_in].long()] * absmax.repeat_interleave(64)[: out * n_in]
    return tensors, own.reshape(out, n_in)


BNB_CONFIG = {
    "nf4": {  # double-quantized, as most nf4 releases are
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
    },
    "fp4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
    "int8": {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0},
}


# ---------------------------------------------------------------- compressed-tensors


def _ct_args(case: str) -> tuple[str, QuantizationArgs]:
    return {
        "ct-w4-group-asym": (
            "pack-quantized",
            QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=16),
        ),
        "ct-w3-channel": ("pack-quantized", QuantizationArgs(num_bits=3, symmetric=True, strategy="channel")),
        "ct-int8-channel": (
            "int-quantized",
            QuantizationArgs(num_bits=8, symmetric=True, strategy="channel"),
        ),
        "ct-fp8-block": (
            "float-quantized",
            QuantizationArgs(
                num_bits=8, type="float", symmetric=True, strategy="block", block_structure=[32, 32]
            ),
        ),
        "ct-fp8-tensor": (
            "float-quantized",
            QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor"),
        ),
    }[case]


COMPRESSOR = {
    "pack-quantized": PackedQuantizationCompressor,
    "int-quantized": IntQuantizationCompressor,
    "float-quantized": FloatQuantizationCompressor,
}


def _ct_linear(
    w: torch.Tensor, fmt: str, args: QuantizationArgs
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, n_in = w.shape
    if args.strategy == "group":
        g = w.reshape(out, n_in // args.group_size, args.group_size)
        lo, hi = g.amin(-1), g.amax(-1)
    elif args.strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    elif args.strategy == "block":
        bo, bi = args.block_structure  # ragged edge blocks padded with zeros (absmax unchanged)
        padded = torch.nn.functional.pad(w, (0, -n_in % bi, 0, -out % bo))
        b = padded.reshape(padded.shape[0] // bo, bo, padded.shape[1] // bi, bi)
        lo, hi = b.amin((1, 3)), b.amax((1, 3))
    else:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    scale, zp = calculate_qparams(lo, hi, args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    sd = COMPRESSOR[fmt].compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    ref = COMPRESSOR[fmt].decompress({k: v.clone() for k, v in sd.items()}, scheme)["weight"]
    return sd, ref.to(torch.float32)


# ---------------------------------------------------------------- the quantized zoo

CASES = (
    "nf4",
    "fp4",
    "int8",
    "ct-w4-group-asym",
    "ct-w3-channel",
    "ct-int8-channel",
    "ct-fp8-block",
    "ct-fp8-tensor",
)
BOUND = {  # the format's error, relative to each row's (or block's) absolute maximum
    "nf4": 0.25, "fp4": 0.5, "int8": 1 / 127, "ct-w4-group-asym": 1 / 15, "ct-w3-channel": 1 / 3,
    "ct-int8-channel": 1 / 127, "ct-fp8-block": 1 / 16, "ct-fp8-tensor": 1 / 16,
}  # fmt: skip


def _quantize(zoo: Path, dst: Path, case: str) -> tuple[Path, dict[str, torch.Tensor]]:
    src = load_file(str(zoo / "llama-a" / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    if case.startswith("ct-"):
        fmt, args = _ct_args(case)
    for name, w in sorted(src.items()):
        if not is_linear(name):
            tensors[name] = w
            continue
        pre = name[: -len("weight")]
        sd, ref[name] = _ct_linear(w, fmt, args) if case.startswith("ct-") else _bnb_linear(w, case)
        tensors.update({pre + k: v for k, v in sd.items()})
    if case.startswith("ct-"):
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
        qcfg = QuantizationConfig(
            config_groups={"group_0": scheme},
            format=fmt,
            quantization_status="compressed",
            ignore=["lm_head"],
        ).model_dump(mode="json")
    else:
        qcfg = BNB_CONFIG[case]
    return write_release(zoo, dst, tensors, qcfg), ref


@pytest.fixture(scope="module")
def ref_zoo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("quant-refs")
    return {case: _quantize(tiny_zoo, root / case, case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_dequantized_weights_equal_the_writers_own_dequantization(ref_zoo, tiny_zoo: Path, case: str) -> None:
    path, ref = ref_zoo[case]
    floats = load_file(str(tiny_zoo / "llama-a" / "model.safetensors"))
    ck = open_checkpoint(path)
    assert set(ck.source.names()) == set(floats)  # the stored parts are hidden
    for name, expect in ref.items():
        got = ck.source.read(name)
        assert got.dtype == torch.float32 and got.shape == floats[name].shape, name
        torch.testing.assert_close(got, expect, rtol=2e-6, atol=1e-7, msg=name)
        err = (got - floats[name]).abs().amax(1)
        assert bool((err <= BOUND[case] * floats[name].abs().amax(1) + 1e-6).all()), (name, float(err.max()))
        assert torch.equal(ck.source.read_rows(name, [5, 1]), got[[5, 1]])


@pytest.fixture(scope="module")
def base_prints(tiny_zoo: Path) -> dict:
    return {b: load_any(tiny_zoo / b)[0] for b in ("llama-a", "llama-b")}


@pytest.mark.parametrize("case", CASES)
def test_reference_quantized_model_is_derived_from_its_base_only(
    ref_zoo, base_prints: dict, case: str
) -> None:
    fq = load_any(ref_zoo[case][0])[0]
    same = compare_fingerprints(fq, base_prints["llama-a"])
    other = compare_fingerprints(fq, base_prints["llama-b"])
    print(f"{case}: robust ICS vs llama-a {same.ics:.4f}, vs llama-b {other.ics:.4f}")
    assert same.verdict == "derived", (case, same.ics)
    assert other.verdict == "independent", (case, other.ics)


def test_inspect_names_bitsandbytes_and_compressed_tensors(
    ref_zoo, capsys: pytest.CaptureFixture[str]
) -> None:
    from huref.cli import main

    expect = {
        "nf4": "bitsandbytes 4-bit nf4, double-quantized",
        "int8": "bitsandbytes 8-bit (LLM.int8, per-row absmax)",
        "ct-w4-group-asym": "compressed-tensors pack-quantized int4 4-bit, group 16, asym",
        "ct-fp8-block": "compressed-tensors float-quantized fp8 (e4m3) 8-bit, 32x32 blocks",
    }
    for case, text in expect.items():
        assert main(["inspect", str(ref_zoo[case][0]), "--json", "--no-hash"]) == 0
        assert json.loads(capsys.readouterr().out)["quantization"] == text


def test_bad_bitsandbytes_and_compressed_tensors_releases_are_refused(ref_zoo, tmp_path: Path) -> None:
    q = "model.layers.0.self_attn.q_proj."

    def fp4_state(t, c):  # the state says fp4, the config nf4
        t[q + "weight.quant_state.bitsandbytes__fp4"] = t.pop(q + "weight.quant_state.bitsandbytes__nf4")

    def no_absmax(t, c):
        del t[q + "weight.absmax"]

    def both(t, c):
        c["quantization_config"]["load_in_8bit"] = True

    def nan_scb(t, c):
        t[q + "SCB"][0] = float("nan")

    def sparse(t, c):
        c["quantization_config"]["sparsity_config"] = {"format": "sparse-bitmask"}

    def nvfp4(t, c):
        c["quantization_config"]["format"] = "nvfp4-pack-quantized"

    def short_packed(t, c):
        t[q + "weight_packed"] = t[q + "weight_packed"][:, :-1].contiguous()

    def no_group(t, c):
        c["quantization_config"]["config_groups"]["group_0"]["targets"] = ["re:.*mlp.*"]

    def nested(t, c):
        c["quantization_config"]["config_groups"]["group_0"]["targets"] = ["re:(model.+)+x"]

    bad = [
        ("ct-w4-group-asym", nested, "repeats a repeated group"),
        ("nf4", fp4_state, "is fp4-quantized, config.json says nf4"),
        ("nf4", no_absmax, "weight.absmax' is missing"),
        ("nf4", both, "exactly one of load_in_4bit and load_in_8bit"),
        ("ct-w4-group-asym", sparse, "sparse compression"),
        ("ct-w4-group-asym", nvfp4, "format 'nvfp4-pack-quantized' is not supported"),
        ("ct-w4-group-asym", short_packed, "weight_packed does not hold"),
        ("ct-w4-group-asym", no_group, "matches no config group"),
    ]
    for i, (case, edit, message) in enumerate(bad):
        with pytest.raises(CheckpointError, match=message):
            open_checkpoint(mutate(ref_zoo[case][0], tmp_path / str(i), edit))
    ck = open_checkpoint(mutate(ref_zoo["int8"][0], tmp_path / "nan", nan_scb))
    with pytest.raises(CheckpointError, match="non-finite scales"):
        ck.source.read(q + "weight")
