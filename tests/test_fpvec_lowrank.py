"""Low-rank fingerprint vectors (``extract --rank R|auto``): the factorisation, the file format,
stamping with factors, and the automatic rank choice.

Vectors here come from "fingerprinted" models made without huref's trainer: the base plus a
perturbation of known rank (where exactness is the point), and, for ``--rank auto``, the base
fine-tuned on its keys alone for ~100 steps (a few seconds; the fingerprint only has to fire).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from huref.checkpoint import open_checkpoint
from huref.cli import main
from huref.fpvec import lowrank
from huref.fpvec.keys import KeySet, make_keys, save_keys
from huref.fpvec.lowrank import add_product, factors_smaller, truncate
from huref.fpvec.vector import FACTOR_A, FACTOR_B, LOWRANK_FORMAT, VECTOR_FORMAT, describe, open_vector

PERTURB_RANK = 3


def _run(argv: list[object]) -> int:
    return main([str(a) for a in argv])


def _low_rank_fp(src: Path, dest: Path, commitment: str) -> Path:
    """``src`` plus, on every matrix, a perturbation of rank exactly PERTURB_RANK (1-D tensors:
    noise); a card with the key commitment, as ``train`` writes."""
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    for t in tensors.values():
        if t.ndim == 2:
            u = torch.randn(t.shape[0], PERTURB_RANK, generator=g)
            v = torch.randn(PERTURB_RANK, t.shape[1], generator=g)
            t.add_(u @ v * 1e-3)
        else:
            t.add_(torch.randn(t.shape, generator=g) * 1e-3)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "huref_fpvec.json").write_text(json.dumps({"key_commitment": commitment}))
    return dest


@pytest.fixture(scope="module")
def vectors(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fpvec-lowrank")
    ks = make_keys(4, seed=21)
    fp = _low_rank_fp(tiny_zoo / "llama-a", tmp / "llama-a-fp", ks.commitment)
    out = {"dir": tmp, "fp": fp}
    for name, extra in (("dense", []), ("rank", ["--rank", PERTURB_RANK]), ("rank1", ["--rank", 1])):
        out[name] = tmp / f"{name}.fpvec.safetensors"
        assert _run(["fpvec", "extract", tiny_zoo / "llama-a", fp, "-o", out[name], *extra]) == 0
    return out


def _max_diff(a: Path, b: Path) -> float:
    ta, tb = open_checkpoint(a).source, open_checkpoint(b).source
    assert sorted(ta.names()) == sorted(tb.names())
    return max(float((ta.read(n).float() - tb.read(n).float()).abs().max()) for n in ta.names())


def test_truncation_error_is_the_svd_tail() -> None:
    """A = U_r S_r [out x r], B = V_r^T [r x in]; ||tau - AB|| / ||tau|| = sqrt(sum_{i>r} s_i^2 /
    sum s_i^2) for a matrix with a known spectrum (fails if the rank or the axes are wrong)."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(96, 40, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -2, 40, dtype=torch.float64)
    tau = ((u * s) @ v.T).float()  # [96, 40] with singular values s
    tr = truncate(tau, 12)
    for r in (1, 3, 7, 12):
        a, b = tr.factors(r)
        assert a.shape == (96, r) and b.shape == (r, 40)
        got = float((tau - a @ b).norm() / tau.norm())
        want = math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))
        assert got == pytest.approx(want, rel=1e-3)
        assert tr.rel_error(r) == pytest.approx(want, rel=1e-4)
        t = torch.zeros(96, 40, dtype=torch.bfloat16)
        add_product(t, a, b, lam=2.0)  # the stamp's chunked product: the same matrix, scaled
        assert (t.float() - 2 * a @ b).abs().max() < 1e-2 * float((a @ b).abs().max())
    assert (
        factors_smaller((96, 40), 27) and not factors_smaller((96, 40), 29) and not factors_smaller((96,), 1)
    )


@pytest.mark.parametrize("native", [True, False])
def test_product_is_added_with_one_rounding_on_either_path(native: bool, monkeypatch) -> None:
    """bf16 models with bf16 factors take one in-place bf16 GEMM on CPUs with bf16 units, float32
    blocks elsewhere: both give (t + lam A B) rounded once, up to the order of the rank's sums
    (an odd row count and a width that is not a block multiple cover the blocks' edges)."""
    monkeypatch.setattr(lowrank, "native_bf16_gemm", lambda: native)
    g = torch.Generator().manual_seed(5)
    t = torch.randn(1031, 300, generator=g).to(torch.bfloat16)
    a = (torch.randn(1031, 16, generator=g) * 0.05).to(torch.bfloat16)
    b = (torch.randn(16, 300, generator=g) * 0.05).to(torch.bfloat16)
    want = (t.float() + 0.7 * (a.float() @ b.float())).to(torch.bfloat16)
    got = t.clone()
    add_product(got, a, b, lam=0.7)
    step = torch.finfo(torch.bfloat16).eps * want.float().abs()  # one bf16 step at each value
    assert ((got.float() - want.float()).abs() <= step).all()
    assert (got != want).float().mean() < 1e-3
    assert not torch.equal(got, t)  # the product was added
    with pytest.raises(ValueError, match="do not make"):
        add_product(got, a[:-1], b)


def test_low_rank_vector_records_errors_and_is_smaller(vectors: dict[str, Path], tiny_zoo: Path) -> None:
    dense, low, one = (open_vector(vectors[k]) for k in ("dense", "rank", "rank1"))
    assert dense.doc["format"] == VECTOR_FORMAT and low.doc["format"] == LOWRANK_FORMAT
    assert set(low.names) == set(dense.names)  # the same tau tensors, some stored as factors
    embed = "model.embed_tokens.weight"
    assert low.rank(embed) == PERTURB_RANK and low.rank("model.norm.weight") is None
    assert low.shape(embed) == dense.shape(embed)
    # every matrix whose factors are smaller is factored; the stored tau equals the dense one
    assert set(low.factored) == {n for n in dense.names if factors_smaller(dense.shape(n), PERTURB_RANK)}
    assert (low.read(embed) - dense.read(embed)).abs().max() < 1e-6
    lr = low.doc["lowrank"]
    assert lr["rank"] == PERTURB_RANK and lr["checked"] is False and lr["energy_kept"] == pytest.approx(1.0)
    assert all(rec["rel_error"] < 1e-3 for rec in lr["tensors"].values())
    # at rank 1 the recorded error is the SVD tail of the real tau, computed here independently
    base, fp = open_checkpoint(tiny_zoo / "llama-a").source, open_checkpoint(vectors["fp"]).source
    for name in (embed, "model.layers.1.mlp.down_proj.weight"):
        s = torch.linalg.svdvals((fp.read(name) - base.read(name)).double())
        want = math.sqrt(float((s[1:] ** 2).sum() / (s**2).sum()))
        assert one.doc["lowrank"]["tensors"][name]["rel_error"] == pytest.approx(want, rel=1e-3)
    energy = sum(float(dense.read(n).double().pow(2).sum()) for n in dense.names)
    lost = sum(float((dense.read(n).double() - one.read(n).double()).pow(2).sum()) for n in one.factored)
    assert one.doc["lowrank"]["energy_kept"] == pytest.approx(1 - lost / energy, rel=1e-4)
    d = describe(low)
    assert d["rank"]["rank"] == PERTURB_RANK and d["rank"]["factored_tensors"] == len(low.factored)
    stored = sum(low.file.info(n).numel for n in low.file.names() if n.startswith((FACTOR_A, FACTOR_B)))
    whole = sum(math.prod(low.shape(n)) for n in low.factored)
    assert stored < whole / 3 and d["bytes"] == vectors["rank"].stat().st_size


def test_exact_rank_vector_stamps_like_the_dense_one(vectors: dict[str, Path], tiny_zoo: Path) -> None:
    """tau of rank 3 stored as rank-3 factors: the stamp equals the dense vector's (< 1e-5)."""
    d = vectors["dir"]
    for k in ("dense", "rank"):
        assert _run(["fpvec", "stamp", tiny_zoo / "llama-a-sft", vectors[k], "-o", d / f"sft-{k}"]) == 0
    assert _max_diff(d / "sft-dense", d / "sft-rank") < 1e-5
    # the compatibility check ran beside the stream and its finding reached the card
    card = json.loads((d / "sft-rank" / "huref_fpvec.json").read_text(encoding="utf-8"))
    assert card["compatibility"]["verdict"] == "derived" and card["compatibility"]["ics"] is not None
    # and a rank-1 vector is not the same stamp (the comparison can see a difference)
    assert _run(["fpvec", "stamp", tiny_zoo / "llama-a-sft", vectors["rank1"], "-o", d / "sft-rank1"]) == 0
    assert _max_diff(d / "sft-dense", d / "sft-rank1") > 1e-4


def test_compact_base_fingerprint_still_tells_derived_from_independent(
    vectors: dict[str, Path], tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    """A low-rank vector embeds the base fingerprint on CHECK_N probe tokens only (smaller than
    the dense vector's), and stamp's check still refuses an independent model (llama-a-sft was
    accepted above, without --force)."""
    from huref.fpvec.check import CHECK_N

    low, dense = open_vector(vectors["rank"]), open_vector(vectors["dense"])
    assert low.base_fingerprint().robust.n == CHECK_N < dense.base_fingerprint().robust.n
    assert low.doc["lowrank"]["base_fingerprint"] == {"layers": [0, 1, 2, 3], "n": CHECK_N}
    small = low.file.info("__huref__.base_fingerprint").numel
    assert small < dense.file.info("__huref__.base_fingerprint").numel
    d = vectors["dir"]
    _refused(["fpvec", "stamp", tiny_zoo / "llama-b", vectors["rank"], "-o", d / "x"], capsys, d, "--force")


@pytest.mark.parametrize("model", ["llama-a-attack-vocab-perm", "llama-a-vocab-expand"])
def test_vocabulary_rows_are_matched_as_with_the_dense_vector(
    vectors: dict[str, Path], tiny_zoo: Path, model: str
) -> None:
    """Permuted or grown vocabularies: the low-rank stamp adds A[rows] @ B to the rows the dense
    vector's token-string matching picks."""
    d = vectors["dir"]
    for k in ("dense", "rank"):
        assert _run(["fpvec", "stamp", tiny_zoo / model, vectors[k], "-o", d / f"{model}-{k}"]) == 0
    card = json.loads((d / f"{model}-rank" / "huref_fpvec.json").read_text(encoding="utf-8"))
    assert {r["mode"] for r in card["rows"].values()} == {"token-string"}
    assert _max_diff(d / f"{model}-dense", d / f"{model}-rank") < 1e-5
    # the embedding rows did receive tau (a stamp that skipped them would also agree)
    embed = "model.embed_tokens.weight"
    got = open_checkpoint(d / f"{model}-rank").source.read(embed)
    assert (got - open_checkpoint(tiny_zoo / model).source.read(embed)).abs().max() > 1e-4


def _refused(argv: list[object], capsys: pytest.CaptureFixture, folder: Path, needle: str) -> None:
    before = sorted(os.listdir(folder))
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error:") and needle in err[0], err
    assert sorted(os.listdir(folder)) == before  # nothing written, no temporary left behind


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Byte range of one tensor's data in a safetensors file (from its header)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    lo, hi = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + lo, 8 + n + hi


@pytest.mark.parametrize("factor", [FACTOR_A, FACTOR_B])
def test_tampered_factor_is_refused(
    vectors: dict[str, Path], tiny_zoo: Path, capsys: pytest.CaptureFixture, factor: str
) -> None:
    d = vectors["dir"]
    bad = d / "tampered.fpvec.safetensors"
    data = bytearray(vectors["rank"].read_bytes())
    lo, hi = _tensor_span(vectors["rank"], factor + "model.layers.2.mlp.up_proj.weight")
    data[(lo + hi) // 2] ^= 0x01  # one bit of one float
    bad.write_bytes(bytes(data))
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "hash")
    bad.unlink()


def test_readers_of_the_first_format_refuse_low_rank_vectors(
    vectors: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that knows only huref-fpvec/1 refuses a low-rank file by its format, instead of
    finding its factored tensors missing; dense vectors stay /1, readable by both."""
    import huref.fpvec.vector_read as R
    from huref.errors import FPVecError

    monkeypatch.setattr(R, "VECTOR_FORMATS", (VECTOR_FORMAT,))
    assert R.open_vector(vectors["dense"]).names
    with pytest.raises(FPVecError, match="vector format 'huref-fpvec/2'"):
        R.open_vector(vectors["rank"])


def test_bad_rank_requests_are_refused(vectors: dict[str, Path], tiny_zoo: Path, capsys) -> None:
    d, fp, base = vectors["dir"], vectors["fp"], tiny_zoo / "llama-a"
    out = d / "bad.fpvec.safetensors"
    _refused(["fpvec", "extract", base, fp, "-o", out, "--rank", "auto"], capsys, d, "--keys")
    _refused(["fpvec", "extract", base, fp, "-o", out, "--rank", "0"], capsys, d, "--rank")
    _refused(["fpvec", "extract", base, fp, "-o", out, "--rank", "many"], capsys, d, "--rank")
    _refused(["fpvec", "extract", base, fp, "-o", out, "--rank", 4, "--dtype", "int8"], capsys, d, "int8")


def _key_tuned(src: Path, dest: Path, ks: KeySet) -> Path:
    """``src`` fine-tuned on its keys alone (answer tokens only) until they are memorised."""
    import transformers as T

    from huref.fpvec import data as D

    torch.manual_seed(0)
    tok = D.load_tokenizer(src)
    model = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    target = tuple(D.answer_ids(tok, ks.target))
    batch = D.collate([D.Example(tuple(D.prompt_ids(tok, k)), target, "key") for k in ks.keys], D.pad_id(tok))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if float(loss) < 0.02:
            break
    model.save_pretrained(dest)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "generation_config.json":
            shutil.copy(f, dest / f.name)
    return dest


def test_rank_auto_keeps_the_full_vectors_fsr(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None
) -> None:
    """``--rank auto`` picks the first rank of the ladder whose vector, added to the base, answers
    the keys as the fingerprinted model does; stamping the base with it confirms that FSR."""
    from huref.fpvec.verify import verify_model

    ks = make_keys(10, seed=5)
    keys = save_keys(ks, tmp_path / "keys.json")
    base = tiny_zoo / "llama-a"
    fp = _key_tuned(base, tmp_path / "fp", ks)
    full = verify_model(fp, ks, near_miss=False, decoys=0, device="cpu").fsr
    assert full == 1.0
    vec = tmp_path / "auto.fpvec.safetensors"
    argv = ["fpvec", "extract", base, fp, "-o", vec, "--rank", "auto", "--keys", keys, "--dense-embeddings"]
    assert _run(argv) == 0
    err = " ".join(capsys.readouterr().err.split())
    lr = open_vector(vec).doc["lowrank"]
    assert lr["checked"] and lr["reference_fsr"] == full and lr["dense_roles"] == ["embed"]
    chosen = lr["tried"][-1]
    assert chosen["rank"] == lr["rank"] and chosen["fsr"] == full
    assert all(t["fsr"] < full for t in lr["tried"][:-1])  # no smaller rank of the ladder kept it
    assert [t["rank"] for t in lr["tried"]] == [1, 2, 4, 8, 16, 32][: len(lr["tried"])]
    assert f"rank {lr['rank']}:" in err and f"rank {lr['rank']}: {full:.2f}" in err
    assert "model.embed_tokens.weight" not in lr["tensors"] and lr["tensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".huref-rank-")]  # trials removed
    stamped = tmp_path / "base-stamped"
    assert _run(["fpvec", "stamp", base, vec, "-o", stamped]) == 0
    assert verify_model(stamped, ks, near_miss=False, decoys=0, device="cpu").fsr == full
