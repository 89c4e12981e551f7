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

import contextlib
import logging
import multiprocessing
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from huref.errors import UsageError
from huref.paths import shown
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


class SchedulerLost(ConnectionError):
    """The Dask scheduler went away during a scan: the whole scan failed, not one model.

    An ``OSError``, so the CLI reports it as a failure of the environment (exit code 3), not as
    bad input; the models that finished before are in the cache and a second scan resumes."""


def _connection_lost(e: BaseException) -> bool:
    """Whether a Dask future failed because the client lost its scheduler, not because of its task.

    ``run_task`` turns every failure of a model into an ``Outcome``, so a future that raises
    failed on the way: cancelled when the client gave up reconnecting, or a broken connection.
    ``KilledWorker`` (the model took its worker down, e.g. out of memory) stays with that model."""
    import asyncio
    from concurrent.futures import CancelledError

    return isinstance(e, CancelledError | asyncio.CancelledError | OSError | TimeoutError)


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Closing a client whose scheduler is gone makes distributed log tracebacks of its cancelled
    reconnection attempts; the scan has already said what happened in one line."""
    # ``disabled`` is not inherited: each of distributed's loggers is switched off, then restored
    names = [n for n in logging.root.manager.loggerDict if n == "distributed" or n.startswith("distributed.")]
    loggers = [logging.getLogger(n) for n in names]
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, w in zip(loggers, was, strict=True):
            lg.disabled = w


class DaskExecutor:
    name = "dask"
    connect_timeout_s = 30.0
    worker_wait_s = 30.0  # how long a scan waits for the scheduler's first worker

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
        where = self.scheduler
        try:
            client = Client(where, timeout=f"{self.connect_timeout_s}s")
        except ValueError as e:  # a malformed address: no scheme, no port, an unknown scheme
            raise UsageError(
                f"--scheduler {where!r} is not a Dask scheduler address (e.g. tcp://10.0.0.5:8786): "
                f"{one_line(str(e))}"
            ) from None
        except (OSError, TimeoutError) as e:
            raise UsageError(f"cannot reach the Dask scheduler at {where}: {one_line(str(e))}") from None
        done = 0

        def lost(e: BaseException) -> SchedulerLost:
            return SchedulerLost(
                f"lost the connection to the Dask scheduler at {where} ({type(e).__name__}); "
                f"{done} of {len(tasks)} models finished and are cached: scan again to resume"
            )

        try:
            if not tasks:
                return
            try:
                client.wait_for_workers(1, timeout=self.worker_wait_s)
            except TimeoutError as e:
                if client.status != "running":
                    raise lost(e) from None
                raise UsageError(
                    f"the Dask scheduler at {where} has no workers (waited {self.worker_wait_s:g} s); "
                    f"start some with 'dask worker {where}'"
                ) from None
            run_id = uuid.uuid4().hex[:12]  # keys unique per scan: a cluster may serve several
            try:
                ctx_future = client.scatter(ctx, broadcast=True, hash=False)
                futures = {
                    client.submit(
                        run_task, t, ctx_future, pure=False, key=f"huref-scan-{run_id}-{t.index}"
                    ): t
                    for t in tasks
                }
            except Exception as e:
                if _connection_lost(e):
                    raise lost(e) from None
                raise
            for f in dask_completed(list(futures)):
                t = futures[f]
                try:
                    out = f.result()
                except Exception as e:
                    if _connection_lost(e):
                        raise lost(e) from None
                    # KilledWorker and the like: this model only
                    out = Outcome(
                        t.index, error=one_line(f"{t.name}: Dask task failed: {type(e).__name__}: {e}")
                    )
                on_done(out)
                done += 1
        finally:
            if client.status == "running":
                client.close()
            else:
                with _quiet_distributed():
                    client.close()


@EXECUTORS.register("local")
def _local(opts: ExecutorOptions) -> Executor:
    if opts.scheduler:
        raise UsageError("--scheduler is for --executor dask")
    if opts.workers < 1:
        raise UsageError("--workers must be at least 1")
    return InlineExecutor() if opts.workers == 1 else LocalExecutor(opts.workers)


_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # distributed's network transports
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+")


def check_scheduler_address(address: str) -> None:
    """Refuse a scheduler address that no transport could connect to, before a client starts.

    ``scheme://host:port`` with one of distributed's network schemes, a host name or address (an
    IPv6 address in brackets) and a port 1..65535. Checked here rather than left to
    ``distributed.Client``: the client starts its event loop thread before it parses the address,
    and on a loaded machine that start can time out first, turning bad input into a traceback."""
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    ok = (
        sep == "://"
        and scheme in _SCHEMES
        and colon == ":"
        and _HOST.fullmatch(host) is not None
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
    )
    if not ok:
        raise UsageError(
            f"--scheduler {shown(address)} is not a Dask scheduler address: expected "
            f"SCHEME://HOST:PORT with SCHEME one of {', '.join(_SCHEMES)} (e.g. tcp://10.0.0.5:8786)"
        )


@EXECUTORS.register("dask")
def _dask(opts: ExecutorOptions) -> Executor:
    if not opts.scheduler:
        raise UsageError("--executor dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786)")
    check_scheduler_address(opts.scheduler)
    return DaskExecutor(opts.scheduler)


def make_executor(name: str, opts: ExecutorOptions) -> Executor:
    return EXECUTORS.get(name)(opts)
