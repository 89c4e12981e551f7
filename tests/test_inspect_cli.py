"""``huref inspect MODEL --json`` describes a checkpoint truthfully: its architecture, the shape of
every role, a parameter count equal to the sum of the stored tensors' sizes, and each weight
file with the SHA-256 that hashlib computes on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from formatkit import tiny_llama, write_gguf, write_llama2c
from safetensors import safe_open
from typer.testing import CliRunner

from huref.cli import app, main
from huref.cli.app import _register

_register()  # sub-commands register themselves on import, as main() does


def _build(layout: str, tmp: Path) -> tuple[Path, int]:
    """A checkpoint and its parameter count, counted independently of huref."""
    model, sd = tiny_llama(tie=layout == "tied")
    if layout in ("sharded", "tied"):
        path = tmp / layout
        model.save_pretrained(path, max_shard_size="40KB" if layout == "sharded" else "1GB")
        n = 0
        for f in path.glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as st:
                n += sum(_prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
        return path, n
    n = sum(v.numel() for v in sd.values())
    if layout == "gguf":
        return write_gguf(tmp / "m.gguf", sd, model.config, qtype="Q8_0"), n
    return write_llama2c(tmp / "m.bin", sd, model.config), n


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@pytest.mark.parametrize("layout", ["sharded", "tied", "gguf", "llama2c"])
def test_inspect_json_reports_architecture_roles_parameters_and_hashes(layout: str, tmp_path: Path) -> None:
    path, n_params = _build(layout, tmp_path)
    r = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)

    assert info["architecture"] == "llama" and info["model_type"] == "llama"
    assert (
        info["format"]
        == {"sharded": "hf-safetensors", "tied": "hf-safetensors", "gguf": "gguf", "llama2c": "llama2c"}[
            layout
        ]
    )
    c = info["config"]
    assert (c["n_layers"], c["d_model"], c["n_heads"], c["n_kv_heads"], c["head_dim"], c["d_ff"]) == (
        2,
        32,
        4,
        2,
        8,
        64,
    )
    assert c["tied_embeddings"] is (layout == "tied")
    assert info["roles"]["layer_0"] == {
        "attn_q": [32, 32],
        "attn_k": [16, 32],
        "attn_v": [16, 32],
        "attn_o": [32, 32],
        "mlp_gate": [64, 32],
        "mlp_up": [64, 32],
        "mlp_down": [32, 64],
        "attn_norm": [32],
        "mlp_norm": [32],
    }
    want_global = {"embed": [96, 32], "final_norm": [32]} | (
        {} if layout == "tied" else {"lm_head": [96, 32]}
    )
    assert info["roles"]["global"] == want_global
    assert info["parameters"] == n_params
    assert info["values_checked"] is False

    files = {f["name"]: f for f in info["files"]}
    on_disk = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    assert sorted(files) == sorted(p.name for p in on_disk)
    if layout == "sharded":
        assert len(files) > 1
    for p in on_disk:
        assert files[p.name]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert files[p.name]["bytes"] == p.stat().st_size


def test_inspect_options_skip_hashes_and_check_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _build("sharded", tmp_path)
    assert main(["inspect", str(path), "--json", "--no-hash", "--check-values"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["values_checked"] is True
    assert all("sha256" not in f for f in info["files"])


def test_inspect_text_output_names_the_essentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, n_params = _build("gguf", tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture llama" in out and f"parameters {n_params:,}" in out
    assert hashlib.sha256(path.read_bytes()).hexdigest() in out
    assert "attn_q" in out and "mlp_down" in out


def test_text_output_prints_bracketed_names_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rich would read ``[/x]`` in a folder name as a closing style tag and fail after the work
    was done, and drop ``[chat]`` from a model name; the CLI prints both as they are."""
    path, _ = _build("tied", tmp_path)
    odd = tmp_path / "[/x]" / "m [chat]"
    odd.parent.mkdir(parents=True)
    path.rename(odd)
    assert main(["inspect", str(odd)]) == 0
    assert f"{odd}  (hf-safetensors)" in capsys.readouterr().out
    assert main(["compare", str(odd), str(odd), "--no-pcs"]) == 0
    out = capsys.readouterr().out
    assert "m [chat] vs m [chat]" in out and "verdict: " in out


def test_help_shows_bracketed_defaults() -> None:
    """Help texts are read as markup too: a ``[default: ...]`` would vanish from the page."""
    r = CliRunner().invoke(app, ["fpvec", "make-keys", "--help"])
    words = " ".join(r.output.replace("│", " ").split())
    assert "The answer every key maps to (default: ハリネズミ; 4 words with --vocab)." in words
