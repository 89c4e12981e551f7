"""FIFOs, devices and sockets are neither inputs nor outputs: refused before they are opened.

Opening a FIFO to read blocks until someone writes to it, so a key file, vector or fingerprint
given as a FIFO hung the command forever; renaming a finished output over a device node or a FIFO
replaced the node. Each test here gives a FIFO (which any user can make) and a guard that unblocks
a reader after a few seconds, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from huref.cli import main
from huref.errors import HurefError

GUARD_S = 5.0


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO whose reader, if any, gets end-of-file after GUARD_S seconds."""
    path = tmp_path / "special"
    os.mkfifo(path)
    stop = threading.Event()

    def release() -> None:
        deadline = time.monotonic() + GUARD_S
        while not stop.wait(0.05):
            if time.monotonic() < deadline:
                continue
            try:  # succeeds only while a reader has the FIFO open; closing gives it end-of-file
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as e:
                if e.errno not in (errno.ENXIO, errno.ENOENT):
                    raise

    guard = threading.Thread(target=release, daemon=True)
    guard.start()
    yield path
    stop.set()
    guard.join()


def _refused_fast(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str = "is a FIFO") -> None:
    capsys.readouterr()
    t0 = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert seconds < GUARD_S, f"blocked for {seconds:.1f} s on the FIFO"
    assert code == 2 and len(err) == 1 and err[0].startswith("huref: error:"), err
    assert needle in err[0], err[0]


INPUTS = {
    "verify-keys": ["fpvec", "verify", "{zoo}/llama-a", "--keys", "{fifo}"],
    "train-keys": ["fpvec", "train", "{zoo}/llama-a", "--keys", "{fifo}", "-o", "{tmp}/fp"],
    "stamp-vector": ["fpvec", "stamp", "{zoo}/llama-a-sft", "{fifo}", "-o", "{tmp}/out"],
    "stamp-model": ["fpvec", "stamp", "{fifo}", "{tmp}/v.safetensors", "-o", "{tmp}/out"],
    "extract-keys": ["fpvec", "extract", "{zoo}/llama-a", "{zoo}/llama-a", "-o", "{tmp}/v.safetensors", "--keys", "{fifo}"],
    "harm": ["fpvec", "harm", "{fifo}", "{zoo}/llama-a"],
    "inspect": ["inspect", "{fifo}"],
    "fingerprint": ["fingerprint", "{fifo}", "-o", "{tmp}/fp.safetensors"],
    "fingerprint-frequency-list": [
        "fingerprint", "{zoo}/llama-a", "-o", "{tmp}/fp.safetensors", "--frequency-list", "{fifo}",
    ],
    "compare": ["compare", "{fifo}", "{zoo}/llama-a"],
    "dog": ["dog", "{fifo}", "--json"],
    "audit-keys": ["audit", "{zoo}/llama-a", "-o", "{tmp}/r.html", "--fpvec", "{tmp}/v.safetensors", "--keys", "{fifo}"],
    "registry-add": ["registry", "add", "{fifo}", "--name", "x"],
    "encoder-info": ["encoder", "info", "{fifo}"],
    "convert-stylegan2": ["convert-stylegan2", "{fifo}", "-o", "{tmp}/g.safetensors"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(INPUTS))
def test_a_fifo_as_an_input_is_refused_at_once(
    case: str, fifo: Path, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(fifo=fifo, zoo=tiny_zoo, tmp=tmp_path) for a in INPUTS[case]]
    _refused_fast(argv, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["special"]


def test_the_readers_refuse_a_fifo(fifo: Path, tiny_zoo: Path, tmp_path: Path) -> None:
    """The Python API too: key files, vectors, fingerprints and a model card named like a file."""
    import shutil

    from huref.fpvec.keys import load_keys
    from huref.fpvec.vector import _read_card, open_vector
    from huref.invariants import load_fingerprint

    for read in (load_keys, open_vector, load_fingerprint):
        t0 = time.monotonic()
        with pytest.raises(HurefError, match="is a FIFO"):
            read(fifo)
        assert time.monotonic() - t0 < GUARD_S
    model = Path(shutil.copytree(tiny_zoo / "llama-a", tmp_path / "fp-model"))
    os.mkfifo(model / "huref_fpvec.json")
    with pytest.raises(HurefError, match="is a FIFO"):
        _read_card(model)


OUTPUTS = {
    "fingerprint": ["fingerprint", "{zoo}/llama-a", "-o", "{out}.safetensors"],
    "dog": ["dog", "{zoo}/llama-a", "-o", "{out}.png"],
    "dog-sheet": ["dog", "{zoo}/llama-a", "--sheet", "{out}.png"],
    "extract": ["fpvec", "extract", "{zoo}/llama-a", "{zoo}/llama-a", "-o", "{out}.safetensors"],
    "make-keys": ["fpvec", "make-keys", "-o", "{out}.json"],
    "stamp": ["fpvec", "stamp", "{zoo}/llama-a-sft", "{tmp}/v.safetensors", "-o", "{out}"],
    "encoder-train": ["encoder", "train", "-o", "{out}.safetensors", "--force"],
}


@pytest.mark.parametrize("case", list(OUTPUTS))
def test_a_fifo_as_an_output_is_refused_and_left_in_place(
    case: str, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(out=tmp_path / "out", zoo=tiny_zoo, tmp=tmp_path) for a in OUTPUTS[case]]
    target = Path(next(a for a in argv if a.startswith(str(tmp_path / "out"))))
    os.mkfifo(target)
    _refused_fast(argv, capsys)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)  # not replaced by a regular file
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left either


def test_a_link_to_a_device_is_refused_as_an_output(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dog -o dog.png`` where dog.png leads to /dev/null: refused, the link kept."""
    from huref.checkpoint.outputs import check_output_file

    link = tmp_path / "dog.png"
    link.symlink_to(os.devnull)
    _refused_fast(["dog", str(tiny_zoo / "llama-a"), "-o", str(link)], capsys, "is a character device")
    assert link.is_symlink() and os.readlink(link) == os.devnull
    with pytest.raises(HurefError, match="character device"):
        check_output_file(os.devnull)
