"""``huref scan``: every checkpoint of a zoo against the registered bases, fingerprinted once,
resumable after SIGKILL, the same on a Dask cluster, and robust to bad input inside the zoo."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from formatkit import tiny_llama, write_gguf, write_llama2c
from markupsafe import escape

from huref.checkpoint.writer import TensorPlan, write_safetensors_file
from huref.cli import main
from huref.invariants import Settings, fingerprint_model, save_fingerprint
from huref.registry.enroll import add_base
from huref.registry.store import DB_NAME, Store
from huref.scan import ScanConfig, ScanReport, run_scan
from huref.scan.accuracy import accuracy, format_table
from huref.scan.discover import discover
from huref.scan.results import REQUIRED_FIELDS, VERDICTS

ROBUST = Settings(modes=("robust",))
SMALL_GOOD = ("gpt2-a-cpt", "llama-a-sft", "llama-b", "stories260k-cpt")
NASTY = "<b>&\"x'"  # a folder name that must be escaped in index.html
AS_ROOT = os.geteuid() == 0  # root reads chmod-000 files: that case is then replaced by others


def _bases(manifest: dict) -> list[str]:
    return [m["name"] for m in manifest["models"] if m["relation"] == "base"]


def _copy_home(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _comparable(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries without the stored fingerprint's file hash (the file embeds its creation time)."""
    return [{k: v for k, v in m.items() if k != "fingerprint"} for m in models]


def _scan(zoo: Path, out: Path, home: Path, **kw: Any) -> ScanReport:
    return run_scan(ScanConfig(zoo, out, home=home, progress=False, **kw))


@pytest.fixture(scope="module")
def bases_home(tiny_zoo: Path, zoo_manifest: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding every base of the tiny zoo, each its own family (so their pairs form the null)."""
    home = tmp_path_factory.mktemp("bases") / "home"
    with Store(home) as s:
        for name in _bases(zoo_manifest):
            add_base(s, tiny_zoo / name, name, family=name, settings=ROBUST)
        assert s.null() is not None  # >= 5 comparable independent pairs
    return home


@pytest.fixture(scope="module")
def full_scan(
    tiny_zoo: Path, bases_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, ScanReport]:
    tmp = tmp_path_factory.mktemp("full")
    home = _copy_home(bases_home, tmp / "home")
    return home, tmp / "out", _scan(tiny_zoo, tmp / "out", home, workers=2)


@pytest.fixture(scope="module")
def small_zoo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four good models (links into the tiny zoo), bad input of every kind, and non-checkpoints."""
    z = tmp_path_factory.mktemp("small") / "zoo"
    z.mkdir()
    for name in SMALL_GOOD:
        (z / name).symlink_to(tiny_zoo / name, target_is_directory=True)
    cfg = (tiny_zoo / "llama-a" / "config.json").read_bytes()
    weights = (tiny_zoo / "llama-a" / "model.safetensors").read_bytes()
    for name in ("corrupt", "fifo", "dangling", "unreadable", NASTY):
        (z / name).mkdir()
        (z / name / "config.json").write_bytes(cfg)
    (z / "corrupt" / "model.safetensors").write_bytes(weights[: len(weights) // 3])  # truncated
    os.mkfifo(z / "fifo" / "model.safetensors")  # opening it would block forever
    (z / "dangling" / "model.safetensors").symlink_to(z / "gone.safetensors")
    (z / "unreadable" / "model.safetensors").write_bytes(weights)
    (z / "unreadable" / "model.safetensors").chmod(0)
    if AS_ROOT:
        shutil.rmtree(z / "unreadable")
    (z / NASTY / "config.json").write_text("{not json")
    (z / NASTY / "model.safetensors").write_bytes(weights)
    (z / "loop").symlink_to(z / "loop")  # resolves to itself
    (z / "nested").mkdir()
    (z / "nested" / "back").symlink_to("..", target_is_directory=True)  # leads to an enclosing folder
    shutil.copytree(tiny_zoo / "_tokenizer", z / "_tokenizer")  # tokenizer only: not a checkpoint
    (z / "notes").mkdir()
    (z / "notes" / "README.txt").write_text("not a model")
    plan = [TensorPlan("x", (4,), torch.float32)]
    write_safetensors_file(
        z / "notes" / "data.safetensors", plan, lambda p: torch.zeros(4)
    )  # data, not weights
    return z


@pytest.fixture(scope="module")
def small_local(
    small_zoo: Path, full_scan: tuple, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ScanReport]:
    """The small zoo scanned with the full scan's caches: its good models are links into the tiny
    zoo, so they come from the cache (keyed by real path) and only the bad input is new."""
    tmp = tmp_path_factory.mktemp("small-local")
    home = _copy_home(full_scan[0], tmp / "home")
    report = _scan(small_zoo, tmp / "out", home, workers=2)
    assert report.stats["from_cache"] == len(SMALL_GOOD) and report.stats["fingerprinted"] == 0
    return home, report


# -- the tiny zoo ------------------------------------------------------------------------------


def test_scan_flags_every_derivative_and_no_independent_base(full_scan: tuple, zoo_manifest: dict) -> None:
    _, _, report = full_scan
    rows, counts = accuracy(report.models, zoo_manifest, set(_bases(zoo_manifest)))
    print("\n" + format_table(rows, counts))
    n_bases = len(_bases(zoo_manifest))
    assert counts["TP"] == len(zoo_manifest["models"]) - n_bases >= 30
    assert counts["FN"] == counts["WRONG"] == counts["FP"] == counts["ERROR"] == 0
    assert counts["TN"] == n_bases


def test_results_json_and_index_html_have_one_entry_per_model(full_scan: tuple, zoo_manifest: dict) -> None:
    _, out, report = full_scan
    doc = json.loads((out / "results.json").read_text())
    assert doc == report.doc
    names = [m["name"] for m in doc["models"]]
    assert names == sorted(
        m["name"] for m in zoo_manifest["models"]
    )  # folder names; _tokenizer, _data skipped
    registered = set(_bases(zoo_manifest))
    for m in doc["models"]:
        assert all(k in m for k in REQUIRED_FIELDS)
        assert m["verdict"] in VERDICTS and m["error"] is None
        assert m["best_base"] is None or m["best_base"] in registered
        assert m["report_path"] is None  # no audit reports were written
    assert doc["null"]["source"].startswith(
        "registry: 22 independent base pairs"
    )  # the comparable pairs of 9 bases
    page = (out / "index.html").read_text()
    assert page.count("<td title=") == len(names)


def test_registered_bases_in_the_zoo_are_recognised_not_matched_to_themselves(full_scan: tuple) -> None:
    by = {m["name"]: m for m in full_scan[2].models}
    assert by["llama-a"]["registered_as"] == "llama-a"
    assert by["llama-a"]["verdict"] == "independent" and by["llama-a"]["best_base"] != "llama-a"
    assert by["llama-a-sft"]["registered_as"] is None


def test_second_scan_of_unchanged_zoo_reads_no_weights_and_is_20x_faster(
    full_scan: tuple, tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, out, first = full_scan

    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("a weight file was read on a rescan of an unchanged zoo")

    import huref.scan.tasks as tasks

    monkeypatch.setattr(tasks, "_fingerprint", forbidden)
    monkeypatch.setattr("huref.checkpoint.hashing.sha256_file", forbidden)
    second = _scan(tiny_zoo, out, home, workers=1)  # in this process, so the traps are armed
    assert second.stats["fingerprinted"] == second.stats["fingerprint_cached"] == 0
    assert second.stats["from_cache"] == len(first.models)
    assert second.models == first.models
    assert second.stats["seconds"] * 20 < first.stats["seconds"], (first.stats, second.stats)


# -- bad input, escaping, gating ---------------------------------------------------------------


def test_bad_inputs_are_listed_with_one_line_errors_and_the_rest_scanned(small_local: tuple) -> None:
    _, report = small_local
    by = {m["name"]: m for m in report.models}
    expected = {
        "corrupt": "truncated",
        "fifo": "not a regular file (a FIFO)",
        "dangling": "dangling symlink",
        "loop": "symlink loop",
        "nested/back": "symlink loop",
        NASTY: "corrupt config.json",
    }
    if not AS_ROOT:
        expected["unreadable"] = "permission denied"
    assert set(by) == set(expected) | set(SMALL_GOOD)  # _tokenizer, notes/ are not checkpoints
    for name, needle in expected.items():
        err = by[name]["error"]
        assert err and needle in err and "\n" not in err, (name, err)
        assert by[name]["verdict"] is None
    for name in SMALL_GOOD:
        assert by[name]["error"] is None and by[name]["verdict"] in VERDICTS
    assert by["llama-a-sft"]["verdict"] == "derived" and by["llama-a-sft"]["best_base"] == "llama-a"
    page = (report.out_dir / "index.html").read_text()
    for name in expected:
        assert str(escape(by[name]["error"])) in page


def test_rescan_retries_no_broken_model_until_its_files_change(
    small_local: tuple, small_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huref.scan.tasks as tasks

    home = _copy_home(small_local[0], tmp_path / "home")
    monkeypatch.setattr(tasks, "_fingerprint", lambda *a, **k: pytest.fail("a model was read on a rescan"))
    again = _scan(small_zoo, tmp_path / "out", home, workers=1)
    assert again.models == small_local[1].models
    assert again.stats["fingerprinted"] == again.stats["fingerprint_cached"] == 0


def test_a_file_rewritten_in_place_with_its_old_mtime_is_read_again(
    bases_home: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    """Same size, same inode, mtime put back (``touch -r``, ``rsync --inplace -t``): only ctime
    tells that the bytes changed, and the cache must not answer with the old model's verdict."""
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "llama-a-sft", zoo / "m")
    home = _copy_home(bases_home, tmp_path / "home")
    first = _scan(zoo, tmp_path / "out1", home, workers=1).models[0]
    assert first["best_base"] == "llama-a" and first["verdict"] == "derived"
    f = zoo / "m" / "model.safetensors"
    st = f.stat()
    other = (tiny_zoo / "llama-c" / "model.safetensors").read_bytes()
    assert len(other) == st.st_size
    with open(f, "r+b") as fh:  # in place: the inode stays
        fh.write(other)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_ino == st.st_ino and f.stat().st_mtime_ns == st.st_mtime_ns
    second = _scan(zoo, tmp_path / "out2", home, workers=1)
    assert second.stats["from_cache"] == 0
    assert second.models[0]["best_base"] == "llama-c" and second.models[0]["ics"] == pytest.approx(100.0)


def test_a_loose_safetensors_file_depends_on_the_tokenizer_beside_it(
    bases_home: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    """Its vocabulary is read from the folder it lies in: removing (or changing) that tokenizer
    changes the model's fingerprint, so a rescan must not reuse the cached one."""
    from safetensors.torch import load_file, save_file

    zoo = tmp_path / "zoo"
    (zoo / "loose").mkdir(parents=True)
    config = (tiny_zoo / "llama-a-sft" / "config.json").read_text()
    save_file(
        load_file(str(tiny_zoo / "llama-a-sft" / "model.safetensors")),
        str(zoo / "loose" / "sft.safetensors"),
        metadata={"format": "pt", "huref.config": config},
    )
    shutil.copy(tiny_zoo / "llama-a-sft" / "tokenizer.json", zoo / "loose")
    (c,) = discover(zoo)
    assert c.kind == "safetensors" and zoo / "loose" / "tokenizer.json" in c.files
    home = _copy_home(bases_home, tmp_path / "home")
    with_tok = _scan(zoo, tmp_path / "out1", home, workers=1).models[0]
    (zoo / "loose" / "tokenizer.json").unlink()
    without = _scan(zoo, tmp_path / "out2", home, workers=1)
    assert without.stats["from_cache"] == 0
    assert without.models[0]["fingerprint"] != with_tok["fingerprint"]
    fresh = _scan(zoo, tmp_path / "out3", _copy_home(bases_home, tmp_path / "home-fresh"), workers=1)
    assert _comparable(without.models) == _comparable(fresh.models)


def test_index_html_escapes_names_paths_and_errors(small_local: tuple) -> None:
    page = (small_local[1].out_dir / "index.html").read_text()
    assert NASTY not in page and "<b>&" not in page
    assert str(escape(NASTY)) in page


def test_adding_a_base_costs_comparisons_only_and_a_renamed_copy_is_derived(
    small_local: tuple, small_zoo: Path, tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _copy_home(small_local[0], tmp_path / "home")
    with Store(home) as s:
        add_base(s, tiny_zoo / "llama-a-sft", "sft-copy", settings=ROBUST)

    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached model was fingerprinted again")

    import huref.scan.tasks as tasks

    monkeypatch.setattr(tasks, "_fingerprint", forbidden)
    # exhaustive: every model is compared with the new base (an indexed scan compares fewer)
    r = _scan(small_zoo, tmp_path / "out", home, workers=1, exhaustive=True)
    assert r.stats["fingerprinted"] == 0 and r.stats["fingerprint_cached"] == len(SMALL_GOOD)
    m = next(x for x in r.models if x["name"] == "llama-a-sft")
    assert m["best_base"] == "sft-copy" and m["ics"] == pytest.approx(100.0) and m["verdict"] == "derived"


def test_fail_on_derived_exits_1_only_when_a_model_is_derived(
    small_local: tuple, small_zoo: Path, tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUREF_HOME", str(_copy_home(small_local[0], tmp_path / "home")))
    assert (
        main(["scan", str(small_zoo), "-o", str(tmp_path / "a"), "--fail-on", "derived", "--no-progress"])
        == 1
    )
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "llama-b").symlink_to(tiny_zoo / "llama-b")
    assert main(["scan", str(clean), "-o", str(tmp_path / "b"), "--fail-on", "derived", "--no-progress"]) == 0
    assert (tmp_path / "b" / "results.json").is_file() and (tmp_path / "b" / "index.html").is_file()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["scan", "{zoo}", "-o", "{out}", "--executor", "dask"], "needs --scheduler"),
        (["scan", "{zoo}", "-o", "{out}", "--executor", "dusk"], "did you mean 'dask'"),
        (["scan", "{zoo}", "-o", "{out}", "--fail-on", "maybe"], "--fail-on takes one of"),
        (["scan", "{zoo}", "-o", "{out}", "--workers", "0"], "--workers must be at least 1"),
        (["scan", "{out}/nowhere", "-o", "{out}"], "not a folder"),
        (["scan", "{zoo}", "-o", "{out}"], "no registry"),
    ],
)
def test_bad_scan_requests_fail_with_one_line(
    argv: list[str],
    needle: str,
    small_zoo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HUREF_HOME", str(tmp_path / "empty-home"))
    args = [a.format(zoo=small_zoo, out=tmp_path / "out") for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("huref: error: ") and needle in err[0], err
    assert not (tmp_path / "out" / "results.json").exists()


# -- damaged registries and caches -------------------------------------------------------------


def _one_model_zoo(tiny_zoo: Path, where: Path, name: str = "llama-a-sft") -> Path:
    where.mkdir()
    (where / name).symlink_to(tiny_zoo / name, target_is_directory=True)
    return where


def test_a_damaged_cached_fingerprint_is_a_miss_and_is_replaced(
    bases_home: Path, tiny_zoo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated file in the scan cache made every later scan that read it fail (exit 2): it is
    fingerprinted again, its entry replaced (the damaged file goes), and the next scan is cached."""
    zoo = _one_model_zoo(tiny_zoo, tmp_path / "zoo")
    home = _copy_home(bases_home, tmp_path / "home")
    first = _scan(zoo, tmp_path / "out1", home, workers=1).models[0]
    with Store(home) as s:
        (sha,) = [r[0] for r in s.conn.execute("SELECT fingerprint FROM fingerprint_cache")]
        blob = s.blob_path(sha)
        # the model must be read again: a comparison not made yet (as with a base added since)
        s.conn.execute("DELETE FROM comparisons WHERE fingerprint = ?", (sha,))
    blob.write_bytes(blob.read_bytes()[:1000])
    with caplog.at_level("WARNING", logger="huref.scan.runner"):
        again = _scan(zoo, tmp_path / "out2", home, workers=1)
    warned = [r.getMessage() for r in caplog.records if "cached fingerprint unusable" in r.getMessage()]
    assert len(warned) == 1 and "llama-a-sft" in warned[0]
    assert again.stats["fingerprinted"] == 1 and again.models[0]["error"] is None
    assert _comparable(again.models) == _comparable([first])
    assert not blob.exists()
    with Store(home) as s:
        (new,) = [r[0] for r in s.conn.execute("SELECT fingerprint FROM fingerprint_cache")]
        assert s.blob_intact(new) and new == again.models[0]["fingerprint"]
    third = _scan(zoo, tmp_path / "out3", home, workers=1)
    assert third.stats["from_cache"] == 1 and _comparable(third.models) == _comparable([first])


def test_one_unusable_base_stops_a_scan_naming_it_and_the_fix(
    bases_home: Path,
    tiny_zoo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    zoo = _one_model_zoo(tiny_zoo, tmp_path / "zoo")
    home = _copy_home(bases_home, tmp_path / "home")
    with Store(home) as s:
        blob = s.blob_path(s.require("llama-b").fingerprint)
    blob.write_bytes(blob.read_bytes()[:-100])
    monkeypatch.setenv("HUREF_HOME", str(home))
    assert main(["scan", str(zoo), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "registered base 'llama-b' is unusable" in err[0], err
    assert "the scan needs every base, so it stops before any work" in err[0]
    assert f"'huref registry add {tiny_zoo / 'llama-b'} --name llama-b --replace'" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_damaged_scan_cache_page_is_one_line_and_exit_2(
    bases_home: Path,
    tiny_zoo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    zoo = _one_model_zoo(tiny_zoo, tmp_path / "zoo", "llama-b")
    home = _copy_home(bases_home, tmp_path / "home")
    _scan(zoo, tmp_path / "out1", home, workers=1)
    conn = sqlite3.connect(home / DB_NAME)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'file_hashes'").fetchone()
    conn.close()
    with open(home / DB_NAME, "r+b") as f:  # the header and the schema stay intact
        f.seek((root - 1) * page_size)
        f.write(bytes(range(256)) * (page_size // 256))
    monkeypatch.setenv("HUREF_HOME", str(home))
    assert main(["scan", str(zoo), "-o", str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{home / DB_NAME}: the registry database is damaged" in err[0], err
    assert not (tmp_path / "out2").exists()


# -- executors and resumption ------------------------------------------------------------------


def test_dask_cluster_gives_the_same_results_as_the_local_executor(
    small_local: tuple, small_zoo: Path, bases_home: Path, tmp_path: Path
) -> None:
    distributed = pytest.importorskip("distributed")
    home = _copy_home(bases_home, tmp_path / "home")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        r = _scan(small_zoo, tmp_path / "out", home, executor="dask", scheduler=cluster.scheduler_address)
    assert r.stats["fingerprinted"] == len(SMALL_GOOD)
    assert _comparable(r.models) == _comparable(small_local[1].models)
    with Store(home) as s:  # gathered into the client's registry
        assert s.conn.execute("SELECT COUNT(*) FROM fingerprint_cache").fetchone()[0] == len(SMALL_GOOD)


@pytest.fixture(scope="module")
def dask_setup(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A zoo of three models (links into the tiny zoo) and a registry holding one base."""
    tmp = tmp_path_factory.mktemp("dask")
    zoo = tmp / "zoo"
    zoo.mkdir()
    for name in ("llama-a-sft", "llama-b", "gpt2-a"):
        (zoo / name).symlink_to(tiny_zoo / name, target_is_directory=True)
    with Store(tmp / "home") as s:
        add_base(s, tiny_zoo / "llama-a", "llama-a", settings=ROBUST)
    return zoo, tmp / "home"


@pytest.mark.parametrize(
    "address",
    [
        "nonsense",
        "http://localhost:8786",
        "tcp://127.0.0.1:notaport",
        "tcp://[::1",
        "tcp://127.0.0.1:70000",
        "tcp://127.0.0.1",
        "tcp://host name:8786",
    ],
)
def test_a_malformed_scheduler_address_is_one_line_and_exit_2(
    address: str,
    dask_setup: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("distributed")
    zoo, home = dask_setup
    monkeypatch.setenv("HUREF_HOME", str(_copy_home(home, tmp_path / "home")))
    out = tmp_path / "out"
    argv = ["scan", str(zoo), "-o", str(out), "--executor", "dask", "--scheduler", address, "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a Dask scheduler address" in err[0], err
    assert not out.exists()


@contextlib.contextmanager
def _dask_scheduler(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A ``dask scheduler`` process on a free local port: (address, process), killed on exit.

    A separate process, not an in-process LocalCluster: the scan's own client and event loop must
    not share a process with the scheduler's."""
    sfile = folder / "scheduler.json"
    cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not sfile.is_file() or not sfile.read_text().strip():
            assert time.monotonic() < deadline and proc.poll() is None, "no scheduler"
            time.sleep(0.1)
        yield json.loads(sfile.read_text())["address"], proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_scheduler_without_workers_is_one_line_and_exit_2(
    dask_setup: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("distributed")
    from huref.scan.executors import DaskExecutor

    zoo, home = dask_setup
    home = _copy_home(home, tmp_path / "home")
    monkeypatch.setenv("HUREF_HOME", str(home))
    monkeypatch.setattr(DaskExecutor, "worker_wait_s", 1.0)
    out = tmp_path / "out"
    with _dask_scheduler(tmp_path) as (addr, _):
        argv = ["scan", str(zoo), "-o", str(out), "--executor", "dask", "--scheduler", addr, "--no-progress"]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the Dask scheduler at {addr} has no workers" in err[0], err
    assert not out.exists() and _done(home / DB_NAME) == 0


def test_only_a_lost_connection_fails_the_whole_dask_scan() -> None:
    distributed = pytest.importorskip("distributed")
    import asyncio

    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    from huref.scan.executors import _connection_lost

    assert _connection_lost(FutureCancelledError("k", reason="scheduler-connection-lost"))
    assert _connection_lost(CommClosedError("in <TCP>: Stream is closed"))
    assert _connection_lost(asyncio.CancelledError())
    assert not _connection_lost(
        distributed.KilledWorker("k", "tcp://w:1", 3)
    )  # that model took its worker down
    assert not _connection_lost(RuntimeError("a task that raised"))


def test_a_scheduler_lost_mid_scan_fails_the_scan_in_one_line_and_keeps_finished_models(
    dask_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed scheduler: one line, exit 3 (the environment failed), no logger tracebacks, no
    results.json; the models that finished are cached and a second scan resumes from them."""
    pytest.importorskip("distributed")
    zoo, home = dask_setup
    home = _copy_home(home, tmp_path / "home")
    db, out = home / DB_NAME, tmp_path / "out"
    env = {**os.environ, "HUREF_HOME": str(home), "HUREF_SCAN_TEST_DELAY_MS": "1500"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with _dask_scheduler(tmp_path) as (addr, scheduler):
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", addr]
        procs = [subprocess.Popen([*worker, "--nthreads", "1", "--no-nanny", "--no-dashboard"], **quiet)]
        cmd = [sys.executable, "-m", "huref", "scan", str(zoo), "-o", str(out)]
        cmd += ["--executor", "dask", "--scheduler", addr, "--no-progress"]
        scan = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(scan)
        try:
            deadline = time.monotonic() + 120
            while _done(db) < 1:
                assert scan.poll() is None, scan.communicate()
                assert time.monotonic() < deadline, "no model finished in time"
                time.sleep(0.05)
            scheduler.kill()
            stdout, stderr = scan.communicate(timeout=120)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    err = stderr.strip().splitlines()
    assert scan.returncode == 3, (stdout, stderr)
    assert len(err) == 1 and "lost the connection to the Dask scheduler" in err[0], err
    assert "scan again to resume" in err[0] and "Traceback" not in stdout + stderr
    finished = _done(db)
    assert 1 <= finished < 3, finished
    assert not (out / "results.json").exists() and _integrity(db) == "ok"

    monkeypatch.setenv("HUREF_HOME", str(home))
    assert main(["scan", str(zoo), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["scan"]["from_cache"] == finished and doc["scan"]["fingerprinted"] == 3 - finished


def _done(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM fingerprint_cache").fetchone()[0])
    finally:
        conn.close()


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_scan_killed_with_sigkill_resumes_with_identical_results(
    small_local: tuple, small_zoo: Path, bases_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _copy_home(bases_home, tmp_path / "home")
    db = home / DB_NAME
    out = tmp_path / "out"
    # the documented test hook slows each fingerprint down so that "mid-way" is reliable
    env = {**os.environ, "HUREF_HOME": str(home), "HUREF_SCAN_TEST_DELAY_MS": "2000"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huref",
            "scan",
            str(small_zoo),
            "-o",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while _done(db) < 1:
            assert proc.poll() is None, "the scan ended before it could be killed"
            assert time.monotonic() < deadline, "no model finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = _done(db)
    assert 1 <= finished < len(SMALL_GOOD), finished
    assert _integrity(db) == "ok"
    assert not (out / "results.json").exists()

    monkeypatch.setenv("HUREF_HOME", str(home))
    monkeypatch.delenv("HUREF_SCAN_TEST_DELAY_MS", raising=False)
    assert main(["scan", str(small_zoo), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["scan"]["fingerprinted"] == len(SMALL_GOOD) - finished  # the finished ones were not redone
    assert doc["scan"]["from_cache"] == finished
    assert _comparable(doc["models"]) == _comparable(small_local[1].models)
    assert _integrity(db) == "ok"
    with Store(home) as s, Store(bases_home) as ref:
        assert s.bases() == ref.bases() and s.pairs() == ref.pairs()


def test_a_worker_ends_once_the_scan_process_is_gone() -> None:
    """Pool workers are children of the fork server: a scan killed with SIGKILL cannot stop them,
    so each watches the scan's pid and exits when it is gone (before: they waited for ever)."""
    scan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    watch = (
        "import threading, time; from huref.scan.tasks import _exit_with; "
        f"threading.Thread(target=_exit_with, args=({scan.pid}, 0.05), daemon=True).start(); time.sleep(120)"
    )
    worker = subprocess.Popen([sys.executable, "-c", watch])
    try:
        time.sleep(1.0)
        assert worker.poll() is None  # the scan is alive: the worker stays
        scan.kill()
        scan.wait()
        assert worker.wait(timeout=20) == 1
    finally:
        for p in (scan, worker):
            if p.poll() is None:
                p.kill()
                p.wait()


# -- FP-Vec verification (--keys) ---------------------------------------------------------------


def test_keys_add_fpvec_fsr_per_key_file_and_are_cached(
    small_local: tuple, tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huref.fpvec import load_keys, make_keys, save_keys
    from huref.fpvec.verify import VerifyResult

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "llama-a-sft").symlink_to(tiny_zoo / "llama-a-sft")
    real, fake = tmp_path / "real.json", tmp_path / "fake.json"
    save_keys(make_keys(seed=5), real)
    save_keys(make_keys(seed=6), fake)
    fake_commitment = load_keys(fake).commitment
    import huref.fpvec as fpvec

    genuine = fpvec.verify_model

    def verify(model: Any, keys: Any, **kw: Any) -> VerifyResult:
        if keys.commitment != fake_commitment:
            return genuine(model, keys, **kw)  # the real query: an unstamped model scores 0
        return VerifyResult(str(model), keys.commitment, 1.0, 10, 10, [], None, 8, 0.0)  # a stamped one

    monkeypatch.setattr(fpvec, "verify_model", verify)
    home = _copy_home(small_local[0], tmp_path / "home")
    r = _scan(zoo, tmp_path / "out", home, workers=1, fpvec_keys=(real, fake))
    (m,) = r.models
    assert [(v["keys"], v["fsr"], v["n"], v["error"]) for v in m["fpvec"]] == [
        (str(real), 0.0, 10, None),
        (str(fake), 1.0, 10, None),
    ]
    assert m["fpvec"][0]["near_miss_fsr"] == 0.0
    assert "FP-Vec FSR" in (tmp_path / "out" / "index.html").read_text()

    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached verification was run again")

    monkeypatch.setattr(fpvec, "verify_model", forbidden)
    again = _scan(zoo, tmp_path / "out", home, workers=1, fpvec_keys=(real, fake))
    assert again.models == r.models and again.stats["from_cache"] == 1


# -- formats and layouts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def format_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF cache repo, a GGUF file, a llama2.c export, plus files that are not checkpoints."""
    z = tmp_path_factory.mktemp("formats") / "zoo"
    model, sd = tiny_llama()
    repo = z / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "0123456789abcdef0123"
    model.save_pretrained(snap)
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    for f in sorted(snap.iterdir()):  # the cache layout: snapshot files are links into blobs/
        blob = repo / "blobs" / f"blob-{f.name}"
        f.rename(blob)
        f.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (z / "ggufs").mkdir()
    write_gguf(z / "ggufs" / "tiny.gguf", sd, model.config, qtype="Q8_0")
    write_llama2c(z / "tiny-l2c.bin", sd, model.config)
    torch.save({"w": torch.zeros(2)}, z / "optimizer.bin")  # a pickle: neither llama2.c nor beside a config
    fp = fingerprint_model(snap, ROBUST)
    save_fingerprint(fp, z / "tiny.fingerprint.safetensors")  # a fingerprint file is not a checkpoint
    (z / ".cache").mkdir()
    (z / ".cache" / "x.gguf").write_bytes(b"hidden entries are skipped")
    return z


def test_discover_finds_every_layout_and_ignores_what_is_not_a_checkpoint(format_zoo: Path) -> None:
    found = {c.name: c.kind for c in discover(format_zoo)}
    assert found == {"org/tiny": "folder", "ggufs/tiny.gguf": "gguf", "tiny-l2c.bin": "llama2c"}


def test_scan_fingerprints_hf_cache_gguf_and_llama2c_models(
    format_zoo: Path, bases_home: Path, tmp_path: Path
) -> None:
    r = _scan(format_zoo, tmp_path / "out", _copy_home(bases_home, tmp_path / "home"), workers=1)
    by = {m["name"]: m for m in r.models}
    assert {m["format"] for m in r.models} == {"hf-safetensors", "gguf", "llama2c"}
    for m in r.models:
        assert m["error"] is None, m["error"]
        assert m["verdict"] == "independent"  # random weights, related to no base
    assert by["org/tiny"]["path"].endswith("snapshots/0123456789abcdef0123")


# -- choosing the best base --------------------------------------------------------------------


def _entry(
    cmps: dict[str, tuple[float | None, float | None]], name: str = "m", weights: str = "w"
) -> dict[str, Any]:
    from huref.invariants.stats import NullModel
    from huref.registry.store import Base
    from huref.scan.cache import Cmp
    from huref.scan.discover import Candidate
    from huref.scan.results import ModelResult, model_entry

    bases = [Base(b, None, f"fp-{b}", f"w-{b}" if b != "self" else "w", "t", None, None, "now") for b in cmps]
    comparisons = {
        f"fp-{b}": Cmp(f"fp-{b}", ics, lp, 100)
        if ics is not None
        else Cmp(f"fp-{b}", None, None, 0, "share only 0")
        for b, (ics, lp) in cmps.items()
    }
    r = ModelResult(
        Candidate(name, Path("/zoo") / name, "folder"),
        fingerprint="fp",
        weights=weights,
        comparisons=comparisons,
    )
    return model_entry(r, bases, NullModel(5.0, 3.0, 10, "test"))


def test_best_base_is_the_strongest_verdict_then_the_highest_ics() -> None:
    e = _entry({"a": (40.0, -50.0), "b": (60.0, -0.5), "c": (None, None)})
    assert (e["best_base"], e["verdict"], e["ics"]) == ("a", "derived", 40.0)  # derived beats a higher ICS
    assert e["z"] == pytest.approx((40.0 - 5.0) / 3.0) and e["p_value"] == pytest.approx(1e-50)
    assert [c["base"] for c in e["comparisons"]] == ["a", "b", "c"] and "error" in e["comparisons"][2]


def test_a_model_comparable_to_no_base_is_independent_with_a_note() -> None:
    e = _entry({"a": (None, None), "b": (None, None)})
    assert e["verdict"] == "independent" and e["best_base"] is None and e["ics"] is None
    assert "comparable to none of the 2 registered bases" in e["note"]


def test_a_registered_base_is_not_matched_to_itself_but_a_renamed_copy_is() -> None:
    e = _entry({"self": (100.0, -300.0), "other": (8.0, -0.1)}, name="self")
    assert e["registered_as"] == "self" and e["best_base"] == "other" and e["verdict"] == "independent"
    copy = _entry({"self": (100.0, -300.0), "other": (8.0, -0.1)}, name="renamed")
    assert copy["registered_as"] is None and copy["best_base"] == "self" and copy["verdict"] == "derived"


def test_the_only_registered_base_found_in_the_zoo_is_said_to_be_that_base() -> None:
    alone = _entry({"self": (100.0, -300.0)}, name="self")
    assert alone["registered_as"] == "self" and alone["verdict"] == "independent"
    assert "this is the registered base 'self'" in alone["note"]
    assert "no other base is registered" in alone["note"] and "comparable to none" not in alone["note"]
    apart = _entry({"self": (100.0, -300.0), "other": (None, None)}, name="self")
    assert "this is the registered base 'self'" in apart["note"]
    assert "comparable to none of the 1 other registered bases" in apart["note"]
