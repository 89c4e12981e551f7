"""The stream stage of a scan and its outputs: each finished task is committed to the caches as
it returns, and the results are rebuilt from the caches at the end.

Nothing here decides what to run (``huref.scan.runner`` plans) or checks the bases
(``huref.scan.bases``); it records what the executor reports and writes the outputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.errors import UsageError
from huref.paths import shown
from huref.registry.store import Base, Store
from huref.scan import cache
from huref.scan.results import model_entry, results_doc, write_outputs
from huref.scan.tasks import Outcome

if TYPE_CHECKING:
    from huref.scan.runner import ScanConfig, _State


def load_keysets(paths: tuple[Path, ...]) -> tuple[Any, ...]:
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


def fpvec_entries(
    store: Store, content: str | None, paths: tuple[Path, ...], keysets: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """One model's FP-Vec results per key file, as the cache holds them."""
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


class Recorder:
    """``on_done`` for the executors: commits one model's outcome (hashes, fingerprint,
    comparisons, FP-Vec results, or a lasting failure) to the caches in one transaction, updates
    its result and the counts, and advances the progress bar."""

    def __init__(
        self, store: Store, states: list[_State], skey: str, counts: dict[str, Any], bar: Any, pid: Any
    ) -> None:
        self.store, self.states, self.skey, self.counts, self.bar, self.pid = (
            store,
            states,
            skey,
            counts,
            bar,
            pid,
        )
        self.phase2: set[int] = set()  # models fingerprinted in this scan's first round

    def __call__(self, out: Outcome) -> None:
        st = self.states[out.index]
        if out.error is not None:
            self._failed(st, out)
        elif out.fingerprinted:
            self._fingerprinted(st, out)
        else:
            self._compared(st, out)
        self.bar.advance(self.pid)

    def _failed(self, st: _State, out: Outcome) -> None:
        from rich.markup import escape

        assert out.error is not None
        st.result.error = out.error
        if out.lasting_error:
            cache.record_failure(self.store, cache.failure_signature(st.stats, self.skey), out.error)
        self.bar.console.print(
            f"[red]skipped[/red] {escape(st.cand.name)}: {escape(out.error)}", highlight=False
        )

    def _fingerprinted(self, st: _State, out: Outcome) -> None:
        assert out.hashes is not None
        st.content = cache.content_key(st.stats, out.hashes)
        sha = cache.record_model(
            self.store,
            st.stats,
            out.hashes,
            st.content,
            self.skey,
            out.fingerprint_bytes,
            None,
            out.format or "?",
            out.weights or "",
            out.seconds,
            out.comparisons,
            out.fpvec,
        )
        st.result.fingerprint, st.result.format, st.result.weights = sha, out.format, out.weights
        st.result.comparisons = cache.stored_comparisons(self.store, sha)
        self.counts["fingerprinted"] += 1
        self.phase2.add(out.index)

    def _compared(self, st: _State, out: Outcome) -> None:
        assert st.content is not None and st.result.fingerprint is not None
        cache.record_model(
            self.store,
            st.stats,
            None,
            st.content,
            self.skey,
            None,
            st.result.fingerprint,
            st.result.format or "?",
            st.result.weights or "",
            0.0,
            out.comparisons,
            out.fpvec,
        )
        st.result.comparisons = cache.stored_comparisons(self.store, st.result.fingerprint)
        if out.index not in self.phase2:
            self.counts["fingerprint_cached"] += 1


def write_scan_outputs(
    cfg: ScanConfig,
    store: Store,
    states: list[_State],
    bases: list[Base],
    null: Any,
    zoo: Path,
    keysets: tuple[Any, ...],
    counts: dict[str, Any],
    t0: float,
) -> dict[str, Any]:
    """The outputs, rebuilt from the caches: results.json, index.html and the dog thumbnails
    (written atomically by ``write_outputs``). Completes ``counts``; returns the results document."""
    for st in states:
        if keysets and st.result.error is None:
            st.result.fpvec = fpvec_entries(store, st.content, tuple(cfg.fpvec_keys), keysets)
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
    return doc
