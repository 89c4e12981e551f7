"""An error is one printable line on stderr, whatever it quotes: names and paths with newlines or
terminal escape codes are escaped, and warnings of the libraries huref calls add no lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from huref.cli import main

HOSTILE = "a\nb\x1b[31mred\x07"  # a newline, a colour code and a bell in one file name


def _one_printable_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    line = err[:-1]
    assert line.startswith("huref: error:"), line
    assert line.isprintable(), repr(line)  # no ESC, BEL, CR or other control character left
    return line


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fpvec", "verify", "no-such-model", "--keys", "{bad}/keys.json"], "a\\nb\\x1b[31mred\\x07"),
        (
            ["fingerprint", "{bad}/model", "-o", "{tmp}/fp.safetensors", "--modes", "robust", "--n", "16"],
            "a\\nb\\x1b[31mred\\x07",
        ),
        # click quotes an unknown option its own way; the line must still be one printable line
        (["fpvec", "verify", "no-such-model", "--keys", "k.json", "--{hostile}"], "No such option"),
    ],
    ids=["huref-error", "missing-model", "unknown-option"],
)
def test_error_lines_escape_newlines_and_terminal_codes(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / HOSTILE
    args = [a.format(bad=bad, tmp=tmp_path, hostile=HOSTILE) for a in argv]
    capsys.readouterr()
    assert main(args) == 2
    line = _one_printable_line(capsys.readouterr().err)
    assert needle in line and "red" in line  # the name is still there, escaped


def test_a_system_error_naming_a_hostile_path_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3 quotes the file the system refused (here: a folder that is a file)."""
    blocker = tmp_path / HOSTILE
    blocker.write_text("a file where a folder is needed")
    capsys.readouterr()
    assert main(["fpvec", "make-keys", "-o", str(blocker / "keys.json"), "--n", "2", "--seed", "1"]) == 3
    line = _one_printable_line(capsys.readouterr().err)
    assert "system error" in line and "a\\nb\\x1b[31mred" in line


def test_a_library_warning_on_a_bad_input_stays_off_the_error_line(tmp_path: Path) -> None:
    """A TorchScript archive named pytorch_model.bin makes torch.load warn (a UserWarning of two
    lines) before it refuses the file: stderr held three lines."""
    import torch

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(model / "pytorch_model.bin"))
    env = {**os.environ, "PYTHONWARNINGS": "always"}  # as a user who asks Python to show every warning
    r = subprocess.run(
        [sys.executable, "-m", "huref", "inspect", str(model)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2, r.stderr
    line = _one_printable_line(r.stderr)
    assert "TorchScript" in line and "UserWarning" not in r.stderr
