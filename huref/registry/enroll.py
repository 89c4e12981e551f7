"""Putting bases into the registry: from checkpoints or fingerprint files, one at a time or a folder.

Independent pairs (the Z-score null): when a base is added with ``--family F``, it is compared
with every registered base whose family is set and differs from F; each comparable pair is
recorded with its robust ICS (reason ``family``). ``mark_independent`` records one pair by
declaration (reason ``declared``), whatever the families. A pair is never recorded when the two
fingerprints share too few probe tokens to compare, nor when their comparison says ``derived``: a
mislabelled family must not poison the null (the CLI says which pairs were skipped and why).

A base's record binds its fingerprint to the SHA-256s of its weight files (its ``weights``
digest: a zoo model of the same name with those weights *is* the base, and is not compared with
it). Those hashes are taken after the tensors are read, so a checkpoint's files are identified
(``huref.checkpoint.hashing.FileIdentity``) before it is opened and again once it is fingerprinted:
a file replaced or rewritten in between would bind the new bytes' hashes to the old bytes'
fingerprint, and the add is refused instead (nothing is written; add it again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from huref.checkpoint.vocab import TOKENIZER_FILES
from huref.errors import FingerprintError, HurefError, RegistryError
from huref.invariants.fingerprint import Fingerprint
from huref.paths import shown
from huref.registry.store import Base, Store, weights_digest

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+/-]{0,199}")


@dataclass
class Enrolled:
    base: Base
    pairs: list[tuple[str, float]] = field(default_factory=list)  # (other base, robust ICS)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (other base, why)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or "//" in name or name.endswith("/"):
        raise RegistryError(
            f"invalid base name {name!r}: use letters, digits and . _ - + @ / (at most 200, starting with a letter or digit)"
        )
    return name


def _check_free(store: Store, name: str, replace: bool, what: str = "") -> Base | None:
    """The base ``name`` replaces (None if new); refused when taken without ``replace``, or when a
    base of the same name but for case exists (two bases 'Llama-A' and 'llama-a' read as one)."""
    old = store.base(name)
    if old is None:
        same = store.base_ignoring_case(name)
        if same is not None:
            raise RegistryError(
                f"{what}a base named {same.name!r} is already registered (names may not differ only "
                f"in case); use --name {same.name} --replace to replace it, or another name"
            )
    elif not replace:
        raise RegistryError(
            f"{what}a base named {name!r} is already registered; use --replace or another --name"
        )
    return old


def _fingerprint_bytes(fp: Fingerprint) -> bytes:
    from huref.invariants.fpfile import save_fingerprint

    with tempfile.TemporaryDirectory(prefix="huref-fp-") as d:
        path = save_fingerprint(fp, Path(d) / "fp.safetensors")
        return path.read_bytes()


# what a single-file checkpoint reads from beside it (its config and vocabulary)
_READ_BESIDE = ("config.json", *TOKENIZER_FILES)


def _checkpoint_files(p: Path) -> list[Path]:
    """The files fingerprinting ``p`` may read: every visible file of a checkpoint folder, or a
    single file with the config and tokenizer files beside it."""
    if p.is_dir():
        return sorted(f for f in p.iterdir() if not f.name.startswith(".") and f.is_file())
    return [p, *(p.parent / n for n in _READ_BESIDE if (p.parent / n).is_file())]


@contextlib.contextmanager
def _unchanged(p: Path) -> Iterator[None]:
    """Refuse a checkpoint a file of which changed while it was being fingerprinted."""
    from huref.checkpoint.hashing import changed_since, identities

    before = identities(_checkpoint_files(p))
    yield
    moved = changed_since(before)
    if moved:
        raise RegistryError(
            f"{shown(moved[0])} changed while it was being fingerprinted (replaced or rewritten): "
            "its hashes may not be the bytes that were read; nothing was added: add it again"
        )


def load_source(source: str | Path, settings: object = None) -> tuple[Fingerprint, bytes, str]:
    """(fingerprint, fingerprint-file bytes, what it came from) for a fingerprint file or a checkpoint."""
    from huref.invariants.resolve import resolve_fingerprint

    p = Path(source)
    if not p.exists():
        raise RegistryError(f"{p}: no such file or folder")
    r = resolve_fingerprint(p, settings, while_reading=_unchanged)  # a file's seal is verified
    if r.from_file:
        return r.fingerprint, p.read_bytes(), f"fingerprint file {p.resolve()}"
    return r.fingerprint, _fingerprint_bytes(r.fingerprint), f"checkpoint {p.resolve()}"


def _robust_ics(fa: Fingerprint, fb: Fingerprint) -> tuple[float | None, str | None]:
    """(robust ICS, None) for a pair usable in the null, or (None, why not)."""
    from huref.invariants import compare_fingerprints

    if fa.robust is None or fb.robust is None:
        return None, "no robust terms in one fingerprint"
    try:  # robust terms only: the null is a distribution of robust ICS (paper terms are slow to compare)
        c = compare_fingerprints(dataclasses.replace(fa, paper=None), dataclasses.replace(fb, paper=None))
    except FingerprintError as e:
        return None, f"not comparable ({e})"
    if c.ics is None:
        return None, "no robust ICS"
    if c.verdict == "derived":
        return (
            None,
            f"the two look derived (ICS {c.ics:.1f}, verdict derived), so they are not used as independent",
        )
    return c.ics, None


def _base_record(name: str, family: str | None, sha: str, fp: Fingerprint, source: str) -> Base:
    arch = fp.meta.get("architecture", {})
    return Base(
        name=name,
        family=family,
        fingerprint=sha,
        weights=weights_digest(fp.meta.get("model", {}).get("sha256", {}) or {}),
        source=source,
        architecture=arch.get("family"),
        n_layers=arch.get("n_layers"),
        added=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _family_pairs(
    store: Store, family: str | None, fp: Fingerprint, exclude: set[str]
) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """Pairs of a new base of ``family`` with every registered base of another family."""
    pairs: list[tuple[str, float]] = []
    skipped: list[tuple[str, str]] = []
    if not family:
        return pairs, skipped
    for other in store.bases():
        if other.name in exclude or not other.family or other.family == family:
            continue
        ics, why = _robust_ics(
            fp,
            store.load_base(other, "the new base is paired with every other family, so nothing was added; "),
        )
        if ics is None:
            skipped.append((other.name, why or ""))
        else:
            pairs.append((other.name, ics))
    return pairs, skipped


def _sketch_of(fp: Fingerprint) -> bytes | None:
    """The base's sketch (``huref.registry.sketch``) as stored; None without robust terms."""
    if fp.robust is None:
        return None
    from huref.registry.sketch import compute_sketch, to_bytes

    return to_bytes(compute_sketch(fp))


def _put_sketch(store: Store, sha: str, size: int, data: bytes | None) -> None:
    from huref.registry.sketch import SKETCH_VERSION

    if data is not None:
        store.put_sketch(sha, SKETCH_VERSION, size, data)


def add_base(
    store: Store,
    source: str | Path,
    name: str,
    family: str | None = None,
    replace: bool = False,
    settings: object = None,
) -> Enrolled:
    """Fingerprint (or load) ``source`` and register it as base ``name``."""
    check_name(name)
    if family is not None and not family.strip():
        raise RegistryError("--family must not be empty")
    _check_free(store, name, replace)  # early, before the fingerprinting
    fp, data, what = load_source(source, settings)
    sketch = _sketch_of(fp)  # before the transaction: the write lock is held for writes only
    # One write transaction holds the name check, the pairs with the other bases and the writes:
    # two concurrent adds then see each other (checked and paired before, one could replace the
    # other's base, or both miss their pair).
    with store.transaction():
        old = _check_free(store, name, replace)
        sha = store.put_blob(data)
        res = Enrolled(
            _base_record(name, family, sha, fp, what), *_family_pairs(store, family, fp, exclude={name})
        )
        store.insert_base(res.base)
        _put_sketch(store, sha, len(data), sketch)
        for other, ics in res.pairs:
            store.set_pair(name, other, ics, "family")
        if old is not None and old.fingerprint != sha:
            store.drop_unreferenced_blob(old.fingerprint)
    return res


def import_folder(
    store: Store, folder: str | Path, family: str | None = None, replace: bool = False
) -> list[Enrolled]:
    """Register every fingerprint file in ``folder`` (recursively), named by file stem.

    All or nothing: every file is read and verified first, and the bases are inserted in one
    transaction, so a bad file leaves the registry as it was.
    """
    from huref.invariants import load_fingerprint
    from huref.invariants.fpfile import is_fingerprint_file

    root = Path(folder)
    if not root.is_dir():
        raise RegistryError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*.safetensors") if is_fingerprint_file(p))
    if not files:
        raise RegistryError(f"{root}: no huref fingerprint files (*.safetensors with huref metadata) found")
    loaded: list[tuple[str, Fingerprint, bytes, Path]] = []
    seen: dict[str, Path] = {}
    for p in files:
        name = check_name(p.stem)
        if name.lower() in seen:
            raise RegistryError(
                f"{p}: the name {name!r} is also used by {seen[name.lower()]} (names may not differ "
                "only in case); rename one of the files"
            )
        seen[name.lower()] = p
        _check_free(store, name, replace, f"{p}: ")
        try:
            fp = load_fingerprint(p)
        except HurefError as e:
            raise RegistryError(f"nothing imported: {e}") from None
        loaded.append((name, fp, p.read_bytes(), p))
    results: list[Enrolled] = []
    new_names = {n for n, *_ in loaded}
    with store.transaction():  # names, pairs and writes see one registry state (see add_base)
        for name, fp, data, p in loaded:
            _check_free(store, name, replace, f"{p}: ")
            # the new files share one family (or none), so they form no pairs among themselves
            rec = _base_record(name, family, store.put_blob(data), fp, f"fingerprint file {p.resolve()}")
            results.append(Enrolled(rec, *_family_pairs(store, family, fp, exclude=new_names)))
        for res, (_, fp, data, _) in zip(results, loaded, strict=True):
            store.insert_base(res.base)
            _put_sketch(store, res.base.fingerprint, len(data), _sketch_of(fp))
            for other, ics in res.pairs:
                store.set_pair(res.base.name, other, ics, "family")
    return results


def mark_independent(store: Store, a: str, b: str) -> float:
    """Declare bases a and b independent; their robust ICS joins the null. Returns the ICS."""
    if a == b:
        raise RegistryError("a base cannot be independent of itself")
    ba, bb = store.require(a), store.require(b)
    fps = store.load_bases([ba, bb])
    ics, why = _robust_ics(fps[ba.name], fps[bb.name])
    if ics is None:
        raise RegistryError(f"cannot mark {a!r} and {b!r} independent: {why}")
    with store.transaction():
        store.set_pair(a, b, ics, "declared")
    return ics
