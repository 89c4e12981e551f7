"""One audit, end to end: resolve candidates, gather evidence, write the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.errors import UsageError
from huref.invariants import Settings
from huref.report.evidence import Candidate, candidate_from_path, gather
from huref.report.html import report_paths, write_report

if TYPE_CHECKING:
    from huref.checkpoint import Checkpoint


def _registry_candidates(names: list[str] | None, home: Path | None) -> tuple[list[Candidate], Any]:
    """Registered bases (all, or the named ones) and the registry's Z null."""
    from huref.registry.store import Store

    with Store(home, create=False) as store:
        chosen = [b for b in store.bases() if names is None or b.name in names]
        # --registry claims a comparison with every registered base: one that cannot be read
        # would silently drop out of the evidence, so the audit stops and says which and how to fix it
        why = "audit --registry needs every base, so it stops; " if names is None else ""
        fps = store.load_bases(chosen, why)
        out = [Candidate(b.name, "registry", fps[b.name], None) for b in chosen]
        return out, store.null()


def _refuse_ambiguous(paths: list[str], home: Path | None) -> None:
    """A bare name that is both a file or folder here and a registered base is refused: which one
    the auditor meant cannot be told (``./NAME`` names the path)."""
    bare = [b for b in paths if b == Path(b).name and not b.startswith(".")]
    if not bare:
        return
    from huref.registry.store import DB_NAME, Store, huref_home

    if not ((home if home is not None else huref_home()) / DB_NAME).is_file():
        return
    with Store(home, create=False) as store:
        both = sorted(set(bare) & {b.name for b in store.bases()})
    if both:
        raise UsageError(
            f"--base {both[0]} is both a path here and a registered base; write ./{both[0]} for the "
            "path, or run the audit from another folder for the registered base"
        )


def run_audit(
    suspect: str | Path,
    out: str | Path,
    bases: list[str],
    use_registry: bool,
    vectors: list[tuple[Path, Path]],
    settings: Settings,
    argv: list[str] | None = None,
    with_pcs: bool = True,
    with_dogs: bool = True,
    home: Path | None = None,
    registered: Sequence[str] = (),
    adapter_base: str | Path | None = None,
) -> tuple[dict[str, Any], Path, Path]:
    """Audit ``suspect`` against ``bases`` (paths, or else registered names), the ``registered``
    names (looked up in the registry only, never as paths), or every registered base.

    ``adapter_base``: the base of a PEFT adapter suspect, instead of the one its config names."""
    report_paths(out)  # a report that cannot be written is refused before the work
    subject: str | Path | Checkpoint = suspect
    if adapter_base is not None:
        if vectors:
            raise UsageError(
                "--adapter-base cannot be combined with --fpvec (audit the adapter with its own base)"
            )
        from huref.checkpoint import open_checkpoint

        subject = open_checkpoint(suspect, adapter_base)  # a missing or unfit base fails here, early
    if vectors:  # and so are vectors and key files that do not open or do not belong together
        from huref.fpvec.report import open_vector_and_keys

        for v, k in vectors:
            open_vector_and_keys(v, k)
    candidates: list[Candidate] = []
    null = None
    named = list(registered)
    paths: list[str] = []
    from huref.checkpoint.hub import hub_reference

    for b in bases:  # a path, a hub repository id (owner/name[@rev]), else a registered base's name
        (paths if Path(b).exists() or hub_reference(b) is not None else named).append(b)
    _refuse_ambiguous(paths, home)
    for b in paths:
        candidates.append(candidate_from_path(b, settings))
    if named or use_registry:
        reg_cands, null = _registry_candidates(None if use_registry else named, home)
        missing = set(named) - {c.name for c in reg_cands}
        if missing:
            raise UsageError(f"no such file, and not a registered base: {', '.join(sorted(missing))}")
        candidates += [c for c in reg_cands if c.name not in {x.name for x in candidates}]
    ev = gather(subject, candidates, settings, null, vectors, argv, with_pcs=with_pcs, with_dogs=with_dogs)
    html_path, json_path = write_report(ev, out)
    return ev, html_path, json_path
