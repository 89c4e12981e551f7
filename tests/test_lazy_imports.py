"""Commands answered from caches never import torch or transformers (issue: whole-process speed).

A second scan of an unchanged zoo, the registry's listing, --help and --version are run as whole
processes under ``python -X importtime`` and every module they import is read from its report;
none may be a tensor or model library. The torch-free modules those commands rest on are each
imported alone in a fresh interpreter, so a stray top-level import is caught where it is added.

Commands answered from fingerprint files (``huref compare a.fp b.fp``, ``huref registry add x.fp``)
compute with numpy and scipy, and read the files with safetensors' numpy interface; they import
no torch, transformers or other model library either. ``huref dog a.fp`` (the dog vector and the
default renderer's PNG) computes the canonical stack and the encoder in numpy and draws with
Pillow: no torch or transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from huref.invariants import Settings, fingerprint_model, save_fingerprint
from huref.registry.enroll import add_base
from huref.registry.store import Store
from huref.scan import ScanConfig, run_scan

HEAVY = ("torch", "transformers", "safetensors", "numpy", "scipy", "peft", "huggingface_hub", "PIL")
# what commands answered from fingerprint files may not import (they compute with numpy and scipy)
MODEL_LIBS = ("torch", "transformers", "peft", "huggingface_hub", "PIL")

# modules that cached commands import; each must stay importable without the heavy libraries
TORCH_FREE = (
    "huref.cli.app",
    "huref.lazy",
    "huref.invariants",
    "huref.invariants.settings",
    "huref.invariants.calibration",
    "huref.invariants.verdict",
    "huref.invariants.tokens",
    "huref.invariants.fingerprint",
    "huref.checkpoint",
    "huref.checkpoint.files",
    "huref.checkpoint.safetensors_header",
    "huref.checkpoint.atomic",
    "huref.checkpoint.vocab",
    "huref.arch",
    "huref.registry.store",
    "huref.scan",
    "huref.scan.runner",
    "huref.scan.results",
    "huref.scan.html",
)

# modules that commands on fingerprint files import; numpy, scipy and safetensors are allowed
NUMPY_ONLY = (
    "huref.invariants.fpfile",
    "huref.invariants.similarity",
    "huref.invariants.stats",
    "huref.invariants.compare",
    "huref.invariants.resolve",
    "huref.registry.enroll",
    "huref.registry.sketch",
    "huref.cli.science_cmds",
    "huref.cli.registry_cmd",
    "huref.encoder.canonical",
    "huref.encoder.infer",
    "huref.encoder.weights",
)

# what ``huref dog a.fp`` may not import: it draws with Pillow, the rest as above
DOG_FORBIDDEN = ("torch", "transformers", "peft", "huggingface_hub")
# modules the dog of a fingerprint file rests on, each importable without them
DOG_MODULES = ("huref.dogs", "huref.render", "huref.render.sketch", "huref.render.sheet")


def imported_modules(
    argv: list[str], env: dict[str, str], cwd: Path
) -> tuple[set[str], subprocess.CompletedProcess]:
    """Top-level names of every module a whole ``python -X importtime`` process imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mod = line.rsplit("|", 1)[1].strip()
            if mod and mod != "package":
                names.add(mod.split(".")[0])
    assert "huref" in names, proc.stderr[-2000:]
    return names, proc


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HUREF_HOME"] = str(home)
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture(scope="module")
def scanned(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(zoo, home, out): a two-model zoo scanned once against a registry of one base."""
    tmp = tmp_path_factory.mktemp("lazy")
    zoo = tmp / "zoo"
    zoo.mkdir()
    for name in ("llama-a-sft", "llama-b"):
        (zoo / name).symlink_to(tiny_zoo / name, target_is_directory=True)
    home = tmp / "home"
    with Store(home) as s:
        add_base(s, tiny_zoo / "llama-a", "llama-a", settings=Settings(modes=("robust",)))
    out = tmp / "out"
    run_scan(ScanConfig(zoo, out, workers=1, home=home, progress=False))
    return zoo, home, out


def test_a_second_scan_as_a_whole_process_imports_no_tensor_library(scanned: tuple[Path, Path, Path]) -> None:
    zoo, home, out = scanned
    before = json.loads((out / "results.json").read_text())
    names, proc = imported_modules(
        ["-m", "huref", "scan", str(zoo), "-o", str(out), "--no-progress"], _env(home), zoo.parent
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 cached" in proc.stderr, proc.stderr[-2000:]  # answered from the cache, nothing recomputed
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    after = json.loads((out / "results.json").read_text())
    assert [(m["name"], m["verdict"], m.get("best_base")) for m in after["models"]] == [
        (m["name"], m["verdict"], m.get("best_base")) for m in before["models"]
    ]
    verdicts = {m["name"]: m["verdict"] for m in after["models"]}
    assert verdicts == {"llama-a-sft": "derived", "llama-b": "independent"}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["registry", "list"], ["scan", "--help"]])
def test_registry_listing_help_and_version_import_no_tensor_library(
    argv: list[str], scanned: tuple[Path, Path, Path]
) -> None:
    _, home, _ = scanned
    names, proc = imported_modules(["-m", "huref", *argv], _env(home), home.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    if argv == ["registry", "list"]:
        assert "llama-a" in proc.stdout


@pytest.mark.parametrize("module", TORCH_FREE)
def test_each_module_cached_commands_rest_on_imports_alone_without_tensor_libraries(
    module: str, tmp_path: Path
) -> None:
    names, proc = imported_modules(["-c", f"import {module}"], dict(os.environ), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(HEAVY), f"{module} imports {sorted(names & set(HEAVY))}"


@pytest.mark.parametrize("module", NUMPY_ONLY)
def test_each_module_commands_on_fingerprint_files_rest_on_imports_without_torch(
    module: str, tmp_path: Path
) -> None:
    names, proc = imported_modules(["-c", f"import {module}"], dict(os.environ), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(MODEL_LIBS), f"{module} imports {sorted(names & set(MODEL_LIBS))}"


@pytest.fixture(scope="module")
def fp_files(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fingerprint files (robust and paper terms, neuron responses) of three zoo models."""
    tmp = tmp_path_factory.mktemp("lazy-fp")
    files = {}
    for name in ("llama-a", "llama-a-sft", "llama-b"):
        files[name] = save_fingerprint(
            fingerprint_model(tiny_zoo / name, Settings()), tmp / f"{name}.safetensors"
        )
    return files


def test_compare_of_two_fingerprint_files_as_a_whole_process_imports_no_torch(
    fp_files: dict[str, Path], tmp_path: Path
) -> None:
    argv = ["-m", "huref", "compare", str(fp_files["llama-a"]), str(fp_files["llama-a-sft"]), "--json"]
    names, proc = imported_modules(argv, _env(tmp_path / "home"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(MODEL_LIBS), sorted(names & set(MODEL_LIBS))
    out = json.loads(proc.stdout)
    assert out["verdict"] == "derived" and out["ics"] > 80 and out["log10_p_value"] < -6  # computed
    assert out["ics_paper"] is not None and out["layer_tests"]


def test_registry_add_of_a_fingerprint_file_as_a_whole_process_imports_no_torch(
    fp_files: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with Store(home) as s:
        add_base(s, fp_files["llama-b"], "llama-b", family="b")
    argv = ["-m", "huref", "registry", "add", str(fp_files["llama-a"]), "--name", "llama-a", "--family", "a"]
    names, proc = imported_modules(argv, _env(home), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(MODEL_LIBS), sorted(names & set(MODEL_LIBS))
    assert "independent pair llama-a / llama-b" in proc.stderr  # the pair was compared, in numpy
    with Store(home) as s:
        assert {b.name for b in s.bases()} == {"llama-a", "llama-b"}
        base = s.require("llama-a")
        assert s.load_base(base).robust is not None


@pytest.mark.parametrize("module", DOG_MODULES)
def test_each_module_the_dog_of_a_fingerprint_file_rests_on_imports_without_torch(
    module: str, tmp_path: Path
) -> None:
    names, proc = imported_modules(["-c", f"import {module}"], dict(os.environ), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(DOG_FORBIDDEN), f"{module} imports {sorted(names & set(DOG_FORBIDDEN))}"


def test_dog_of_a_fingerprint_file_as_a_whole_process_imports_no_torch(
    fp_files: dict[str, Path], tmp_path: Path
) -> None:
    """--json and a PNG from the default renderer; z must be the torch encoder's, to float
    rounding, so the numpy path is the same dog and not merely some vector."""
    import numpy as np
    from PIL import Image

    png = tmp_path / "dog.png"
    argv = ["-m", "huref", "dog", str(fp_files["llama-a"]), "--json", "-o", str(png), "--size", "64"]
    names, proc = imported_modules(argv, _env(tmp_path / "home"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(DOG_FORBIDDEN), sorted(names & set(DOG_FORBIDDEN))
    z = np.asarray(json.loads(proc.stdout)["z"])
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (64, 64)

    import torch

    from huref.encoder.canonical import canonical_stack
    from huref.encoder.weights import load_encoder
    from huref.invariants import load_fingerprint

    stack = torch.as_tensor(canonical_stack(load_fingerprint(fp_files["llama-a"])))[None]
    with torch.no_grad():
        z_torch = load_encoder()(stack)[0].numpy()
    assert z.shape == (512,) and np.abs(z - z_torch).max() < 2e-5


def test_lazy_package_exports_resolve_to_their_defining_modules() -> None:
    import huref.arch
    import huref.checkpoint
    import huref.invariants
    from huref.arch.model import load_model
    from huref.checkpoint.open import open_checkpoint
    from huref.invariants.compare import compare_fingerprints

    assert huref.invariants.compare_fingerprints is compare_fingerprints
    assert huref.checkpoint.open_checkpoint is open_checkpoint
    assert huref.arch.load_model is load_model
    assert {"Settings", "Fingerprint", "fingerprint_model"} <= set(dir(huref.invariants))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = huref.invariants.nothing_here  # type: ignore[attr-defined]
