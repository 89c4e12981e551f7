"""A writer killed outright (SIGKILL) cannot clean up after itself: the next run of the same
writer into the same place removes what it left, and nothing else.

The killed runs here are real: ``huref fingerprint -o`` and ``huref fpvec stamp`` in a child
process, stopped with SIGKILL while their temporary output is open and half written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from huref.checkpoint import atomic as A
from huref.cli import main

# Runs the CLI with its tensor producer stalled after the first tensor: by then the temporary
# file (or folder) exists and holds a header, which is what a kill at a random moment leaves.
_STALLED = """
import sys, time
import huref.checkpoint.writer as W
real = W.write_safetensors_file
def stalled(path, plan, produce, metadata=None):
    def first_then_wait(p):
        t = produce(p)
        print("WRITING", flush=True)
        time.sleep(600)
        return t
    return real(path, plan, first_then_wait, metadata)
W.write_safetensors_file = stalled
from huref.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_mid_write(argv: list[str]) -> None:
    """Run ``huref ARGV`` in a child process and SIGKILL it once it is writing its output."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # EOF (the child failed) ends this as well
        assert line.strip() == "WRITING", proc.communicate(timeout=60)[1][-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp(
    dest: Path, pid: int, host: str | None = None, token: str = "0123456789ab", folder: bool = False
) -> Path:
    p = dest.parent / f".{dest.name}.tmp-huref-{pid}-{host or A._HOST}-{token}"
    if folder:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"partial")
    else:
        p.write_bytes(b"partial")
    return p


def test_only_temporaries_of_dead_writers_to_the_same_destination_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "fp.safetensors"
    dead, live = _dead_pid(), os.getppid()
    day_ago = time.time() - A.STALE_AFTER_S - 60
    removed = [
        _temp(dest, dead),
        _temp(dest, dead, token="ba9876543210", folder=True),
        tmp_path / f".{dest.name}.tmp-{dead}-0123456789ab",  # an older huref's name, a day old
        _temp(dest, live, host="ffffff"),  # another machine's, untouched for a day
    ]
    removed[2].write_bytes(b"partial")
    for p in removed[2:]:
        os.utime(p, (day_ago, day_ago))
    kept = [
        _temp(dest, live),  # a writer still running
        _temp(dest, os.getpid()),  # this very process
        _temp(dest, dead, host="ffffff"),  # another machine's pid says nothing here; it is fresh
        _temp(tmp_path / "other.safetensors", dead),  # another destination
        tmp_path / f".{dest.name}.tmp-{dead}-ba9876543210",  # an older huref's name, still fresh
        tmp_path / f".{dest.name}.tmp-huref-{dead}-{A._HOST}-notours",  # not a name huref gives
        tmp_path / f".{dest.name}.tmp-huref-{dead}-{A._HOST}-0123456789ab.keep",
        tmp_path / f"{dest.name}.tmp-huref-{dead}-{A._HOST}-0123456789ab",  # not hidden: not ours
    ]
    for p in kept[4:]:
        p.write_bytes(b"mine")
    old_user_file = tmp_path / f".{dest.name}.tmp-user-notes"
    old_user_file.write_bytes(b"mine")
    os.utime(old_user_file, (day_ago, day_ago))
    kept.append(old_user_file)

    with A.atomic_file(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"
    assert not any(p.exists() for p in removed), [p.name for p in removed if p.exists()]
    assert all(p.exists() for p in kept), [p.name for p in kept if not p.exists()]


@pytest.fixture(scope="module")
def vector(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vector of llama-a: tau is small noise (validation needs no training)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    fp = Path(shutil.copytree(tiny_zoo / "llama-a", tmp / "fp"))
    tensors = load_file(str(fp / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for t in tensors.values():
        t.add_(torch.randn(t.shape, generator=g) * 1e-3)
    save_file(tensors, str(fp / "model.safetensors"), metadata={"format": "pt"})
    (fp / "huref_fpvec.json").write_text(json.dumps({"key_commitment": "c" * 64}))
    out = tmp / "llama-a.fpvec.safetensors"
    assert main(["fpvec", "extract", str(tiny_zoo / "llama-a"), str(fp), "-o", str(out)]) == 0
    return out


def test_a_killed_fingerprint_leaves_a_temporary_the_next_run_removes(tiny_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp.safetensors"
    argv = ["fingerprint", str(tiny_zoo / "llama-a"), "-o", str(out), "--modes", "robust", "--n", "16"]
    _killed_mid_write(argv)
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".{out.name}.tmp-"), left
    assert not out.exists()
    assert main(argv) == 0
    assert _hidden(tmp_path) == [] and out.is_file()


def test_a_killed_stamp_leaves_a_temporary_folder_the_next_run_removes(
    vector: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stamped"
    argv = ["fpvec", "stamp", str(tiny_zoo / "llama-a-sft"), str(vector), "-o", str(out)]
    _killed_mid_write(argv)
    (left,) = _hidden(tmp_path)
    assert left.startswith(".stamped.tmp-") and (tmp_path / left / "model.safetensors").is_file()
    assert not out.exists()
    assert main(argv) == 0
    assert _hidden(tmp_path) == [] and (out / "model.safetensors").is_file()
