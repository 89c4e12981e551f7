"""Every number that sizes a loop or an allocation is checked before any work, against a limit the
message states: one ``huref: error:`` line and exit code 2 at once, instead of minutes of work
with growing memory (``make-keys --n 1000000``) or a traceback (``--max-shard-size infMB``).

Each command line names inputs that do not exist: the error must be about the number, which
shows that it was checked before any input was opened.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from huref.cli import main

MISSING = "no-such-model"

BOUNDS = {
    "make-keys-n": (
        ["fpvec", "make-keys", "-o", "{tmp}/k.json", "--n", "1000000", "--vocab", MISSING],
        "200",
    ),
    "make-keys-n-zero": (["fpvec", "make-keys", "-o", "{tmp}/k.json", "--n", "0"], "between 1 and 200"),
    "make-keys-target": (["fpvec", "make-keys", "-o", "{tmp}/k.json", "--target", "x" * 5000], "1000"),
    "verify-decoys": (
        ["fpvec", "verify", MISSING, "--keys", "no-keys.json", "--decoys", "1000000000"],
        "1000",
    ),
    "verify-decoys-negative": (
        ["fpvec", "verify", MISSING, "--keys", "no-keys.json", "--decoys", "-1"],
        "1000",
    ),
    "train-steps": (
        ["fpvec", "train", MISSING, "--keys", "no.json", "-o", "{tmp}/fp", "--steps", "10000000"],
        "100000",
    ),
    "train-regularisation": (
        ["fpvec", "train", MISSING, "--keys", "no.json", "-o", "{tmp}/fp", "--n-regularisation", "99999999"],
        "10000",
    ),
    "train-seed": (
        ["fpvec", "train", MISSING, "--keys", "no.json", "-o", "{tmp}/fp", "--seed", "-3"],
        "2**63 - 1",
    ),
    "fingerprint-n": (["fingerprint", MISSING, "-o", "{tmp}/fp.safetensors", "--n", "1000000"], "8192"),
    "fingerprint-paper-n": (
        ["fingerprint", MISSING, "-o", "{tmp}/fp.safetensors", "--paper-n", "99999"],
        "8192",
    ),
    "compare-n": (["compare", MISSING, MISSING, "--n", "8"], "between 16 and 8192"),
    "registry-add-n": (["registry", "add", MISSING, "--name", "x", "--n", "100000"], "8192"),
    "audit-n": (["audit", MISSING, "-o", "{tmp}/r.html", "--n", "100000"], "8192"),
    "zoo-workers": (["zoo", "build", "{tmp}/zoo", "--workers", "1000000"], "--workers must be between 1 and"),
    "demo-workers": (
        ["demo", "--zoo", "{tmp}/zoo", "--out", "{tmp}/out", "--workers", "1000000"],
        "--workers",
    ),
    "encoder-steps": (["encoder", "train", "-o", "{tmp}/e.safetensors", "--steps", "1000000000"], "100000"),
    "encoder-calibration": (
        ["encoder", "train", "-o", "{tmp}/e.safetensors", "--calibration-models", "1000000000"],
        str(2**18),
    ),
    "encoder-heldout": (
        ["encoder", "train", "-o", "{tmp}/e.safetensors", "--heldout-models", "1000000000"],
        "100000",
    ),
    "dog-size": (["dog", MISSING, "-o", "{tmp}/d.png", "--size", "100000"], "4096"),
}

SHARD_SIZES = ["nanGB", "infMB", "1e400GB", "-5GB", "0GB", "2TB", "999KB", "abc", "5 parsecs", ""]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> str:
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(argv) == 2
    seconds = time.perf_counter() - t0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huref: error:"), captured.err
    assert needle in lines[0], lines[0]
    assert seconds < 5, f"took {seconds:.1f} s: the bound was not checked first"
    return lines[0]


@pytest.mark.parametrize("case", list(BOUNDS))
def test_sizes_are_bounded_before_any_work(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template, needle = BOUNDS[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in template]
    _refused(argv, capsys, needle)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("size", SHARD_SIZES)
def test_max_shard_size_must_be_a_finite_size_in_range(
    size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "fpvec",
        "stamp",
        MISSING,
        "no-vector.safetensors",
        "-o",
        str(tmp_path / "out"),
        "--max-shard-size",
        size,
    ]
    line = _refused(argv, capsys, "--max-shard-size")
    assert "1MB..1TB" in line or "cannot read size" in line


def test_parse_size_reads_units_and_keeps_bytes_exact() -> None:
    from huref.checkpoint.writer import parse_size

    assert parse_size("5GB") == 5 * 10**9
    assert parse_size(" 1.5 gib") == 3 * 2**29
    assert parse_size("1TB") == 10**12 and parse_size("1MB") == 10**6


def test_verify_bounds_keys_times_decoys_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exact rank test costs (keys x decoys)^2: 100 keys allow at most 100 decoys."""
    from huref.fpvec.keys import make_keys, save_keys

    keys = save_keys(make_keys(100, seed=1), tmp_path / "keys.json")
    line = _refused(["fpvec", "verify", MISSING, "--keys", str(keys), "--decoys", "101"], capsys, "10000")
    assert "at most 100 decoys" in line


def test_key_files_are_bounded_in_keys_and_key_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file is someone else's file too: each key is a prompt trained on at every step."""
    from huref.fpvec.keys import make_keys, save_keys

    path = save_keys(make_keys(3, seed=1), tmp_path / "keys.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.pop("commitment")
    for edit, needle in (
        ({"keys": [f"key {i} FINGERPRINT" for i in range(201)]}, "at most 200"),
        ({"keys": ["x" * 1001 + " FINGERPRINT"]}, "at most 1000 characters"),
        ({"target": "t" * 1001}, "longer than 1000"),
    ):
        path.write_text(json.dumps({**doc, **edit}), encoding="utf-8")
        _refused(["fpvec", "verify", MISSING, "--keys", str(path)], capsys, needle)
