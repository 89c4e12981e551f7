"""The registered bases a scan compares with, checked before any work it would spoil.

Reads the registry only (fingerprint files of the bases, their sketches, the cached sketch
bounds of the zoo's models): no weight of a zoo model. Guarantees, when it returns: every base
the scan will compare with has a robust fingerprint chosen with the scan's token key (else one
:class:`RegistryError` / :class:`UsageError` line naming the base and the fix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from huref.errors import RegistryError, UsageError
from huref.invariants.calibration import BUILTIN_NULL
from huref.invariants.settings import Settings
from huref.registry.store import Base, Store
from huref.scan import cache
from huref.scan.tasks import robust_only

if TYPE_CHECKING:
    from huref.scan.runner import _State


def check_bases(store: Store, bases: list[Base], settings: Settings) -> dict[str, Any]:
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


def check_sketches_if_needed(
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
    from huref.registry.sketch_rule import decide

    null = store.null() or BUILTIN_NULL
    for st in states:
        if st.result.error is not None or st.result.fingerprint is None:
            continue
        cmps = st.result.comparisons or {}
        for sha, b in cache.stored_bounds(store, st.result.fingerprint).items():
            if sha not in cmps and not decide(b.ics, b.response, b.why, b.needs_response, null).ruled_out:
                return True
    return False


def cached_rule_outs(store: Store, fingerprint: str, shas: tuple[str, ...], null: Any) -> dict[str, float]:
    """The bases whose cached sketch bound rules them out for ``fingerprint`` (base -> bound ICS)."""
    from huref.registry.sketch_rule import decide

    cmps = cache.stored_comparisons(store, fingerprint)
    out: dict[str, float] = {}
    for sha, b in cache.stored_bounds(store, fingerprint).items():
        if sha not in shas or sha in cmps or b.ics is None:
            continue
        if decide(b.ics, b.response, b.why, b.needs_response, null).ruled_out:
            out[sha] = b.ics
    return out
