"""FP-Vec refuses bad input with one clear line and exit code 2, and writes nothing.

The vectors here are built without training (tau = small noise on top of the base, i.e. an
"fp model" made by perturbing the base), which is all that validation needs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from huref.cli import main
from huref.errors import FPVecError
from huref.fpvec.keys import make_keys, save_keys


def _perturbed(src: Path, dest: Path, commitment: str) -> Path:
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for t in tensors.values():
        t.add_(torch.randn(t.shape, generator=g) * 1e-3)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "huref_fpvec.json").write_text(json.dumps({"key_commitment": commitment}))
    return dest


@pytest.fixture(scope="module")
def setup(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fpvec-bad")
    ks = make_keys(4, seed=9)
    keys = save_keys(ks, tmp / "keys.json")
    out: dict[str, Path] = {"dir": tmp, "keys": keys}
    for name in ("llama-a", "gpt2-a"):
        fp = _perturbed(tiny_zoo / name, tmp / f"{name}-fp", ks.commitment)
        vec = tmp / f"{name}.fpvec.safetensors"
        assert main(["fpvec", "extract", str(tiny_zoo / name), str(fp), "-o", str(vec)]) == 0
        out[name] = vec
    return out


def _refused(argv: list[str], capsys: pytest.CaptureFixture, folder: Path, needle: str) -> str:
    before = sorted(os.listdir(folder))
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("huref: error:") and needle in err[0], err[0]
    assert sorted(os.listdir(folder)) == before  # nothing written, no temporary left behind
    return err[0]


def test_vector_of_another_architecture(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    _refused(
        ["fpvec", "stamp", tiny_zoo / "llama-a-sft", setup["gpt2-a"], "-o", d / "x"],
        capsys,
        d,
        "no counterpart",
    )


def test_vector_of_another_shape(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    _refused(
        ["fpvec", "stamp", tiny_zoo / "llama-a-prune-width", setup["llama-a"], "-o", d / "x"],
        capsys,
        d,
        "does not fit",
    )


def test_truncated_vector(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    bad = d / "truncated.fpvec.safetensors"
    data = setup["llama-a"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "truncated")


def test_tampered_vector_metadata(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    bad = d / "tampered.fpvec.safetensors"
    data = bytearray(setup["llama-a"].read_bytes())
    at = data.index(b"llama-a")
    data[at + 1 : at + 2] = b"L"  # same length: only the seal can tell
    bad.write_bytes(bytes(data))
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "seal")


def test_tampered_vector_tensor_bytes(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    bad = d / "flipped.fpvec.safetensors"
    data = bytearray(setup["llama-a"].read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's bytes
    bad.write_bytes(bytes(data))
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "hash")


def test_vectors_record_blake3_and_sha256_vectors_still_verify(
    setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huref.fpvec.vector as V
    import huref.fpvec.vector_write as W

    d = setup["dir"]
    assert V.open_vector(setup["llama-a"]).tensor_hash == "blake3"
    monkeypatch.setattr(W, "TENSOR_HASH", "sha256")  # a vector as written before BLAKE3
    fp = _perturbed(tiny_zoo / "llama-a", d / "sha-fp", V.open_vector(setup["llama-a"]).commitment)
    old = d / "sha256.fpvec.safetensors"
    assert main(["fpvec", "extract", str(tiny_zoo / "llama-a"), str(fp), "-o", str(old)]) == 0
    monkeypatch.undo()
    vec = V.open_vector(old)
    name = vec.names[0]
    assert vec.tensor_hash == "sha256"
    assert vec.hashes[name] == V.tensor_digest(vec.read_stored(name, check=False)[0], "sha256")
    assert (
        main(["fpvec", "stamp", str(tiny_zoo / "llama-a-sft"), str(old), "-o", str(d / "sha-stamped")]) == 0
    )
    shutil.rmtree(d / "sha-stamped")
    bad = d / "sha256-flipped.fpvec.safetensors"
    data = bytearray(old.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    capsys.readouterr()  # what extract and the first stamp printed
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "hash")


def test_key_file_without_keys(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    empty = d / "empty-keys.json"
    doc = json.loads(setup["keys"].read_text(encoding="utf-8"))
    doc.update(keys=[])
    doc.pop("commitment")
    empty.write_text(json.dumps(doc), encoding="utf-8")
    _refused(["fpvec", "verify", tiny_zoo / "llama-a", "--keys", empty], capsys, d, "no keys")
    _refused(["fpvec", "train", tiny_zoo / "llama-a", "--keys", empty, "-o", d / "fp"], capsys, d, "no keys")


def test_output_folder_exists(setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture) -> None:
    d = setup["dir"]
    existing = d / "existing"
    existing.mkdir(exist_ok=True)
    (existing / "keep.txt").write_text("mine")
    _refused(
        ["fpvec", "stamp", tiny_zoo / "llama-a-sft", setup["llama-a"], "-o", existing],
        capsys,
        d,
        "already exists",
    )
    assert os.listdir(existing) == ["keep.txt"]
    _refused(
        ["fpvec", "train", tiny_zoo / "llama-a", "--keys", setup["keys"], "-o", existing],
        capsys,
        d,
        "already exists",
    )
    _refused(
        ["fpvec", "extract", tiny_zoo / "llama-a", tiny_zoo / "llama-a", "-o", setup["llama-a"]],
        capsys,
        d,
        "already exists",
    )


def test_output_equals_or_inside_input(
    setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_zoo / "llama-a-sft", model)
    _refused(["fpvec", "stamp", model, setup["llama-a"], "-o", model], capsys, tmp_path, "already exists")
    before = sorted(os.listdir(model))
    _refused(["fpvec", "stamp", model, setup["llama-a"], "-o", model / "stamped"], capsys, tmp_path, "input")
    assert sorted(os.listdir(model)) == before


def test_stamping_a_bare_checkpoint_needs_explicit_row_matching(
    setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_zoo / "llama-a-sft", model)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model / f).unlink()
    _refused(
        ["fpvec", "stamp", model, setup["llama-a"], "-o", tmp_path / "x"],
        capsys,
        tmp_path,
        "--rows-by-position",
    )
    # with ids instead of token strings the invariants cannot be compared either: --force is needed too
    _refused(
        ["fpvec", "stamp", model, setup["llama-a"], "-o", tmp_path / "x", "--rows-by-position"],
        capsys,
        tmp_path,
        "--force",
    )
    assert (
        main(
            [
                "fpvec",
                "stamp",
                str(model),
                str(setup["llama-a"]),
                "-o",
                str(tmp_path / "x"),
                "--rows-by-position",
                "--force",
            ]
        )
        == 0
    )
    card = json.loads((tmp_path / "x" / "huref_fpvec.json").read_text())
    assert {r["mode"] for r in card["rows"].values()} == {"position"}


def test_stamp_adds_lambda_tau_exactly(setup: dict, tiny_zoo: Path, tmp_path: Path) -> None:
    from huref.checkpoint import open_checkpoint
    from huref.fpvec.vector import open_vector

    out = tmp_path / "half"
    assert (
        main(
            [
                "fpvec",
                "stamp",
                str(tiny_zoo / "llama-a-sft"),
                str(setup["llama-a"]),
                "-o",
                str(out),
                "--lambda",
                "0.5",
            ]
        )
        == 0
    )
    v, src, dst = (
        open_vector(setup["llama-a"]),
        open_checkpoint(tiny_zoo / "llama-a-sft"),
        open_checkpoint(out),
    )
    for n in v.names:
        assert torch.allclose(dst.source.read(n), src.source.read(n) + 0.5 * v.read(n), atol=1e-7), n
    meta = dst.source.metadata()
    assert json.loads(meta["huref.fpvec.stamp"])["lambda"] == 0.5


def test_stamp_into_a_torch_bin_checkpoint_equals_stamping_its_safetensors(
    setup: dict, tiny_zoo: Path, tmp_path: Path
) -> None:
    """A pytorch_model.bin downstream goes through the same check (its invariants are streamed
    from the .bin) and gets the same sums."""
    from huref.checkpoint import open_checkpoint

    src = tiny_zoo / "llama-a-sft"
    as_bin = tmp_path / "sft-bin"
    as_bin.mkdir()
    for p in src.iterdir():
        if p.suffix != ".safetensors":
            shutil.copy(p, as_bin / p.name)
    torch.save(load_file(str(src / "model.safetensors")), as_bin / "pytorch_model.bin")
    outs = []
    for down in (src, as_bin):
        outs.append(tmp_path / f"out-{down.name}")
        assert main(["fpvec", "stamp", str(down), str(setup["llama-a"]), "-o", str(outs[-1])]) == 0
    a, b = open_checkpoint(outs[0]).source, open_checkpoint(outs[1]).source
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
        assert torch.equal(a.read(n), b.read(n)), n


@pytest.fixture(scope="module")
def int8_vector(setup: dict, tiny_zoo: Path) -> Path:
    out = setup["dir"] / "llama-a.int8.fpvec.safetensors"
    fp = setup["dir"] / "llama-a-fp"
    assert (
        main(["fpvec", "extract", str(tiny_zoo / "llama-a"), str(fp), "-o", str(out), "--dtype", "int8"]) == 0
    )
    return out


def test_int8_vector_stamps_within_one_quantization_step(
    setup: dict, int8_vector: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    """int8 rows with float32 scales: stored at a quarter of float32's bytes, read back within half
    a step of the exact tau, and stamped exactly as read (shared vocabulary rows by token string)."""
    from huref.checkpoint import open_checkpoint
    from huref.fpvec.vector import SCALE_PREFIX, open_vector

    v8, v = open_vector(int8_vector), open_vector(setup["llama-a"])
    assert v8.names == v.names
    matrices = [n for n in v.names if len(v.shape(n)) == 2]
    assert matrices and all(v8.file.info(n).dtype == "I8" for n in matrices)
    assert all(v8.file.info(SCALE_PREFIX + n).shape == v.shape(n)[:1] for n in matrices)
    for n in v.names:
        exact, got = v.read(n), v8.read(n)
        step = exact.abs().amax(dim=-1, keepdim=True) / 127 if exact.dim() == 2 else torch.zeros(())
        assert torch.all((got - exact).abs() <= step / 2 + 1e-9), n
    for model in ("llama-a-sft", "llama-a-attack-vocab-expand"):
        out = tmp_path / model
        argv = ["fpvec", "stamp", str(tiny_zoo / model), str(int8_vector), "-o", str(out), "--lambda", "0.5"]
        assert main(argv) == 0
        src, dst = open_checkpoint(tiny_zoo / model), open_checkpoint(out)
        for n in v.names:
            a, b, tau = src.source.read(n), dst.source.read(n), v8.read(n)
            rows = tau.shape[0]  # the expanded model's new rows have no tau: left as they were
            assert torch.allclose(b[:rows], a[:rows] + 0.5 * tau, atol=1e-7), (model, n)
            assert torch.equal(b[rows:], a[rows:]), (model, n)


def test_int8_vector_with_tampered_or_missing_scales(
    setup: dict, int8_vector: Path, tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    from huref.fpvec.vector import SCALE_PREFIX

    d = setup["dir"]
    data = bytearray(int8_vector.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k.startswith(SCALE_PREFIX))
    at = 8 + n + header[name]["data_offsets"][0]
    data[at] ^= 0x40  # a scale changed: the hash of the scale tensor catches it
    bad = d / "scale-flipped.fpvec.safetensors"
    bad.write_bytes(bytes(data))
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, "hash")

    from safetensors import safe_open

    with safe_open(str(int8_vector), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(int8_vector))
    del tensors[name]
    missing = d / "scale-missing.fpvec.safetensors"
    save_file(tensors, str(missing), metadata=meta)
    _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", missing, "-o", d / "x"], capsys, d, "row scales")


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))
from huref.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_exit_3_and_leaves_nothing(
    setup: dict, tiny_zoo: Path, tmp_path: Path
) -> None:
    """The operating system refusing a write (a file size limit here, as a full disk would) is not
    bad input: one line naming the system error, exit code 3, no output and no temporary file.
    With a tiny model the first write to hit the limit is the temporary copy of the vector's
    embedded base fingerprint (larger than the model); the writer's own failure path is tested
    in test_formats."""
    import subprocess
    import sys

    d = setup["dir"]
    before = sorted(os.listdir(d))
    temp = tmp_path / "tmp"
    temp.mkdir()
    argv = ["fpvec", "stamp", str(tiny_zoo / "llama-a-sft"), str(setup["llama-a"]), "-o", str(d / "x")]
    r = subprocess.run(
        [sys.executable, "-c", _LIMITED, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("huref: error: system error:"), err
    assert "File too large" in err[0]
    assert sorted(os.listdir(d)) == before
    assert list(temp.iterdir()) == []


def test_extract_refuses_a_base_the_model_was_not_trained_from(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The training card records the base's weight hashes: tau against another base would carry
    the difference of two unrelated models, and stamping it would transplant the trained one."""
    from huref.checkpoint import open_checkpoint

    fp = _perturbed(tiny_zoo / "llama-a", tmp_path / "fp", "c" * 64)
    card = json.loads((fp / "huref_fpvec.json").read_text())
    card["base"] = {"name": "llama-a", "sha256": open_checkpoint(tiny_zoo / "llama-a").sha256s()}
    (fp / "huref_fpvec.json").write_text(json.dumps(card))
    argv = ["fpvec", "extract", tiny_zoo / "llama-b", fp, "-o", tmp_path / "v.safetensors"]
    _refused(argv, capsys, tmp_path, "was trained from 'llama-a'")
    assert (
        main(
            [str(a) for a in argv[:2]]
            + [str(tiny_zoo / "llama-a"), str(fp), "-o", str(tmp_path / "v.safetensors")]
        )
        == 0
    )


def test_extract_refuses_to_drop_a_tied_lm_head(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fp = _perturbed(tiny_zoo / "gpt2-a", tmp_path / "fp", "c" * 64)
    argv = ["fpvec", "extract", tiny_zoo / "gpt2-a", fp, "-o", tmp_path / "v.safetensors", "--drop-lm-head"]
    _refused(argv, capsys, tmp_path, "tied to the token embedding")


def test_a_tied_bases_embedding_tau_reaches_an_untied_downstream_lm_head(
    setup: dict, tiny_zoo: Path, tmp_path: Path
) -> None:
    """gpt2-a ties its output layer to the token embedding, so tau on wte changed both roles; a
    derivative that unties them gets that tau on both tensors."""
    from huref.checkpoint import open_checkpoint
    from huref.fpvec.stamp import stamp_model
    from huref.fpvec.vector import open_vector

    untied = shutil.copytree(tiny_zoo / "gpt2-a-sft", tmp_path / "untied")
    sd = load_file(str(untied / "model.safetensors"))
    sd["lm_head.weight"] = sd["transformer.wte.weight"] * 1.01  # untied: a head of its own
    save_file(sd, str(untied / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((untied / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (untied / "config.json").write_text(json.dumps(cfg))

    r = stamp_model(untied, setup["gpt2-a"], tmp_path / "out")
    tau = open_vector(setup["gpt2-a"]).read("transformer.wte.weight")
    out = open_checkpoint(tmp_path / "out").source
    for name in ("transformer.wte.weight", "lm_head.weight"):
        assert torch.allclose(out.read(name), sd[name] + tau, atol=1e-6), name
    assert any("ties it to the token embedding" in n for n in r.notes)
    card = json.loads((tmp_path / "out" / "huref_fpvec.json").read_text())
    assert card["tau_of"] == {"lm_head.weight": "transformer.wte.weight"}


def test_rows_whose_normalised_strings_repeat_are_matched_in_order() -> None:
    """A byte-fallback token <0x41> and the token A normalise to the same string; a vocabulary
    expanded after them must still get tau on both rows."""
    from types import SimpleNamespace as NS

    from huref.fpvec.stamp import _row_match

    base = ["<unk>", "A", "the", "A", "x"]  # normalised: rows 1 and 3 read the same
    down = [*base, "new"]
    v = NS(vocab=base, shape=lambda _: (5, 8))
    m = NS(ckpt=NS(vocab=NS(tokens=tuple(down)), source=NS(info=lambda _: NS(shape=(6, 8)))))
    r = _row_match(v, m, "embed", False)  # type: ignore[arg-type]
    assert r.src is not None and r.dst is not None
    assert r.src.tolist() == [0, 1, 2, 3, 4] and r.dst.tolist() == [0, 1, 2, 3, 4]


def test_skipped_layers_are_named_with_a_warning(setup: dict, tiny_zoo: Path, tmp_path: Path) -> None:
    from huref.fpvec.stamp import stamp_model

    r = stamp_model(tiny_zoo / "llama-a-prune-depth", setup["llama-a"], tmp_path / "out", skip_missing=True)
    (note,) = [n for n in r.notes if n.startswith("skipped")]
    assert "model.layers.3." in note and "layers 3 have none" in note


def test_bad_learning_rates_and_trigger_only_keys(
    setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    d = setup["dir"]
    for lr in ("nan", "-1", "0"):
        argv = ["fpvec", "train", tiny_zoo / "llama-a", "--keys", setup["keys"], "-o", d / "fp", "--lr", lr]
        _refused(argv, capsys, d, "--lr must be a positive number")
    for noise in ("nan", "-0.01", "0.6", "inf"):
        argv = [
            "fpvec",
            "train",
            tiny_zoo / "llama-a",
            "--keys",
            setup["keys"],
            "-o",
            d / "fp",
            "--weight-noise",
            noise,
        ]
        _refused(argv, capsys, d, "--weight-noise must be between 0 and 0.5")
    argv = ["fpvec", "train", tiny_zoo / "llama-a", "--keys", setup["keys"], "-o", d / "fp", "--steps", 50]
    _refused([*argv, "--max-steps", 49], capsys, d, "--max-steps must be between --steps (50) and 100000")
    for flag in ("--negative-draws", "--check-draws"):
        for n in ("0", "65"):
            _refused([*argv, flag, n], capsys, d, f"{flag} must be between 1 and 64 (got {n})")
    for w in ("0", "-1", "nan", "101"):
        _refused(
            [*argv, "--key-weight", w],
            capsys,
            d,
            f"--key-weight must be above 0 and at most 100 (got {float(w)})",
        )
    doc = json.loads(setup["keys"].read_text(encoding="utf-8"))
    doc["keys"] = [" FINGERPRINT", *doc["keys"][1:]]
    doc.pop("commitment")
    bare = d / "bare-keys.json"
    bare.write_text(json.dumps(doc), encoding="utf-8")
    _refused(["fpvec", "verify", tiny_zoo / "llama-a", "--keys", bare], capsys, d, "only the trigger word")
    bare.unlink()


def test_verify_of_a_weights_file_and_harm_across_tokenizers_are_refused(
    setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    d = setup["dir"]
    weights = tiny_zoo / "llama-a" / "model.safetensors"
    _refused(
        ["fpvec", "verify", weights, "--keys", setup["keys"]], capsys, d, "needs a Hugging Face model folder"
    )
    if not (tiny_zoo / "stories260k").is_dir():
        pytest.skip("the tiny zoo was built without ../shared/models/stories260K")
    # stories260k's tokenizer cannot spell the corpus: it is scored on its own samples, whose ids
    # mean other tokens to llama-a (this printed +24220% before)
    argv = ["fpvec", "harm", tiny_zoo / "stories260k", tiny_zoo / "llama-a"]
    _refused(argv, capsys, d, "different tokenizers")


def _resealed_vector(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of a vector whose metadata document is edited and sealed again (anyone can)."""
    from huref.fpvec.vector import HASHES_KEY, META_KEY, SEAL_KEY, VOCAB_KEY, seal_of

    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    meta[META_KEY] = json.dumps(edit(json.loads(meta[META_KEY])))
    meta[SEAL_KEY] = seal_of(meta[META_KEY], meta.get(VOCAB_KEY, "null"), meta.get(HASHES_KEY, "{}"))
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])
    return dst


MISTYPED_DOCS = {
    "base-a-string": (lambda doc: {**doc, "base": "llama-a"}, "'base' is not an object"),
    "base-name-a-number": (
        lambda doc: {**doc, "base": {**doc["base"], "name": 12345}},
        "'base.name' is not a string",
    ),
    "doc-a-list": (lambda doc: [doc], "not a JSON object"),
    "commitment-missing": (
        lambda doc: {k: v for k, v in doc.items() if k != "key_commitment"},
        "'key_commitment' is not a string",
    ),
}


@pytest.mark.parametrize("case", list(MISTYPED_DOCS))
def test_a_resealed_vector_with_mistyped_metadata_is_one_line(
    case: str, setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    edit, needle = MISTYPED_DOCS[case]
    d = setup["dir"]
    bad = _resealed_vector(setup["llama-a"], d / f"{case}.fpvec.safetensors", edit)
    try:
        _refused(["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x"], capsys, d, needle)
    finally:
        bad.unlink()


def test_an_audit_refuses_a_mistyped_vector_before_the_work(
    setup: dict,
    tiny_zoo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The base name went into the report as a number and failed the schema after every comparison."""
    import huref.report.audit as audit

    monkeypatch.setattr(audit, "candidate_from_path", lambda *a, **k: pytest.fail("the audit ran"))
    bad = _resealed_vector(
        setup["llama-a"], tmp_path / "v.safetensors", MISTYPED_DOCS["base-name-a-number"][0]
    )
    out = tmp_path / "r" / "report.html"
    argv = [
        "audit",
        tiny_zoo / "llama-a-sft",
        "--base",
        tiny_zoo / "llama-a",
        "--fpvec",
        bad,
        "--keys",
        setup["keys"],
    ]
    _refused([*argv, "-o", out], capsys, tmp_path, "'base.name' is not a string")


def _vector_with_value(src: Path, dst: Path, value: float) -> tuple[Path, str]:
    """A copy of a vector with one tau element set to ``value``, its tensor hash recomputed and
    the metadata sealed again: everything a reader can check still verifies."""
    from huref.fpvec.vector import HASHES_KEY, META_KEY, SEAL_KEY, VOCAB_KEY, seal_of, tensor_digest

    raw = bytearray(src.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    name = next(
        k for k, e in header.items() if k != "__metadata__" and e["dtype"] == "F32" and len(e["shape"]) == 2
    )
    begin, end = header[name]["data_offsets"]
    at = 8 + n + begin
    tensor = torch.frombuffer(raw[at : 8 + n + end], dtype=torch.float32).clone()
    tensor[7] = value
    raw[at : 8 + n + end] = tensor.numpy().tobytes()
    hashes = json.loads(meta[HASHES_KEY])
    hashes[name] = tensor_digest(tensor, json.loads(meta[META_KEY]).get("tensor_hash", "sha256"))
    meta[HASHES_KEY] = json.dumps(hashes)
    meta[SEAL_KEY] = seal_of(meta[META_KEY], meta.get(VOCAB_KEY, "null"), meta[HASHES_KEY])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + bytes(raw[8 + n :]))
    return dst, name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_a_resealed_vector_holding_nan_or_inf_is_refused(
    value: float, setup: dict, tiny_zoo: Path, capsys: pytest.CaptureFixture
) -> None:
    """Anyone can reseal a vector: its hashes and seal then verify, and stamping it wrote a model
    full of NaN weights with exit code 0. Reading refuses it, and stamp checks what it writes
    even when the hashes are not checked."""
    from huref.fpvec.vector import open_vector

    d = setup["dir"]
    bad, name = _vector_with_value(setup["llama-a"], d / "non-finite.fpvec.safetensors", value)
    try:
        with pytest.raises(FPVecError, match="NaN or infinite"):
            open_vector(bad).read(name)
        for extra in ([], ["--no-verify-hashes"]):
            argv = ["fpvec", "stamp", tiny_zoo / "llama-a-sft", bad, "-o", d / "x", *extra]
            _refused(argv, capsys, d, "NaN or infinite")
    finally:
        bad.unlink()


def test_stamp_refuses_to_write_non_finite_weights(
    setup: dict, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A downstream tensor holding inf stays inf plus tau: the stamped model would carry it."""
    model = Path(shutil.copytree(tiny_zoo / "llama-a-sft", tmp_path / "model"))
    sd = load_file(str(model / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    sd[name][0, 0] = float("inf")
    save_file(sd, str(model / "model.safetensors"), metadata={"format": "pt"})
    argv = ["fpvec", "stamp", model, setup["llama-a"], "-o", tmp_path / "out", "--force"]
    line = _refused(argv, capsys, tmp_path, "the stamped values are NaN or infinite")
    assert name in line


def test_a_model_card_nested_too_deep_is_one_line(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """huref_fpvec.json comes with the fingerprinted model: a deeply nested one was a traceback."""
    fp = _perturbed(tiny_zoo / "llama-a", tmp_path / "fp", "c" * 64)
    (fp / "huref_fpvec.json").write_text('{"base": ' + "[" * 100_000 + "]" * 100_000 + "}")
    argv = ["fpvec", "extract", tiny_zoo / "llama-a", fp, "-o", tmp_path / "v.safetensors"]
    _refused(argv, capsys, tmp_path, "nested deeper than 32 levels")
