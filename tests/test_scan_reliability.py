"""``huref scan`` under hostile conditions: files replaced while they are read, names that are not
UTF-8, very deep zoos, special files named like weights, and output folders it must not write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from huref.cli import main
from huref.errors import CheckpointError, RegistryError
from huref.invariants import Settings
from huref.registry.enroll import add_base
from huref.registry.store import DB_NAME, Store
from huref.scan import ScanConfig, ScanReport, run_scan
from huref.scan.discover import discover

ROBUST = Settings(modes=("robust",))
CHANGED = "changed while the scan was reading it"
HANG_S = 60  # a scan of one tiny model takes about a second: this long means it hangs


@pytest.fixture(scope="module")
def two_bases(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with llama-a and llama-b (llama-a-sft derives from llama-a; the two weight
    files have the same size, so one can be renamed over the other unnoticed by size)."""
    home = tmp_path_factory.mktemp("two-bases") / "home"
    with Store(home) as s:
        for name in ("llama-a", "llama-b"):
            add_base(s, tiny_zoo / name, name, family=name, settings=ROBUST)
    return home


@pytest.fixture
def home(two_bases: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(two_bases, tmp_path / "home"))


def _scan(zoo: Path, out: Path, home: Path) -> ScanReport:
    return run_scan(ScanConfig(zoo, out, home=home, progress=False, workers=1))


def _rows(home: Path, table: str) -> int:
    conn = sqlite3.connect(home / DB_NAME)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _replace_by(target: Path, source: Path, *, keep_mtime: bool) -> None:
    """Rename a copy of ``source`` over ``target``, as rsync or a download tool would."""
    before = target.stat()
    tmp = target.with_name(".incoming")
    shutil.copyfile(source, tmp)
    assert tmp.stat().st_size == before.st_size
    if keep_mtime:
        os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, target)


def _rewrite_in_place(target: Path, source: Path) -> None:
    """Same inode, same size, mtime put back (``rsync --inplace -t``): only ctime changes."""
    before = target.stat()
    with open(target, "r+b") as f:
        f.write(source.read_bytes())
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


def _once_before_reading(monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    """Run ``act`` once, after the scan hashed the model and before it opens it for reading."""
    import huref.checkpoint as checkpoint

    real = checkpoint.open_checkpoint
    done: list[bool] = []

    def racing(path: Any) -> Any:
        if not done:
            done.append(True)
            act()
        return real(path)

    monkeypatch.setattr(checkpoint, "open_checkpoint", racing)


def _by_base(model: dict[str, Any]) -> dict[str, float]:
    return {c["base"]: c["ics"] for c in model["comparisons"]}


# -- a model replaced while it is read ---------------------------------------------------------


def test_a_model_renamed_over_mid_scan_is_reported_changed_and_never_poisons_the_cache(
    tiny_zoo: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-b's weights renamed over a copy of llama-a-sft (same size, same mtime) between its
    hashing and its reading: the fingerprint of llama-b was cached under llama-a-sft's hashes, and
    every later scan called any untouched copy of llama-a-sft a copy of llama-b."""
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "llama-a-sft", zoo / "m")
    weights = zoo / "m" / "model.safetensors"
    _once_before_reading(
        monkeypatch,
        lambda: _replace_by(weights, tiny_zoo / "llama-b" / "model.safetensors", keep_mtime=True),
    )
    raced = _scan(zoo, tmp_path / "out1", home)
    (m,) = raced.models
    assert m["error"] and f"m/model.safetensors: {CHANGED}" in m["error"] and "scan again" in m["error"]
    assert m["verdict"] is None and raced.stats["errors"] == 1 and raced.stats["fingerprinted"] == 0
    assert _rows(home, "fingerprint_cache") == _rows(home, "file_hashes") == _rows(home, "failures") == 0

    again = _scan(zoo, tmp_path / "out2", home)  # not remembered as broken: read afresh
    assert again.stats["fingerprinted"] == 1 and again.models[0]["error"] is None
    assert again.models[0]["best_base"] == "llama-b" and again.models[0]["ics"] == pytest.approx(100.0)

    shutil.rmtree(zoo)
    other = tmp_path / "other"
    other.mkdir()
    (other / "copy").symlink_to(tiny_zoo / "llama-a-sft", target_is_directory=True)
    (copy,) = _scan(other, tmp_path / "out3", home).models
    assert copy["best_base"] == "llama-a" and copy["verdict"] == "derived"
    # llama-b: compared (low ICS) or ruled out by its sketch (an ICS bound below 30; huref.scan.index)
    assert _by_base(copy)["llama-a"] > 90 > 30 > _by_base(copy).get("llama-b", 0.0), copy["comparisons"]
    assert "llama-b" in _by_base(copy) or copy["bases_ruled_out"] >= 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f, src: _replace_by(f, src, keep_mtime=False), id="renamed-over-new-mtime"),
        pytest.param(_rewrite_in_place, id="rewritten-in-place-old-mtime"),
    ],
)
def test_a_model_changed_between_hashing_and_reading_caches_nothing(
    change: Callable[[Path, Path], None],
    tiny_zoo: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "llama-a-sft", zoo / "m")
    weights = zoo / "m" / "model.safetensors"
    _once_before_reading(monkeypatch, lambda: change(weights, tiny_zoo / "llama-b" / "model.safetensors"))
    (m,) = _scan(zoo, tmp_path / "out", home).models
    assert m["error"] and CHANGED in m["error"], m
    assert _rows(home, "fingerprint_cache") == _rows(home, "file_hashes") == _rows(home, "failures") == 0


def _run_with_timeout(fn: Callable[[], Any], seconds: float) -> Any:
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return box[0] if box else None


def _unblock(fifo: Path) -> None:
    """A reader blocked on ``fifo`` (the defect) gets end-of-file once a writer opens and closes it."""
    with contextlib.suppress(OSError):  # no reader: nothing blocks
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_weight_file_swapped_for_a_fifo_after_planning_is_never_opened(
    tiny_zoo: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huref.scan.runner as runner

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "llama-a-sft", zoo / "m")
    weights = zoo / "m" / "model.safetensors"
    real_plan = runner._plan

    def plan_then_swap(*a: Any, **k: Any) -> Any:
        plan = real_plan(*a, **k)
        os.mkfifo(weights.with_name(".fifo"))
        os.replace(weights.with_name(".fifo"), weights)
        return plan

    monkeypatch.setattr(runner, "_plan", plan_then_swap)
    report = _run_with_timeout(lambda: _scan(zoo, tmp_path / "out", home), HANG_S)
    _unblock(weights)
    assert report is not None, f"the scan hung on a FIFO for {HANG_S} s"
    (m,) = report.models
    assert m["error"] and CHANGED in m["error"] and m["verdict"] is None, m


def test_hashing_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    from huref.checkpoint.hashing import sha256_file

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)

    def attempt() -> str:
        try:
            sha256_file(fifo)
        except CheckpointError as e:
            return str(e)
        return "hashed"

    msg = _run_with_timeout(attempt, 10)
    _unblock(fifo)
    assert msg is not None and "a FIFO, not a regular file" in msg, msg


def test_registry_add_refuses_a_checkpoint_replaced_while_it_was_fingerprinted(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``registry add`` hashes the weights after reading the tensors: a file renamed over in
    between bound llama-b's hashes (the base's ``weights``) to llama-a-sft's fingerprint."""
    from huref.checkpoint.core import Checkpoint

    model = tmp_path / "m"
    shutil.copytree(tiny_zoo / "llama-a-sft", model)
    real = Checkpoint.sha256s

    def swap_then_hash(self: Checkpoint) -> dict[str, str]:
        if self._hashes is None:
            _replace_by(
                model / "model.safetensors", tiny_zoo / "llama-b" / "model.safetensors", keep_mtime=True
            )
        return real(self)

    monkeypatch.setattr(Checkpoint, "sha256s", swap_then_hash)
    with Store(tmp_path / "home") as s:
        with pytest.raises(RegistryError, match=r"changed while it was being fingerprinted.*add it again"):
            add_base(s, model, "sft", settings=ROBUST)
        assert s.bases() == []


# -- names, depth, special files ----------------------------------------------------------------


def test_a_folder_name_that_is_not_utf8_is_shown_escaped_and_the_outputs_are_utf8(
    tiny_zoo: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    os.symlink(tiny_zoo / "llama-a-sft", os.fsencode(zoo) + b"/bad\xff")
    os.mkfifo(os.fsencode(zoo) + b"/fifo\xfe.gguf")
    monkeypatch.setenv("HUREF_HOME", str(home))
    out = tmp_path / "out"
    assert main(["scan", str(zoo), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_bytes().decode("utf-8"))  # strict UTF-8
    by = {m["name"]: m for m in doc["models"]}
    assert set(by) == {"bad\\xff", "fifo\\xfe.gguf"}
    assert by["bad\\xff"]["verdict"] == "derived" and by["bad\\xff"]["best_base"] == "llama-a"
    assert by["bad\\xff"]["path"].endswith("/bad\\xff")
    assert by["fifo\\xfe.gguf"]["error"] == "fifo\\xfe.gguf: not a regular file (a FIFO); not opened"
    page = (out / "index.html").read_bytes().decode("utf-8")
    assert "bad\\xff" in page and "fifo\\xfe.gguf" in page
    with Store(home) as s:  # the cached fingerprint file is readable (dog thumbnails, new bases)
        s.load_blob(by["bad\\xff"]["fingerprint"])
    second = _scan(zoo, tmp_path / "out2", home)  # its cache entries are found again
    assert second.stats["from_cache"] == 1 and second.stats["fingerprinted"] == 0


def test_a_model_600_folders_deep_is_found_and_scanned(tiny_zoo: Path, home: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    deep = zoo.joinpath(*["d"] * 600)
    deep.mkdir(parents=True)
    (deep / "m").symlink_to(tiny_zoo / "llama-b", target_is_directory=True)
    (c,) = discover(zoo)
    assert c.name == "d/" * 600 + "m" and c.kind == "folder"
    (m,) = _scan(zoo, tmp_path / "out", home).models
    assert m["error"] is None and m["best_base"] == "llama-b"


@pytest.fixture
def special_zoo(tmp_path: Path, tiny_zoo: Path) -> Iterator[Path]:
    """FIFOs, a socket and device links named like weight files, at the top and inside a model."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("f.safetensors", "f.gguf", "f.bin"):
        os.mkfifo(zoo / name)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(zoo / "s.safetensors"))
    (zoo / "zero.gguf").symlink_to("/dev/zero")  # reading it never ends
    (zoo / "m").mkdir()
    shutil.copy(tiny_zoo / "llama-b" / "config.json", zoo / "m")
    os.mkfifo(zoo / "m" / "model.safetensors")
    yield zoo
    sock.close()


def test_special_files_named_like_weights_are_skipped_with_their_kind(
    special_zoo: Path, home: Path, tmp_path: Path
) -> None:
    report = _run_with_timeout(lambda: _scan(special_zoo, tmp_path / "out", home), HANG_S)
    assert report is not None, "the scan hung on a special file"
    errors = {m["name"]: m["error"] for m in report.models}
    assert errors == {
        "f.bin": "f.bin: not a regular file (a FIFO); not opened",
        "f.gguf": "f.gguf: not a regular file (a FIFO); not opened",
        "f.safetensors": "f.safetensors: not a regular file (a FIFO); not opened",
        "s.safetensors": "s.safetensors: not a regular file (a socket); not opened",
        "zero.gguf": "zero.gguf: not a regular file (a character device); not opened",
        "m": "m/model.safetensors: not a regular file (a FIFO)",
    }


# -- where a scan may write ---------------------------------------------------------------------


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error: ") and needle in err[0], err


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("zoo/m/scan", "is inside the input model folder"),
        ("zoo/link/scan", "is inside the input model folder"),  # a link to a model outside the zoo
        ("zoo/m", "is the input"),
    ],
)
def test_an_output_inside_a_model_of_the_zoo_is_refused_before_any_work(
    out: str,
    needle: str,
    tiny_zoo: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "llama-b", zoo / "m")
    shutil.copytree(tiny_zoo / "llama-a-sft", tmp_path / "elsewhere")
    (zoo / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    before = sorted(str(p) for p in tmp_path.rglob("*") if "home" not in p.parts)
    monkeypatch.setenv("HUREF_HOME", str(home))
    _refused(["scan", str(zoo), "-o", str(tmp_path / out), "--no-progress"], capsys, needle)
    assert sorted(str(p) for p in tmp_path.rglob("*") if "home" not in p.parts) == before
    assert _rows(home, "fingerprint_cache") == 0


def test_a_zoo_of_one_model_cannot_take_its_output_inside_itself(
    tiny_zoo: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = Path(shutil.copytree(tiny_zoo / "llama-b", tmp_path / "m"))
    monkeypatch.setenv("HUREF_HOME", str(home))
    _refused(
        ["scan", str(model), "-o", str(model / "out"), "--no-progress"], capsys, "inside the input model"
    )
    assert not (model / "out").exists()


@pytest.fixture
def quick_zoo(tmp_path: Path) -> Path:
    """A zoo whose only entry is a FIFO named like a model: a scan of it reads no weights."""
    zoo = tmp_path / "quick"
    zoo.mkdir()
    os.mkfifo(zoo / "x.gguf")
    return zoo


def test_an_output_folder_inside_the_zoo_but_outside_every_model_is_allowed(
    quick_zoo: Path, home: Path
) -> None:
    report = _scan(quick_zoo, quick_zoo / "scan", home)
    assert (quick_zoo / "scan" / "results.json").is_file() and len(report.models) == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("index.html", "<html><title>my homepage</title></html>"),
        ("results.json", '{"mine": true}'),
        ("results.json", "not json at all"),
        ("results.json", '{"schema": "huref-scan/999", "models": []}'),
        ("index.html", "<title>huref audit: x</title>"),  # an audit page is not a scan's
    ],
)
def test_a_users_own_index_or_results_is_never_replaced(
    name: str,
    content: str,
    quick_zoo: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / name).write_text(content)
    monkeypatch.setenv("HUREF_HOME", str(home))
    _refused(
        ["scan", str(quick_zoo), "-o", str(out), "--no-progress"], capsys, "is not an earlier huref scan's"
    )
    assert (out / name).read_text() == content and sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_output_name_taken_by_a_folder_or_a_fifo_is_refused(
    kind: str,
    quick_zoo: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").mkdir() if kind == "folder" else os.mkfifo(out / "index.html")
    monkeypatch.setenv("HUREF_HOME", str(home))
    _refused(
        ["scan", str(quick_zoo), "-o", str(out), "--no-progress"],
        capsys,
        "is a folder" if kind == "folder" else "is a FIFO",
    )
    assert not (out / "results.json").exists()


def test_a_scan_replaces_its_own_earlier_outputs_marked_or_not(
    quick_zoo: Path, home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _scan(quick_zoo, out, home)
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "huref-scan/1"
    assert '<meta name="generator" content="huref-scan/1">' in (out / "index.html").read_text()
    _scan(quick_zoo, out, home)  # its own marked files
    # files from before the marks: the page's title, and every key results.json always had
    legacy = {k: v for k, v in doc.items() if k != "schema"}
    (out / "results.json").write_text(json.dumps(legacy))
    page = (out / "index.html").read_text().replace('<meta name="generator" content="huref-scan/1">\n', "")
    (out / "index.html").write_text(page)
    _scan(quick_zoo, out, home)
    assert json.loads((out / "results.json").read_text())["schema"] == "huref-scan/1"
