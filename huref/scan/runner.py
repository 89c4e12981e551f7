"""``run_scan``: discover, plan from the caches, run the missing work, write the outputs.

Resumption: each model's hashes, fingerprint and comparisons are committed in one transaction as
soon as its task returns, and the outputs are rebuilt from the caches at the end. A scan killed at
any moment (SIGKILL included) and started again plans only the models it has not finished; an
unchanged zoo plans nothing and reads no weight (file stats are the only I/O per model).
A model that failed with a huref error is not tried again until one of its files changes.

The output folder is checked before any work (``huref.scan.outdir``): never inside a model of the
zoo, and never over a results.json or index.html that an earlier scan did not write.

An indexed scan (the default) runs in two rounds: the models not yet fingerprinted are
fingerprinted, then each model is compared exactly with the bases its sketch cannot rule out
(``huref.scan.index``), and only those bases are loaded. ``--exhaustive`` (``ScanConfig.exhaustive``)
compares with every base, in one round, as described next.

Fingerprint files are checked (SHA-256 and seal) whenever they are read. An exhaustive scan that has
work to do loads every registered base first, and one unusable base stops it before any work (one line
naming the base and the fix, exit 2): its results would otherwise lack that base without saying
so. A model's cached fingerprint is read only when it needs a comparison with a new base; when
that file does not load, the entry counts as a miss and the model is fingerprinted again.

Stages: check (:func:`_open_scan`, :mod:`huref.scan.bases`), plan from the caches (:func:`_plan`,
:func:`_compare_round`), stream (:func:`_run_rounds`, committing through
:class:`huref.scan.record.Recorder`), outputs (:func:`huref.scan.record.write_scan_outputs`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huref.errors import RegistryError, UsageError
from huref.invariants.calibration import BUILTIN_NULL
from huref.invariants.settings import Settings
from huref.paths import shown
from huref.registry.store import Base, BlobError, Store
from huref.scan import cache
from huref.scan.bases import cached_rule_outs, check_bases, check_sketches_if_needed
from huref.scan.discover import Candidate, discover
from huref.scan.executors import Executor, ExecutorOptions, make_executor
from huref.scan.outdir import check_out_dir, refuse_models_as_out_dir
from huref.scan.record import Recorder, load_keysets, write_scan_outputs
from huref.scan.results import ModelResult
from huref.scan.tasks import DELAY_ENV, Task, WorkerContext, robust_only

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def scan_settings(n: int = 512, key: bytes | None = None) -> Settings:
    """Scans fingerprint in robust mode only: the verdict needs nothing else, and paper-mode terms
    (4096 x 4096 per matrix) would dominate the cache and the traffic to workers."""
    s = Settings(n=n, modes=("robust",))
    return s if key is None else Settings(n=n, modes=("robust",), key=key)


@dataclass(frozen=True)
class ScanConfig:
    zoo: Path
    out_dir: Path
    executor: str = "local"
    workers: int = field(default_factory=default_workers)
    scheduler: str | None = None
    settings: Settings = field(default_factory=scan_settings)
    home: Path | None = None
    progress: bool = True
    fpvec_keys: tuple[Path, ...] = ()  # FP-Vec key files: verify every model with each (--keys)
    exhaustive: bool = False  # compare with every base (no sketch rule-outs; huref.scan.index)


@dataclass
class ScanReport:
    doc: dict[str, Any]
    out_dir: Path
    stats: dict[str, Any]

    @property
    def models(self) -> list[dict[str, Any]]:
        return list(self.doc["models"])


@dataclass
class _State:
    cand: Candidate
    result: ModelResult
    stats: tuple[cache.FileStat, ...] = ()
    content: str | None = None


@dataclass
class _Scan:
    """What the check stage opened: the registry's bases and null, the cache key of the settings,
    the --keys sets, and one state per discovered candidate."""

    bases: list[Base]
    null: Any
    skey: str
    keysets: tuple[Any, ...]
    states: list[_State]


def _plan(
    store: Store, states: list[_State], bases: list[Base], settings_key: str, keysets: tuple[Any, ...]
) -> list[tuple[_State, Task | None]]:
    """Plan stage: for each candidate, None when the caches answer everything, else the task to run.

    Reads file stats and cache rows only (a cached fingerprint file only when a comparison is
    missing): no weight. A candidate that cannot be read, or failed before with unchanged files,
    gets its error in its result instead of a task."""
    base_shas = tuple(dict.fromkeys(b.fingerprint for b in bases))
    plan: list[tuple[_State, Task | None]] = []
    for i, st in enumerate(states):
        c = st.cand
        if c.error is not None:
            st.result.error = c.error
            plan.append((st, None))
            continue
        try:
            st.stats = cache.stat_files(c)
        except cache.InputError as e:
            st.result.error = str(e)
            plan.append((st, None))
            continue
        failed = cache.known_failure(store, cache.failure_signature(st.stats, settings_key))
        if failed is not None:
            st.result.error = failed
            plan.append((st, None))
            continue
        hashes = cache.known_hashes(store, st.stats)
        cached = None
        if hashes is not None:
            st.content = cache.content_key(st.stats, hashes)
            cached = cache.cached_fingerprint(store, st.content, settings_key)
        if cached is None:
            plan.append((st, Task(i, c.name, str(c.path), st.stats, base_shas, fpvec=keysets)))
            continue
        assert st.content is not None
        cmps = cache.stored_comparisons(store, cached.fingerprint)
        r = st.result
        r.fingerprint, r.format, r.weights, r.comparisons = (
            cached.fingerprint,
            cached.format,
            cached.weights,
            cmps,
        )
        missing = tuple(s for s in base_shas if s not in cmps)
        done_fpvec = cache.stored_fpvec(store, st.content)
        verify = tuple(ks for ks in keysets if ks.commitment not in done_fpvec)
        if not missing and not verify:
            plan.append((st, None))
            continue
        fp = None
        if missing:
            try:
                fp = robust_only(store.load_blob(cached.fingerprint))
            except BlobError as e:  # a damaged cache entry is a miss; record_model replaces it
                log.warning("%s: cached fingerprint unusable (%s); fingerprinting the model again", c.name, e)
                r.fingerprint = r.format = r.weights = None
                r.comparisons = None
                plan.append((st, Task(i, c.name, str(c.path), st.stats, base_shas, fpvec=keysets)))
                continue
        plan.append(
            (st, Task(i, c.name, str(c.path), st.stats, missing, cached=True, fingerprint=fp, fpvec=verify))
        )
    return plan


def _compare_round(
    store: Store,
    states: list[_State],
    bases: list[Base],
    sketches: dict[str, Any],
    null: Any,
    settings: Settings,
) -> tuple[list[Task], WorkerContext]:
    """Plan stage of an indexed scan's second round: per model, the bases its sketch cannot rule
    out (cached fingerprints are loaded for those models; the bases they need are checked)."""
    from huref.scan.index import select_bases

    shas = tuple(dict.fromkeys(b.fingerprint for b in bases))
    todo: list[tuple[int, _State, list[str]]] = []
    for i, st in enumerate(states):
        r = st.result
        if r.error is not None or r.fingerprint is None:
            continue
        if sketches:
            compare, ruled = select_bases(store, r.fingerprint, shas, sketches, null)
        else:  # answered from the caches (see check_sketches_if_needed)
            compare, ruled = [], cached_rule_outs(store, r.fingerprint, shas, null)
        r.ruled_out = ruled
        r.comparisons = cache.stored_comparisons(store, r.fingerprint)
        if compare:
            todo.append((i, st, compare))
    loaded: list[tuple[int, _State, list[str], Any]] = []
    for i, st, compare in todo:
        try:
            fp = robust_only(store.load_blob(st.result.fingerprint))  # type: ignore[arg-type]
        except BlobError as e:  # a damaged cache entry is a miss, as in _plan: fingerprint again,
            # and compare with every base not ruled out (its comparisons are stored under the new file)
            log.warning(
                "%s: cached fingerprint unusable (%s); fingerprinting the model again", st.cand.name, e
            )
            r = st.result
            compare = [s for s in shas if s not in (r.ruled_out or {})]
            r.fingerprint = r.format = r.weights = None
            r.comparisons, fp = None, None
        loaded.append((i, st, compare, fp))
    if not loaded:
        return [], WorkerContext(settings, {})
    need = {s for _, _, c, _ in loaded for s in c}
    fps = check_bases(store, [b for b in bases if b.fingerprint in need], settings)
    tasks = [
        Task(i, st.cand.name, str(st.cand.path), st.stats, tuple(c), cached=fp is not None, fingerprint=fp)
        for i, st, c, fp in loaded
    ]
    return tasks, WorkerContext(settings, fps)


def run_scan(cfg: ScanConfig) -> ScanReport:
    """Scan ``cfg.zoo`` against the registry's bases; write results.json and index.html.

    In stages: check the arguments, the output folder and the registry and discover the zoo
    (:func:`_open_scan`); plan from the caches (:func:`_plan`, no weight read); check the bases the
    plan needs (:func:`_worker_context`); run the work, committing each model as it returns
    (:func:`_run_rounds`); rebuild the outputs from the caches (``write_scan_outputs``).
    """
    t0 = time.perf_counter()
    executor = make_executor(cfg.executor, ExecutorOptions(cfg.workers, cfg.scheduler))
    zoo = Path(cfg.zoo).absolute()
    if not zoo.is_dir():
        raise UsageError(f"{shown(cfg.zoo)}: not a folder")
    check_out_dir(Path(cfg.out_dir))
    with Store(cfg.home, create=False) as store:
        scan = _open_scan(cfg, store, zoo)
        plan = _plan(store, scan.states, scan.bases if cfg.exhaustive else [], scan.skey, scan.keysets)
        tasks = [t for _, t in plan if t is not None]
        log.info("%d candidates under %s: %d to run on %s", len(scan.states), zoo, len(tasks), cfg.executor)
        counts: dict[str, Any] = {
            "candidates": len(scan.states),
            "fingerprinted": 0,
            "fingerprint_cached": 0,
            "from_cache": sum(1 for st, t in plan if t is None and st.result.error is None),
            "errors": 0,
        }
        ctx, sketches = _worker_context(cfg, store, scan, tasks)
        _run_rounds(cfg, store, executor, scan, zoo, tasks, ctx, sketches, counts)
        doc = write_scan_outputs(
            cfg, store, scan.states, scan.bases, scan.null, zoo, scan.keysets, counts, t0
        )
    return ScanReport(doc, Path(cfg.out_dir), counts)


def _open_scan(cfg: ScanConfig, store: Store, zoo: Path) -> _Scan:
    """Check stage: the registry is writable and holds bases, the --keys files are readable and
    distinct, and the output folder is not inside a model of the zoo; the zoo is discovered (file
    names and headers only). Each refusal is one huref error line, before any work."""
    store.check_writable(", where the scan keeps its caches (or set HUREF_HOME to a registry of your own)")
    bases = store.bases()
    if not bases:
        raise RegistryError(f"the registry at {store.home} has no bases; add some with 'huref registry add'")
    null = store.null() or BUILTIN_NULL
    skey = cache.settings_key(cfg.settings)
    keysets = load_keysets(tuple(cfg.fpvec_keys))
    states = [_State(c, ModelResult(c)) for c in discover(zoo)]
    refuse_models_as_out_dir(Path(cfg.out_dir), [st.cand.path for st in states if st.cand.kind != "error"])
    return _Scan(bases, null, skey, keysets, states)


def _worker_context(
    cfg: ScanConfig, store: Store, scan: _Scan, tasks: list[Task]
) -> tuple[WorkerContext, dict[str, Any]]:
    """Check stage, bases: an exhaustive scan with work loads and checks every base's fingerprint
    (one unusable base stops it here); an indexed scan checks the bases' sketches when any model
    may need a comparison. Returns the workers' context and the sketches (empty when unneeded)."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0) / 1000.0
    if cfg.exhaustive:
        return WorkerContext(
            cfg.settings, check_bases(store, scan.bases, cfg.settings) if tasks else {}, delay
        ), {}
    ctx = WorkerContext(cfg.settings, {}, delay)
    return ctx, check_sketches_if_needed(store, scan.states, scan.bases, cfg.settings, bool(tasks))


def _run_rounds(
    cfg: ScanConfig,
    store: Store,
    executor: Executor,
    scan: _Scan,
    zoo: Path,
    tasks: list[Task],
    ctx: WorkerContext,
    sketches: dict[str, Any],
    counts: dict[str, Any],
) -> None:
    """Stream stage: run the planned tasks (and, for an indexed scan, the second round of exact
    comparisons) under a progress bar; each outcome is committed to the caches as it returns."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    states = scan.states
    con = Console(stderr=True, soft_wrap=True)
    with Progress(
        TextColumn("[bold]scan[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        disable=not cfg.progress,
        transient=False,
    ) as bar:
        pid = bar.add_task(str(zoo), total=len(states), completed=len(states) - len(tasks))
        on_done = Recorder(store, states, scan.skey, counts, bar, pid)
        executor.run(tasks, ctx, on_done)
        if not cfg.exhaustive:
            tasks2, ctx2 = _compare_round(store, states, scan.bases, sketches, scan.null, cfg.settings)
            if tasks2:
                bar.update(pid, total=len(states) + len(tasks2))
                executor.run(tasks2, ctx2, on_done)
