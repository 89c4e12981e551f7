"""Executors: where the scan's tasks run. Plug-ins of kind "executor" (``huref.plugins.Registry``).

- ``local`` (default): ``--workers N`` processes on this machine (a forkserver pool, so workers
  start from a clean process, not a copy of one holding threads and open databases); with one
  worker the tasks run in the scanning process itself.
- ``dask``: a Dask cluster at ``--scheduler ADDRESS``. huref must be importable on the workers and
  the zoo visible at the same path (a shared file system). The bases are scattered to every worker
  once; fingerprinting and comparison are one task per model; results come back to the client,
  which alone writes the registry.

An executor calls ``on_done`` in the calling thread, once per task, as tasks finish. A task that
cannot be run at all (its worker process died) comes back as an ``Outcome`` with an error.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from huref.errors import UsageError
from huref.plugins import Registry
from huref.scan.discover import one_line
from huref.scan.tasks import Outcome, Task, WorkerContext, init_worker, run_in_worker, run_task

log = logging.getLogger(__name__)

OnDone = Callable[[Outcome], None]


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int = 1
    scheduler: str | None = None


class Executor(Protocol):
    name: str

    def run(self, tasks: Sequence[Task], ctx: WorkerContext, on_done: OnDone) -> None: ...


EXECUTORS: Registry[Callable[[ExecutorOptions], Executor]] = Registry("executor")


class InlineExecutor:
    name = "local"

    def run(self, tasks: Sequence[Task], ctx: WorkerContext, on_done: OnDone) -> None:
        for t in tasks:
            on_done(run_task(t, ctx))


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, tasks: Sequence[Task], ctx: WorkerContext, on_done: OnDone) -> None:
        if not tasks:
            return
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload(["huref.scan.tasks", "huref.invariants"])
        pending = {t.index: t for t in tasks}
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=mp,
            initializer=init_worker,
            initargs=(ctx, os.getpid()),
        ) as pool:
            futures = {pool.submit(run_in_worker, t): t for t in tasks}
            try:
                for f in as_completed(futures):
                    out = f.result()
                    pending.pop(out.index, None)
                    on_done(out)
            except BrokenProcessPool:
                # A worker died (killed, out of memory, crashed in native code): the tasks that
                # had not finished are reported, not retried; a second scan resumes them.
                for t in pending.values():
                    on_done(
                        Outcome(
                            t.index,
                            error=one_line(
                                f"{t.name}: a worker process died while this model was queued or running "
                                "(out of memory or a crash); scan again to retry"
                            ),
                        )
                    )


class DaskExecutor:
    name = "dask"

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler

    def run(self, tasks: Sequence[Task], ctx: WorkerContext, on_done: OnDone) -> None:
        try:
            from distributed import Client
            from distributed import as_completed as dask_completed
        except ImportError:
            raise UsageError(
                "--executor dask needs the 'distributed' package: pip install 'huref[dask]'"
            ) from None
        try:
            client = Client(self.scheduler, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise UsageError(
                f"cannot reach the Dask scheduler at {self.scheduler}: {one_line(str(e))}"
            ) from None
        try:
            if not tasks:
                return
            run_id = uuid.uuid4().hex[:12]  # keys unique per scan: a cluster may serve several
            ctx_future = client.scatter(ctx, broadcast=True, hash=False)
            futures = {
                client.submit(run_task, t, ctx_future, pure=False, key=f"huref-scan-{run_id}-{t.index}"): t
                for t in tasks
            }
            for f in dask_completed(list(futures)):
                t = futures[f]
                try:
                    out = f.result()
                except Exception as e:  # KilledWorker, a lost connection: this model only
                    out = Outcome(
                        t.index, error=one_line(f"{t.name}: Dask task failed: {type(e).__name__}: {e}")
                    )
                on_done(out)
        finally:
            client.close()


@EXECUTORS.register("local")
def _local(opts: ExecutorOptions) -> Executor:
    if opts.scheduler:
        raise UsageError("--scheduler is for --executor dask")
    if opts.workers < 1:
        raise UsageError("--workers must be at least 1")
    return InlineExecutor() if opts.workers == 1 else LocalExecutor(opts.workers)


@EXECUTORS.register("dask")
def _dask(opts: ExecutorOptions) -> Executor:
    if not opts.scheduler:
        raise UsageError("--executor dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
    return DaskExecutor(opts.scheduler)


def make_executor(name: str, opts: ExecutorOptions) -> Executor:
    return EXECUTORS.get(name)(opts)
