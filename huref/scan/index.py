"""Indexed scans: which registered bases a model is compared with exactly.

An indexed scan (the default; ``huref scan --exhaustive`` turns it off) compares a model exactly
(``compare_fingerprints``, as ``huref compare`` does) with every base whose sketch cannot rule it
out, and reads only those bases' fingerprint files. The rule is ``huref.registry.sketch``'s.

What is cached (in ``comparisons``, under ``cache.SKETCH_METHOD``): the sketch's bounds for each
(model, base) pair, not its decision; every scan re-applies the rule with its own null, so a null
that moves (new independent pairs) can only send a pair back to the exact comparison, never leave a
stale rule-out standing. A pair whose probe tokens share fewer than 16 strings gets the comparison's
own result (that error) without reading the base's file.

Before any work the scan checks every base without reading its file: its sketch exists (computed
from the file, once, for a base registered before sketches), its token key is the scan's, and its
file has the size the sketch was computed from. The bases compared exactly are read and checked in
full (SHA-256 and seal), as in an exhaustive scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from huref.errors import RegistryError, UsageError
from huref.invariants.calibration import NullModel
from huref.registry.store import Base, Store
from huref.scan import cache
from huref.scan.cache import Cmp, SketchBounds
from huref.scan.discover import one_line

PURPOSE = "the scan needs every base, so it stops before any work; "


def check_base_sketches(store: Store, bases: Sequence[Base], settings: Any) -> dict[str, Any]:
    """fingerprint hash -> Sketch of every base, checked as the notes say (one line on failure)."""
    from huref.invariants.tokens import key_digest

    sketches = store.base_sketches(bases, PURPOSE)
    store.check_blob_sizes(bases, store.sketch_sizes(b.fingerprint for b in bases), PURPOSE)
    want = key_digest(settings.key)
    for b in bases:
        sk = sketches.get(b.fingerprint)
        if sk is None:
            raise RegistryError(
                f"base {b.name!r} has no robust-mode fingerprint; re-add it from its checkpoint"
            )
        if sk.key_digest != want:
            raise UsageError(
                f"base {b.name!r} chose its probe tokens with another --token-key than this scan; "
                "scan with the key the bases were registered with"
            )
    return sketches


def model_sketch(store: Store, fingerprint: str) -> Any:
    """A model's sketch: stored, or computed from its (checked) fingerprint file and stored."""
    from huref.registry import sketch as sk

    row = store.sketch_rows([fingerprint]).get(fingerprint)
    got = sk.from_bytes(row[2]) if row is not None and row[0] == sk.SKETCH_VERSION else None
    if got is None:
        got = sk.compute_sketch(store.load_blob(fingerprint))
        store.put_sketch(
            fingerprint, got.version, store.blob_path(fingerprint).stat().st_size, sk.to_bytes(got)
        )
    return got


def _new_bounds(
    model: Any, shas: Sequence[str], sketches: dict[str, Any]
) -> tuple[dict[str, SketchBounds], list[Cmp]]:
    from huref.registry import sketch_rule as rule

    out: dict[str, SketchBounds] = {}
    known: list[Cmp] = []
    for sha in shas:
        base = sketches[sha]
        k = rule.shared_too_few(model, base)
        if k is not None:
            known.append(Cmp(sha, None, None, 0, one_line(rule.too_few_message(k))))
            continue
        ics_b, resp_b, why = rule.bounds(model, base)
        out[sha] = SketchBounds(ics_b, resp_b, rule.runs_neuron_test(model, base), why)
    return out, known


def select_bases(
    store: Store, fingerprint: str, base_shas: Sequence[str], sketches: dict[str, Any], null: NullModel
) -> tuple[list[str], dict[str, float]]:
    """(bases to compare exactly, {base: ICS bound} of the bases ruled out) for one model.

    Bases with a stored exact comparison are neither: their comparison stands."""
    from huref.registry.sketch_rule import decide

    cmps = cache.stored_comparisons(store, fingerprint)
    bounds = cache.stored_bounds(store, fingerprint)
    missing = [s for s in dict.fromkeys(base_shas) if s not in cmps]
    fresh = [s for s in missing if s not in bounds]
    if fresh:
        new, known = _new_bounds(model_sketch(store, fingerprint), fresh, sketches)
        cache.record_bounds(store, fingerprint, new, known)
        bounds.update(new)
        cmps.update({c.base_fingerprint: c for c in known})
    compare: list[str] = []
    ruled: dict[str, float] = {}
    for sha in missing:
        if sha in cmps:
            continue
        b = bounds[sha]
        d = decide(b.ics, b.response, b.why, b.needs_response, null)
        if d.ruled_out and b.ics is not None:
            ruled[sha] = b.ics
        else:
            compare.append(sha)
    return compare, ruled
