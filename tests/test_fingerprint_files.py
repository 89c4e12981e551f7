"""Fingerprint files: round trip, CLI compare from files, and refused inputs (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main
from huref.errors import FingerprintError
from huref.invariants import (
    Settings,
    compare_fingerprints,
    fingerprint_model,
    load_fingerprint,
    save_fingerprint,
)
from huref.invariants.fpfile import META_KEY


def _fp(zoo: Path, name: str, tmp: Path, modes: str = "robust,paper") -> Path:
    out = tmp / f"{name}-{modes.replace(',', '-')}.safetensors"
    assert main(["fingerprint", str(zoo / name), "-o", str(out), "--modes", modes]) == 0
    return out


def test_round_trip_preserves_comparison(tiny_zoo: Path, tmp_path: Path) -> None:
    fa = fingerprint_model(tiny_zoo / "llama-a", Settings())
    fb = fingerprint_model(tiny_zoo / "llama-a-sft", Settings())
    pa, pb = (
        save_fingerprint(fa, tmp_path / "a.safetensors"),
        save_fingerprint(fb, tmp_path / "b.safetensors"),
    )
    c0 = compare_fingerprints(fa, fb)
    c1 = compare_fingerprints(load_fingerprint(pa), load_fingerprint(pb))
    assert c1.verdict == c0.verdict == "derived"
    assert abs(c1.ics - c0.ics) < 1e-3 and abs(c1.ics_paper - c0.ics_paper) < 1e-3
    assert c1.layer_alignment == c0.layer_alignment
    meta = load_fingerprint(pa).meta
    assert meta["model"]["sha256"] and meta["architecture"]["n_layers"] == 4


def test_cli_compare_json_from_files_has_documented_fields(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = _fp(tiny_zoo, "llama-a", tmp_path), _fp(tiny_zoo, "llama-b", tmp_path)
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--json", "--no-registry"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ics", "ics_paper", "pcs", "z", "p_value", "layer_alignment", "verdict"):
        assert key in out
    assert out["pcs"] is None  # no weights behind fingerprint files
    assert out["verdict"] == "independent"
    assert (
        main(["compare", str(a), str(tiny_zoo / "llama-a-cpt"), "--fail-on", "derived", "--no-registry"]) == 1
    )


def _expect_refusal(args: list[str], capsys: pytest.CaptureFixture, needle: str) -> None:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error:"), err
    assert needle in err[0], err[0]


def _rewrite_metadata(src: Path, dst: Path, edit) -> None:
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = edit(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])


def test_tampered_fingerprint_is_refused(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = _fp(tiny_zoo, "llama-a", tmp_path)
    bad = tmp_path / "tampered.safetensors"
    raw = bytearray(a.read_bytes())
    raw[-3] ^= 0xFF  # one byte of the last tensor
    bad.write_bytes(bytes(raw))
    _expect_refusal(["compare", str(bad), str(a)], capsys, "seal does not verify")


def test_fingerprint_from_other_version_is_refused(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = _fp(tiny_zoo, "llama-a", tmp_path)
    old = tmp_path / "old.safetensors"

    def edit(meta: dict) -> dict:
        doc = json.loads(meta[META_KEY])
        doc["format"] = "huref-fingerprint/0"
        meta[META_KEY] = json.dumps(doc)
        return meta

    _rewrite_metadata(a, old, edit)
    _expect_refusal(["compare", str(old), str(a)], capsys, "recompute it")


def test_mismatched_modes_are_refused(tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    r = _fp(tiny_zoo, "llama-a", tmp_path, "robust")
    p = _fp(tiny_zoo, "llama-a-sft", tmp_path, "paper")
    _expect_refusal(["compare", str(r), str(p)], capsys, "mismatched modes")


def test_models_without_shared_tokens_are_refused(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if not (tiny_zoo / "stories260k").is_dir():
        pytest.skip("stories260K is not available outside this project's CI")
    a = _fp(tiny_zoo, "llama-a", tmp_path)
    s = _fp(tiny_zoo, "stories260k", tmp_path)
    _expect_refusal(["compare", str(a), str(s)], capsys, "share only 0")


def test_fingerprint_output_name_is_checked_and_nothing_written(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _expect_refusal(
        ["fingerprint", str(tiny_zoo / "llama-a"), "-o", str(tmp_path / "fp.bin")], capsys, ".safetensors"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda doc: [1, 2], "corrupt fingerprint metadata (not a JSON object)"),
        (lambda doc: {**doc, "robust": "x"}, "corrupt fingerprint"),
        (
            lambda doc: {**doc, "robust": {**doc["robust"], "layers": doc["robust"]["layers"][:1]}},
            "robust terms",
        ),
        (lambda doc: {**doc, "model": "llama-a"}, "'model' is not an object"),
        (lambda doc: {**doc, "model": {**doc["model"], "name": 7}}, "'model.name' is not a string"),
        (
            lambda doc: {**doc, "architecture": {**doc["architecture"], "n_layers": "four"}},
            "'architecture.n_layers' is not a count",
        ),
        (
            lambda doc: {**doc, "responses": {**doc["responses"], "views": "gate"}},
            "'responses.views' is not two names",
        ),
        (
            lambda doc: {**doc, "robust": {**doc["robust"], "tokens": 5}},
            "'robust.tokens' is not a list of strings",
        ),
    ],
    ids=[
        "not-an-object",
        "mode-not-an-object",
        "terms-disagree-with-layers",
        "model-a-string",
        "name-a-number",
        "n-layers-a-word",
        "views-a-string",
        "tokens-a-number",
    ],
)
def test_a_resealed_inconsistent_fingerprint_is_one_line(
    edit: Any, needle: str, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The seal catches accidents, not forgers (anyone can recompute it): a file rewritten with a
    fresh seal must still be refused with one line when its content does not hang together."""
    from safetensors.torch import load_file

    from huref.invariants.fpfile import SEAL_KEY, _seal

    a = _fp(tiny_zoo, "llama-a", tmp_path)
    tensors = load_file(str(a))
    bad = tmp_path / "resealed.safetensors"

    def reseal(meta: dict) -> dict:
        meta[META_KEY] = json.dumps(edit(json.loads(meta[META_KEY])))
        meta[SEAL_KEY] = _seal(meta[META_KEY], tensors)
        return meta

    _rewrite_metadata(a, bad, reseal)
    _expect_refusal(["compare", str(bad), str(a)], capsys, needle)
    with pytest.raises(FingerprintError, match="corrupt fingerprint"):  # the API refuses it too
        load_fingerprint(bad)


def _reseal_tensors(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of a fingerprint file with its tensors edited and a fresh seal."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from huref.invariants.fpfile import SEAL_KEY, _seal

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    edit(tensors)
    meta[SEAL_KEY] = _seal(meta[META_KEY], tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def llama_a_file(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fp(tiny_zoo, "llama-a", tmp_path_factory.mktemp("fp"))


NON_FINITE_EDITS = {
    "robust-terms-inf": (
        lambda t: t["robust.terms"][1, 0, 0].__setitem__(0, float("inf")),
        "robust attn_qk term of layer 1",
    ),
    "paper-terms-nan": (lambda t: t["paper.terms"][1].fill_(float("nan")), "paper attn_qk term of layer 3"),
    "responses-nan": (
        lambda t: t["responses.2.b"].__setitem__((0, 0), float("nan")),
        "up responses of layer 2",
    ),
}


@pytest.mark.parametrize("case", list(NON_FINITE_EDITS))
def test_a_resealed_fingerprint_with_non_finite_numbers_is_one_line(
    case: str, llama_a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """NaN or infinity in any tensor has no similarity to give (it crashed the layer alignment and
    the neuron matching, and a NaN paper ICS reached report.json): refused when the file is read."""
    edit, where = NON_FINITE_EDITS[case]
    bad = _reseal_tensors(llama_a_file, tmp_path / "bad.safetensors", edit)
    _expect_refusal(
        ["compare", str(bad), str(llama_a_file)], capsys, f"NaN or infinite values in the {where}"
    )


def test_an_audit_against_a_fingerprint_with_nan_terms_writes_no_report(
    tiny_zoo: Path, llama_a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _reseal_tensors(llama_a_file, tmp_path / "bad.safetensors", NON_FINITE_EDITS["paper-terms-nan"][0])
    out = tmp_path / "r" / "report.html"
    argv = ["audit", str(tiny_zoo / "llama-a-sft"), "--base", str(bad), "--no-dogs", "-o", str(out)]
    _expect_refusal(argv, capsys, "NaN or infinite values in the paper")
    assert not out.parent.exists()


def test_a_fingerprint_built_in_python_with_nan_terms_is_not_compared(llama_a_file: Path) -> None:
    fp = load_fingerprint(llama_a_file)
    assert fp.robust is not None
    fp.robust.terms[0, 2, 1, 1] = float("nan")
    with pytest.raises(FingerprintError, match="NaN or infinite values in the robust ffn term of layer 0"):
        compare_fingerprints(fp, load_fingerprint(llama_a_file))


def test_tokens_with_lone_surrogates_fingerprint_and_round_trip(tmp_path: Path) -> None:
    """Token strings decoded from bytes can hold lone surrogates: the file is sealed and read back."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from formatkit import tiny_llama

    from huref.invariants import compare_fingerprints, fingerprint_model, load_fingerprint, save_fingerprint
    from huref.invariants.extract import Settings

    model, _ = tiny_llama()
    model.save_pretrained(tmp_path / "m")
    vocab = {f"t{i}": i for i in range(95)} | {"x\ud800": 95}
    doc = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []}
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(doc))
    fp = fingerprint_model(tmp_path / "m", Settings(n=96, paper_n=96))
    assert any("\ud800" in t for t in fp.robust.token_strings)  # type: ignore[union-attr]
    back = load_fingerprint(save_fingerprint(fp, tmp_path / "fp.safetensors"))
    assert back.robust is not None and back.robust.token_strings == fp.robust.token_strings  # type: ignore[union-attr]
    from safetensors import safe_open

    with safe_open(
        str(tmp_path / "fp.safetensors"), framework="pt"
    ) as f:  # the reference parser reads it too
        assert f.metadata()
    assert compare_fingerprints(back, fp).ics == pytest.approx(100.0)
