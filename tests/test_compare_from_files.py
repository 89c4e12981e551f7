"""Comparing fingerprint files gives the comparison of the models themselves.

Fingerprint files are read into numpy arrays without torch; fingerprints just extracted from
weights hold torch tensors. Both go through the same numpy statistics, and ``huref compare`` must
print the same JSON for two model folders as for their two fingerprint files: every figure equal
within float rounding, the same layer alignment, neuron tests and verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main
from huref.invariants import load_fingerprint, save_fingerprint

MODELS = ("llama-a", "llama-a-sft", "llama-a-prune-depth", "llama-b", "gpt2-a", "gpt2-a-sft")
PAIRS = [
    ("llama-a", "llama-a-sft", "derived"),  # gated FFN: gate/up views
    ("llama-a", "llama-a-prune-depth", "derived"),  # fewer layers: the alignment skips one
    ("gpt2-a", "gpt2-a-sft", "derived"),  # plain FFN: in/out views, signed second view
    ("llama-a", "llama-b", "independent"),
]


@pytest.fixture(scope="module")
def fp_files(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fps")
    files = {}
    for name in MODELS:
        files[name] = out / f"{name}.safetensors"
        assert main(["fingerprint", str(tiny_zoo / name), "-o", str(files[name])]) == 0
    return files


def _compare_json(a: Path, b: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--json", "--no-registry", "--no-pcs"]) == 0
    return json.loads(capsys.readouterr().out)


def _differences(x: Any, y: Any, where: str = "") -> list[str]:
    """Where two JSON values differ: floats beyond rel 1e-6, anything else at all."""
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return [f"{where}: keys {sorted(set(x) ^ set(y))}"]
        return [d for k in x for d in _differences(x[k], y[k], f"{where}.{k}")]
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return [f"{where}: {len(x)} vs {len(y)} items"]
        return [
            d for i, (u, v) in enumerate(zip(x, y, strict=True)) for d in _differences(u, v, f"{where}[{i}]")
        ]
    if isinstance(x, float) and isinstance(y, (int, float)) and not isinstance(y, bool):
        return [] if math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) else [f"{where}: {x!r} vs {y!r}"]
    return [] if x == y and type(x) is type(y) else [f"{where}: {x!r} vs {y!r}"]


@pytest.mark.parametrize(("a", "b", "verdict"), PAIRS, ids=[f"{a}-vs-{b}" for a, b, _ in PAIRS])
def test_compare_of_fingerprint_files_equals_compare_of_the_models(
    a: str,
    b: str,
    verdict: str,
    tiny_zoo: Path,
    fp_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from_models = _compare_json(tiny_zoo / a, tiny_zoo / b, capsys)
    from_files = _compare_json(fp_files[a], fp_files[b], capsys)
    assert from_models["verdict"] == from_files["verdict"] == verdict
    assert from_files["ics"] is not None and from_files["ics_paper"] is not None
    if a != "llama-a" or b != "llama-b":  # related pairs have neuron tests to compare
        assert from_files["layer_tests"] and from_files["log10_p_value"] < -6
    assert _differences(from_models, from_files) == []


def test_a_fingerprint_read_from_its_file_writes_the_same_file_back(
    fp_files: dict[str, Path], tmp_path: Path
) -> None:
    """Reading into numpy and writing back loses nothing: same metadata, tensors and seal, byte for byte."""
    src = fp_files["gpt2-a-sft"]
    fp = load_fingerprint(src)
    assert fp.robust is not None and fp.responses is not None
    assert type(fp.robust.terms).__module__ == "numpy" and fp.robust.terms.dtype.name == "float16"
    again = save_fingerprint(fp, tmp_path / "again.safetensors")
    assert again.read_bytes() == src.read_bytes()


def test_an_extracted_fingerprint_with_an_infinite_response_is_not_compared(
    tiny_zoo: Path, fp_files: dict[str, Path]
) -> None:
    """The finiteness guard reads torch tensors (just extracted) as well as numpy arrays (read)."""
    from huref.errors import FingerprintError
    from huref.invariants import Settings, compare_fingerprints, fingerprint_model

    fp = fingerprint_model(tiny_zoo / "llama-a", Settings(modes=("robust",)))
    assert fp.responses is not None and type(fp.responses.b[1]).__module__.startswith("torch")
    fp.responses.b[1][0, 0] = float("inf")
    with pytest.raises(FingerprintError, match="NaN or infinite values in the up responses of layer 1"):
        compare_fingerprints(fp, load_fingerprint(fp_files["llama-a"]))
