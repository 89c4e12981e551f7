"""The work of one model, as a picklable task that any executor can run in any process.

A task never touches the registry database: it returns an ``Outcome`` (file hashes, the
fingerprint file's bytes, comparisons with the bases) and the process that owns the database
writes it. That keeps SQLite single-writer however many workers (local processes or Dask
workers on other machines) run tasks.

A model's files must not change while its task reads them: the hashes are the cache key of what
the fingerprint describes. Each file's identity (inode, size, mtime, ctime, and the device as this
worker sees it) is checked against the planning scan's stat before the first read, and again after
the last (``huref.checkpoint.hashing``). A model whose files changed in between is reported as
changed, with nothing of it cached: the next scan reads it afresh.

Every task runs with one torch thread: parallelism comes from workers, and a fixed thread count
makes the float reductions, hence every score, bit-identical whichever executor ran the task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huref.checkpoint.hashing import FileIdentity, changed_since
from huref.errors import CheckpointError, HurefError
from huref.paths import shown
from huref.scan.cache import Cmp, FileStat, FpvecRow, comparison_row
from huref.scan.discover import one_line

DELAY_ENV = "HUREF_SCAN_TEST_DELAY_MS"  # test hook: sleep this long before fingerprinting each model


@dataclass(frozen=True)
class Task:
    index: int
    name: str
    path: str
    files: tuple[FileStat, ...]
    bases: tuple[str, ...]  # fingerprint hashes of the bases to compare with
    cached: bool = False  # the fingerprint is cached: read no weights for it
    fingerprint: Any = None  # the cached Fingerprint (robust terms only) when there are bases to compare
    fpvec: tuple[Any, ...] = ()  # FP-Vec KeySets to verify the model with (--keys)


@dataclass(frozen=True)
class WorkerContext:
    settings: Any  # huref.invariants.Settings
    bases: dict[str, Any]  # base fingerprint hash -> Fingerprint (robust terms only)
    delay_s: float = 0.0


@dataclass
class Outcome:
    index: int
    error: str | None = None
    hashes: dict[str, str] | None = None  # path -> SHA-256 of every file of the model
    fingerprint_bytes: bytes | None = None  # the new fingerprint file
    format: str | None = None
    weights: str | None = None  # digest of the weight-file SHA-256s
    comparisons: list[Cmp] = field(default_factory=list)
    fpvec: list[FpvecRow] = field(default_factory=list)
    seconds: float = 0.0
    fingerprinted: bool = False
    lasting_error: bool = False  # a huref error about the files themselves: the same until they change


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def robust_only(fp: Any) -> Any:
    """The part of a fingerprint a scan compares (paper-mode terms are large and unused here)."""
    return dataclasses.replace(fp, paper=None)


class ModelChanged(CheckpointError):
    """A file of the model changed (or went) while the scan worked on it."""


def _file_label(task: Task, fs: FileStat) -> str:
    return task.name if fs.label == "file" else f"{task.name}/{shown(fs.label)}"


def _changed(task: Task, fs: FileStat, how: str = "changed") -> ModelChanged:
    return ModelChanged(
        f"{_file_label(task, fs)}: {how} while the scan was reading it (replaced or rewritten); "
        "nothing was cached for this model: scan again"
    )


def _identity_as_planned(task: Task) -> dict[str, FileIdentity | None]:
    """Each file's identity now, refused unless it is the file the plan statted (the stat its hash
    is cached under). Checked before anything is opened: a file swapped since for a FIFO is
    never opened (that would block for ever)."""
    out: dict[str, FileIdentity | None] = {}
    for fs in task.files:
        now = FileIdentity.of(fs.path)
        if now is None:
            raise _changed(task, fs, "vanished")
        # not the device: a Dask worker may number a shared file system's device differently
        if (now.inode, now.size, now.mtime_ns, now.ctime_ns) != (fs.inode, fs.size, fs.mtime_ns, fs.ctime_ns):
            raise _changed(task, fs)
        out[fs.path] = now
    return out


def _hash_files(files: tuple[FileStat, ...]) -> dict[str, str]:
    from huref.checkpoint.hashing import sha256_file

    return {fs.path: sha256_file(Path(fs.path)) for fs in files}


def _printable_meta(fp: Any) -> Any:
    """The fingerprint with the model's name, path and file names as printable UTF-8: a zoo
    folder's name need not be UTF-8, and a fingerprint file must be."""
    model = dict(fp.meta.get("model") or {})
    for key in ("name", "path"):
        if key in model:
            model[key] = shown(model[key])
    if isinstance(model.get("sha256"), dict):
        model["sha256"] = {shown(k): v for k, v in model["sha256"].items()}
    return dataclasses.replace(fp, meta={**fp.meta, "model": model})


def _fingerprint(task: Task, ctx: WorkerContext, out: Outcome) -> Any:
    from huref.checkpoint import open_checkpoint
    from huref.invariants import fingerprint_model, save_fingerprint
    from huref.registry.store import weights_digest

    if ctx.delay_s > 0:
        time.sleep(ctx.delay_s)
    out.hashes = _hash_files(task.files)
    ckpt = open_checkpoint(task.path)
    by_real = {os.path.realpath(p): h for p, h in out.hashes.items()}
    weights = {p.name: by_real.get(os.path.realpath(p), "") for p in ckpt.weight_files()}
    if all(weights.values()):  # hashed above: spare fingerprint_model a second read of the weights
        ckpt = dataclasses.replace(ckpt, _hashes=weights)
    fp = _printable_meta(fingerprint_model(ckpt, ctx.settings))
    with tempfile.TemporaryDirectory(prefix="huref-scan-") as d:
        out.fingerprint_bytes = save_fingerprint(fp, Path(d) / "fp.safetensors").read_bytes()
    out.format = ckpt.format
    out.weights = weights_digest(ckpt.sha256s())
    out.fingerprinted = True
    return fp


def compare_with_bases(fp: Any, base_shas: tuple[str, ...], bases: dict[str, Any]) -> list[Cmp]:
    from huref.invariants import compare_fingerprints

    out = []
    for sha in base_shas:
        try:
            c = compare_fingerprints(fp, bases[sha])
        except HurefError as e:  # e.g. no shared probe tokens: not comparable with this base
            out.append(Cmp(sha, None, None, 0, one_line(str(e))))
            continue
        out.append(comparison_row(sha, c))
    return out


def verify_keys(path: str, keysets: tuple[Any, ...]) -> list[FpvecRow]:
    """FP-Vec verification with each key set; a model that cannot be queried gets the error per key set."""
    if not keysets:
        return []
    from huref.fpvec import verify_model

    out = []
    for ks in keysets:
        try:
            r = verify_model(path, ks, near_miss=True, device="cpu")
        except Exception as e:  # e.g. no tokenizer (GGUF, llama2.c): report it for this key set
            msg = str(e) if isinstance(e, HurefError) else f"{type(e).__name__}: {e}"
            out.append(FpvecRow(ks.commitment, None, None, None, None, one_line(msg)))
            continue
        nm = r.near_miss.fsr if r.near_miss is not None else None
        out.append(FpvecRow(ks.commitment, r.fsr, r.hits, r.n, nm))
    return out


def _reads_files(task: Task) -> bool:
    return not task.cached or bool(task.fpvec)


def run_task(task: Task, ctx: WorkerContext) -> Outcome:
    """Fingerprint (unless cached), compare, verify one model. Never raises for a bad model.

    A model whose files changed while the task read them is an error that is not remembered
    (``lasting_error`` false), whatever the reader made of the changed bytes."""
    t0 = time.perf_counter()
    try:
        before = _identity_as_planned(task) if _reads_files(task) else {}
    except ModelChanged as e:
        out = Outcome(task.index, error=one_line(str(e)))
    else:
        out = _work(task, ctx)
        moved = changed_since(before)
        if moved:
            fs = next(f for f in task.files if f.path == moved[0])
            out = Outcome(task.index, error=one_line(str(_changed(task, fs))))
    out.seconds = time.perf_counter() - t0
    return out


def _work(task: Task, ctx: WorkerContext) -> Outcome:
    out = Outcome(task.index)
    try:
        with one_torch_thread():
            fp = task.fingerprint if task.cached else _fingerprint(task, ctx, out)
            if task.bases:
                out.comparisons = compare_with_bases(fp, task.bases, ctx.bases)
            out.fpvec = verify_keys(task.path, task.fpvec)
    except HurefError as e:
        out = Outcome(task.index, error=one_line(str(e)), lasting_error=True)
    except MemoryError:
        out = Outcome(task.index, error=one_line(f"{task.name}: out of memory while fingerprinting"))
    except Exception as e:  # a reader bug or an exotic file must not stop the scan: report it
        out = Outcome(task.index, error=one_line(f"{task.name}: {type(e).__name__}: {e}"))
    return out


# -- process-pool plumbing: the context is sent once per worker process, not once per task -----

_WORKER_CTX: list[WorkerContext] = []


def init_worker(ctx: WorkerContext, scan_pid: int | None = None) -> None:
    _WORKER_CTX[:] = [ctx]
    if scan_pid is not None:
        threading.Thread(target=_exit_with, args=(scan_pid,), daemon=True, name="huref-orphan-watch").start()


def _exit_with(pid: int, every: float = 1.0) -> None:
    """End this worker once the scan process is gone (killed with SIGKILL it cannot tell its
    workers; they would wait for tasks for ever). A worker's parent is the fork server, not the
    scan, so the scan's pid is watched."""
    while True:
        time.sleep(every)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # the pid now belongs to another user's process: ours is gone
            os._exit(1)


def run_in_worker(task: Task) -> Outcome:
    return run_task(task, _WORKER_CTX[0])
