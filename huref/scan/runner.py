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
from huref.scan.discover import Candidate, discover
from huref.scan.executors import ExecutorOptions, make_executor
from huref.scan.outdir import check_out_dir, refuse_models_as_out_dir
from huref.scan.results import ModelResult, model_entry, results_doc, write_outputs
from huref.scan.tasks import DELAY_ENV, Outcome, Task, WorkerContext, robust_only

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


def _check_bases(store: Store, bases: list[Base], settings: Settings) -> dict[str, Any]:
    """Robust fingerprints of the bases, checked against the scan's token key."""
    from huref.invariants.tokens import key_digest

    want = key_digest(settings.key)
    out: dict[str, Any] = {}
    fps = store.load_bases(bases, "the scan needs every base, so it stops before any work; ")
    for b in bases:
        fp = fps[b.name]
        if fp.robust is None:
            raise RegistryError(
                f"base {b.name!r} has no robust-mode fingerprint; re-add it from its checkpoint"
            )
        if fp.robust.key_digest != want:
            raise UsageError(
                f"base {b.name!r} chose its probe tokens with another --token-key than this scan; "
                "scan with the key the bases were registered with"
            )
        out[b.fingerprint] = robust_only(fp)
    return out


def _plan(
    store: Store, states: list[_State], bases: list[Base], settings_key: str, keysets: tuple[Any, ...]
) -> list[tuple[_State, Task | None]]:
    """For each candidate: None when the caches answer everything, else the task to run."""
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


def _check_sketches_if_needed(
    store: Store, states: list[_State], bases: list[Base], settings: Settings, has_tasks: bool
) -> dict[str, Any]:
    """The bases' sketches, checked (``index.check_base_sketches``), when any model may need a
    comparison: a zoo answered entirely from the caches reads none (and imports no numpy)."""
    if not has_tasks:
        shas = {b.fingerprint for b in bases}
        done = all(
            st.result.error is not None
            or (
                st.result.fingerprint is not None
                and shas
                <= set(st.result.comparisons or {}) | set(cache.stored_bounds(store, st.result.fingerprint))
            )
            for st in states
        )
        if done and not _null_sensitive(store, states, bases):
            return {}
    from huref.scan.index import check_base_sketches

    return check_base_sketches(store, bases, settings)


def _null_sensitive(store: Store, states: list[_State], bases: list[Base]) -> bool:
    """Whether a cached sketch bound might not rule its base out under this scan's null (then
    the base is compared exactly, and the sketches are needed); pure Python, no tensors."""
    from huref.registry.sketch import decide

    null = store.null() or BUILTIN_NULL
    for st in states:
        if st.result.error is not None or st.result.fingerprint is None:
            continue
        cmps = st.result.comparisons or {}
        for sha, b in cache.stored_bounds(store, st.result.fingerprint).items():
            if sha not in cmps and not decide(b.ics, b.response, b.why, b.needs_response, null).ruled_out:
                return True
    return False


def _compare_round(
    store: Store,
    states: list[_State],
    bases: list[Base],
    sketches: dict[str, Any],
    null: Any,
    settings: Settings,
) -> tuple[list[Task], WorkerContext]:
    """The second round of an indexed scan: per model, the bases its sketch cannot rule out."""
    from huref.scan.index import select_bases

    shas = tuple(dict.fromkeys(b.fingerprint for b in bases))
    todo: list[tuple[int, _State, list[str]]] = []
    for i, st in enumerate(states):
        r = st.result
        if r.error is not None or r.fingerprint is None:
            continue
        if sketches:
            compare, ruled = select_bases(store, r.fingerprint, shas, sketches, null)
        else:  # answered from the caches (see _check_sketches_if_needed)
            compare, ruled = [], _cached_rule_outs(store, r.fingerprint, shas, null)
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
    fps = _check_bases(store, [b for b in bases if b.fingerprint in need], settings)
    tasks = [
        Task(i, st.cand.name, str(st.cand.path), st.stats, tuple(c), cached=fp is not None, fingerprint=fp)
        for i, st, c, fp in loaded
    ]
    return tasks, WorkerContext(settings, fps)


def _cached_rule_outs(store: Store, fingerprint: str, shas: tuple[str, ...], null: Any) -> dict[str, float]:
    from huref.registry.sketch import decide

    cmps = cache.stored_comparisons(store, fingerprint)
    out: dict[str, float] = {}
    for sha, b in cache.stored_bounds(store, fingerprint).items():
        if sha not in shas or sha in cmps or b.ics is None:
            continue
        if decide(b.ics, b.response, b.why, b.needs_response, null).ruled_out:
            out[sha] = b.ics
    return out


def _load_keysets(paths: tuple[Path, ...]) -> tuple[Any, ...]:
    """The --keys files, read and checked before any work starts (a bad file is one clear line)."""
    if not paths:
        return ()
    from huref.fpvec import load_keys

    keysets = tuple(load_keys(p) for p in paths)
    seen: dict[str, Path] = {}
    for p, ks in zip(paths, keysets, strict=True):
        if ks.commitment in seen:
            raise UsageError(f"{p}: the same keys as {seen[ks.commitment]}; give each key file once")
        seen[ks.commitment] = p
    return keysets


def _fpvec_entries(
    store: Store, content: str | None, paths: tuple[Path, ...], keysets: tuple[Any, ...]
) -> list[dict[str, Any]]:
    rows = cache.stored_fpvec(store, content) if content else {}
    out = []
    for p, ks in zip(paths, keysets, strict=True):
        r = rows.get(ks.commitment)
        out.append(
            {
                "keys": shown(p),
                "commitment": ks.commitment,
                "fsr": r.fsr if r else None,
                "hits": r.hits if r else None,
                "n": r.n if r else None,
                "near_miss_fsr": r.near_miss_fsr if r else None,
                "error": (r.error if r else "not verified"),
            }
        )
    return out


def run_scan(cfg: ScanConfig) -> ScanReport:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    executor = make_executor(cfg.executor, ExecutorOptions(cfg.workers, cfg.scheduler))
    zoo = Path(cfg.zoo).absolute()
    if not zoo.is_dir():
        raise UsageError(f"{shown(cfg.zoo)}: not a folder")
    check_out_dir(Path(cfg.out_dir))
    with Store(cfg.home, create=False) as store:
        store.check_writable(
            ", where the scan keeps its caches (or set HUREF_HOME to a registry of your own)"
        )
        bases = store.bases()
        if not bases:
            raise RegistryError(
                f"the registry at {store.home} has no bases; add some with 'huref registry add'"
            )
        null = store.null() or BUILTIN_NULL
        skey = cache.settings_key(cfg.settings)
        keysets = _load_keysets(tuple(cfg.fpvec_keys))
        states = [_State(c, ModelResult(c)) for c in discover(zoo)]
        refuse_models_as_out_dir(
            Path(cfg.out_dir), [st.cand.path for st in states if st.cand.kind != "error"]
        )
        plan = _plan(store, states, bases if cfg.exhaustive else [], skey, keysets)
        tasks = [t for _, t in plan if t is not None]
        log.info("%d candidates under %s: %d to run on %s", len(states), zoo, len(tasks), cfg.executor)
        counts: dict[str, Any] = {
            "candidates": len(states),
            "fingerprinted": 0,
            "fingerprint_cached": 0,
            "from_cache": sum(1 for st, t in plan if t is None and st.result.error is None),
            "errors": 0,
        }
        delay = float(os.environ.get(DELAY_ENV, "0") or 0) / 1000.0
        sketches: dict[str, Any] = {}
        if cfg.exhaustive:
            ctx = WorkerContext(
                cfg.settings, _check_bases(store, bases, cfg.settings) if tasks else {}, delay
            )
        else:
            ctx = WorkerContext(cfg.settings, {}, delay)
            sketches = _check_sketches_if_needed(store, states, bases, cfg.settings, bool(tasks))
        phase2: set[int] = set()  # models fingerprinted in this scan's first round

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

            def on_done(out: Outcome) -> None:
                st = states[out.index]
                if out.error is not None:
                    st.result.error = out.error
                    if out.lasting_error:
                        cache.record_failure(store, cache.failure_signature(st.stats, skey), out.error)
                    bar.console.print(
                        f"[red]skipped[/red] {escape(st.cand.name)}: {escape(out.error)}", highlight=False
                    )
                elif out.fingerprinted:
                    assert out.hashes is not None
                    st.content = cache.content_key(st.stats, out.hashes)
                    sha = cache.record_model(
                        store,
                        st.stats,
                        out.hashes,
                        st.content,
                        skey,
                        out.fingerprint_bytes,
                        None,
                        out.format or "?",
                        out.weights or "",
                        out.seconds,
                        out.comparisons,
                        out.fpvec,
                    )
                    st.result.fingerprint, st.result.format, st.result.weights = sha, out.format, out.weights
                    st.result.comparisons = cache.stored_comparisons(store, sha)
                    counts["fingerprinted"] += 1
                    phase2.add(out.index)
                else:
                    assert st.content is not None and st.result.fingerprint is not None
                    cache.record_model(
                        store,
                        st.stats,
                        None,
                        st.content,
                        skey,
                        None,
                        st.result.fingerprint,
                        st.result.format or "?",
                        st.result.weights or "",
                        0.0,
                        out.comparisons,
                        out.fpvec,
                    )
                    st.result.comparisons = cache.stored_comparisons(store, st.result.fingerprint)
                    if out.index not in phase2:
                        counts["fingerprint_cached"] += 1
                bar.advance(pid)

            executor.run(tasks, ctx, on_done)
            if not cfg.exhaustive:
                tasks2, ctx2 = _compare_round(store, states, bases, sketches, null, cfg.settings)
                if tasks2:
                    bar.update(pid, total=len(states) + len(tasks2))
                    executor.run(tasks2, ctx2, on_done)

        for st in states:
            if keysets and st.result.error is None:
                st.result.fpvec = _fpvec_entries(store, st.content, tuple(cfg.fpvec_keys), keysets)
        entries = [model_entry(st.result, bases, null) for st in states]
        counts["errors"] = sum(1 for e in entries if e["error"])
        counts["seconds"] = round(time.perf_counter() - t0, 3)
        counts["executor"] = cfg.executor
        counts["indexed"] = not cfg.exhaustive
        counts["compared_exactly"] = sum(e.get("bases_compared", 0) for e in entries)
        counts["ruled_out_by_sketch"] = sum(e.get("bases_ruled_out", 0) for e in entries)
        settings_doc = {
            "modes": list(cfg.settings.modes),
            "n": cfg.settings.n,
            "n_responses": cfg.settings.n_responses,
        }
        doc = results_doc(entries, bases, null, zoo, store.home, settings_doc, counts)
        from huref.scan.html import dog_thumbnails

        thumbs = dog_thumbnails(store, entries)
        write_outputs(Path(cfg.out_dir), doc, thumbs)
    return ScanReport(doc, Path(cfg.out_dir), counts)
