"""``--device``: only cpu, cuda, cuda:N (an existing GPU) and auto are accepted, each checked
before any work; on a GPU the fingerprint is the one the CPU computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from formatkit import tiny_llama

from huref.cli import main
from huref.device import resolve_device
from huref.errors import UsageError

SMALL = ["--n", "16", "--paper-n", "16"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("device")
    tiny_llama()[0].save_pretrained(root / "model")
    return root / "model"


@pytest.mark.parametrize("device", ["foo", "meta", "mps", "cpu:5", "cuda:x", "CPU", ""])
def test_unknown_devices_are_refused_before_any_work(
    model: Path, tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fp.safetensors"
    for args in (
        ["fingerprint", str(model), "-o", str(out), "--device", device, *SMALL],
        ["compare", str(model), str(model), "--device", device, *SMALL],
    ):
        capsys.readouterr()
        assert main(args) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("huref: error: --device"), captured.err
        assert captured.out == ""
    assert not out.exists()


def test_device_names_resolve_only_to_existing_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="no GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="no such GPU"):
        resolve_device("cuda:2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fingerprint_on_the_gpu_matches_the_cpu(model: Path) -> None:
    """The norms' gains are read onto the CPU with the layer; the GPU run must move them too."""
    from huref.invariants import Settings, fingerprint_model

    cpu = fingerprint_model(model, Settings(n=16, paper_n=16, device="cpu"))
    gpu = fingerprint_model(model, Settings(n=16, paper_n=16, device="cuda:0"))
    for a, b in ((cpu.robust, gpu.robust), (cpu.paper, gpu.paper)):
        assert a is not None and b is not None and a.token_ids == b.token_ids
        assert torch.allclose(a.terms.float(), b.terms.float(), atol=2e-2)
