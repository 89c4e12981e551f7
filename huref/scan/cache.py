"""The scan caches, kept in the registry database so that one transaction covers a model's result
(their tables: ``huref.scan.store``).

Three levels, each keyed so that an unchanged zoo is rescanned without reading a weight:
1. ``file_hashes``: (real path, size, mtime_ns, ctime_ns, inode) -> SHA-256. A file whose stat is
   unchanged is not read again, whichever link it is reached through; a touched file is re-hashed,
   and so is one rewritten in place with its old mtime put back (``touch -r``, ``rsync
   --inplace -t``, archive extraction): the kernel sets ctime on every change and no call sets it back.
2. ``fingerprint_cache``: (content key, settings key) -> fingerprint file. The content key is a
   digest of the SHA-256s of every file the fingerprint depends on (weights, config, tokenizer);
   the settings key covers the fingerprint settings and the tool version.
3. ``comparisons``: (fingerprint, base fingerprint, method) -> robust ICS and log10 p. Z and the
   verdict are derived from these at report time with the registry's current null, so adding an
   independent pair never invalidates the cache; adding a base costs one comparison per model.
A cached fingerprint file is read (and checked against its SHA-256 name and its seal) only when
a model needs comparing with a new base; a file that fails the check makes the entry a miss, and the
fresh fingerprint replaces it (``record_model`` keeps an existing entry only when its file is
intact), so one damaged file never blocks later scans.
Broken models are remembered too (``failures``, keyed by the stats of their files): a model that
failed with a huref error is not read again until one of its files changes. Failures that may be
transient (a worker that died, an unexpected exception) are not remembered.

Paths and names need not be UTF-8 (a folder created from bytes): the database and the hashed keys
take them as their file-system bytes (``path_key``, ``_fs_bytes``), never as text that cannot be
encoded.

A model's hashes, fingerprint and comparisons are written in **one transaction** as soon as its
task returns: a scan killed at any point keeps every finished model and nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huref import __version__
from huref.paths import shown, special_kind
from huref.registry.sketch import SKETCH_VERSION
from huref.registry.store import Store
from huref.scan.discover import Candidate, one_line
from huref.scan.store import scan_conn

METHOD = f"huref-{__version__}/robust-ics+neuron-test/convergent-null"  # cached verdicts of the old null are not reused
FPVEC_METHOD = f"huref-{__version__}/fpvec-greedy+near-miss"
# rows of ``comparisons`` that hold what a base's sketch says about a model, not a comparison:
# ics = ICS bound, log10_p = response bound, shared_tokens = 1 when a neuron test would run,
# error = why the sketch cannot stand for the comparison (the rule is re-applied with each scan's null)
SKETCH_METHOD = f"huref-{__version__}/sketch-bounds/{SKETCH_VERSION}"  # a new rule: bounds anew


class InputError(Exception):
    """A candidate's files cannot be used (dangling link, FIFO, unreadable); one line."""


@dataclass(frozen=True)
class FileStat:
    path: str  # as found in the zoo (what a worker opens)
    real: str  # symlinks resolved: the cache key
    size: int
    mtime_ns: int
    inode: int
    label: str  # the file's role in the content key: its name inside a folder, 'file' otherwise
    ctime_ns: int = 0  # set by the kernel on every change (permissions too), never set back


@dataclass(frozen=True)
class Cmp:
    """One model-vs-base comparison, independent of the null."""

    base_fingerprint: str
    ics: float | None
    log10_p: float | None
    shared_tokens: int
    error: str | None = None  # e.g. not comparable (no shared probe tokens)
    detail: dict[str, Any] | None = None  # layer alignment


def comparison_row(base_fingerprint: str, c: Any) -> Cmp:
    """What the cache keeps of a fresh comparison (``huref.invariants.compare.Comparison``): the
    verdict's inputs as columns; the layer alignment and the scan-kept registered statistics
    (``huref.invariants.statistics``) in ``detail``."""
    from huref.invariants.statistics import scan_names

    detail: dict[str, Any] = {"layer_alignment": c.layer_alignment}
    kept = {n: c.stats.get(n) for n in scan_names()}
    if kept:
        detail["stats"] = kept
    return Cmp(base_fingerprint, c.ics, c.log10_p_value, c.shared_tokens, None, detail)


@dataclass(frozen=True)
class FpvecRow:
    """FP-Vec verification of one model with one key set (identified by its commitment)."""

    commitment: str
    fsr: float | None
    hits: int | None
    n: int | None
    near_miss_fsr: float | None
    error: str | None = None


@dataclass(frozen=True)
class CachedFingerprint:
    fingerprint: str
    format: str
    weights: str


def _fs_bytes(text: str) -> bytes:
    """A path or file name as the bytes the file system holds (``os.fsencode``'s inverse of the
    surrogate escapes that stand for bytes that are not UTF-8)."""
    return text.encode("utf-8", "surrogateescape")


def path_key(real: str) -> str:
    """A real path as database text: itself when it is UTF-8, else its bytes in hex behind a
    prefix no absolute path starts with (SQLite refuses the surrogates of a non-UTF-8 name)."""
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        return "bytes:" + _fs_bytes(real).hex()
    return real


def stat_files(c: Candidate) -> tuple[FileStat, ...]:
    """Stat every file of a candidate (following links); raises InputError on unusable files."""
    out = []
    for p in c.files:
        own = c.kind != "folder" and p == c.path  # a single-file model's own file; else a named file
        rel = "file" if own else p.name
        where = c.name if own else f"{c.name}/{shown(p.name)}"
        try:
            st = os.stat(p)
        except FileNotFoundError:
            target = os.readlink(p) if os.path.islink(p) else None
            raise InputError(
                one_line(f"{where}: {'dangling symlink to ' + target if target else 'vanished'}")
            ) from None
        except OSError as e:
            raise InputError(one_line(f"{where}: cannot read ({e.strerror or e})")) from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else special_kind(p) or "special"
            raise InputError(one_line(f"{where}: not a regular file ({kind})"))
        if not os.access(p, os.R_OK):
            raise InputError(one_line(f"{where}: cannot read (permission denied)"))
        out.append(
            FileStat(str(p), os.path.realpath(p), st.st_size, st.st_mtime_ns, st.st_ino, rel, st.st_ctime_ns)
        )
    if not out:
        raise InputError(one_line(f"{c.name}: no weight files"))
    return tuple(out)


def content_key(stats: tuple[FileStat, ...], hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for fs in sorted(stats, key=lambda f: f.label):
        h.update(_fs_bytes(f"{fs.label}\0{hashes[fs.path]}\n"))
    return h.hexdigest()


def settings_key(settings: Any) -> str:
    from huref.invariants.settings import FORMAT_VERSION
    from huref.invariants.tokens import key_digest

    doc = {
        "format": FORMAT_VERSION,
        "tool": __version__,
        "n": settings.n,
        "paper_n": settings.paper_n if "paper" in settings.modes else None,
        "n_responses": settings.n_responses,
        "modes": list(settings.modes),
        "key": key_digest(settings.key),
        "frequency_list": str(settings.frequency_list) if settings.frequency_list else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- reads -------------------------------------------------------------------------------------


def known_hashes(store: Store, stats: tuple[FileStat, ...]) -> dict[str, str] | None:
    """path -> SHA-256 when every file's stat matches the cache; else None."""
    out = {}
    conn = scan_conn(store)
    for fs in stats:
        r = conn.execute(
            "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ? "
            "AND inode = ?",
            (path_key(fs.real), fs.size, fs.mtime_ns, fs.ctime_ns, fs.inode),
        ).fetchone()
        if r is None:
            return None
        out[fs.path] = r[0]
    return out


def cached_fingerprint(store: Store, content: str, settings: str) -> CachedFingerprint | None:
    """The cache entry for a model, when its fingerprint file is present (not read: see the notes)."""
    conn = scan_conn(store)
    r = conn.execute(
        "SELECT fingerprint, format, weights FROM fingerprint_cache WHERE content = ? AND settings = ?",
        (content, settings),
    ).fetchone()
    if r is None or not store.blob_path(r[0]).is_file():
        return None
    return CachedFingerprint(*r)


def stored_comparisons(store: Store, fingerprint: str) -> dict[str, Cmp]:
    conn = scan_conn(store)
    rows = conn.execute(
        "SELECT base_fingerprint, ics, log10_p, shared_tokens, error, detail FROM comparisons "
        "WHERE fingerprint = ? AND method = ?",
        (fingerprint, METHOD),
    ).fetchall()
    return {r[0]: Cmp(r[0], r[1], r[2], r[3] or 0, r[4], json.loads(r[5]) if r[5] else None) for r in rows}


@dataclass(frozen=True)
class SketchBounds:
    ics: float | None
    response: float | None
    needs_response: bool
    why: str


def stored_bounds(store: Store, fingerprint: str) -> dict[str, SketchBounds]:
    conn = scan_conn(store)
    rows = conn.execute(
        "SELECT base_fingerprint, ics, log10_p, shared_tokens, error FROM comparisons "
        "WHERE fingerprint = ? AND method = ?",
        (fingerprint, SKETCH_METHOD),
    ).fetchall()
    return {r[0]: SketchBounds(r[1], r[2], bool(r[3]), r[4] or "") for r in rows}


def record_bounds(
    store: Store, fingerprint: str, bounds: dict[str, SketchBounds], known: Sequence[Cmp] = ()
) -> None:
    """A model's sketch bounds against bases, and comparisons known without the bases' files."""
    scan_conn(store)  # the tables first: creating them is a transaction of its own
    with store.transaction() as conn:
        for sha, b in bounds.items():
            conn.execute(
                "INSERT OR REPLACE INTO comparisons(fingerprint, base_fingerprint, method, ics, log10_p, "
                "shared_tokens, error, detail) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (fingerprint, sha, SKETCH_METHOD, b.ics, b.response, int(b.needs_response), b.why or None),
            )
        for c in known:
            conn.execute(
                "INSERT OR IGNORE INTO comparisons(fingerprint, base_fingerprint, method, ics, log10_p, "
                "shared_tokens, error, detail) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (fingerprint, c.base_fingerprint, METHOD, c.ics, c.log10_p, c.shared_tokens, c.error),
            )


def stored_fpvec(store: Store, content: str) -> dict[str, FpvecRow]:
    conn = scan_conn(store)
    rows = conn.execute(
        "SELECT commitment, fsr, hits, n, near_miss_fsr, error FROM fpvec_results WHERE content = ? AND method = ?",
        (content, FPVEC_METHOD),
    ).fetchall()
    return {r[0]: FpvecRow(*r) for r in rows}


def failure_signature(stats: tuple[FileStat, ...], settings: str) -> str:
    """A broken model's identity without reading it: its files' stats, the settings, the method."""
    h = hashlib.sha256(f"{settings}\0{METHOD}\n".encode())
    for fs in sorted(stats, key=lambda f: f.real):
        h.update(_fs_bytes(f"{fs.real}\0{fs.size}\0{fs.mtime_ns}\0{fs.ctime_ns}\0{fs.inode}\n"))
    return h.hexdigest()


def known_failure(store: Store, signature: str) -> str | None:
    conn = scan_conn(store)
    r = conn.execute("SELECT error FROM failures WHERE signature = ?", (signature,)).fetchone()
    return None if r is None else str(r[0])


def record_failure(store: Store, signature: str, error: str) -> None:
    scan_conn(store)  # the tables first: creating them is a transaction of its own
    with store.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO failures(signature, error) VALUES (?, ?)", (signature, error))


def count_fingerprints(store: Store) -> int:
    conn = scan_conn(store)
    return int(conn.execute("SELECT COUNT(*) FROM fingerprint_cache").fetchone()[0])


# -- writes (one transaction per finished model) -----------------------------------------------


def record_model(
    store: Store,
    stats: tuple[FileStat, ...],
    hashes: dict[str, str] | None,
    content: str,
    settings: str,
    fingerprint_bytes: bytes | None,
    fingerprint: str | None,
    fmt: str,
    weights: str,
    seconds: float,
    comparisons: list[Cmp],
    fpvec: Sequence[FpvecRow] = (),
) -> str:
    """Store one model's result; returns its fingerprint hash.

    A freshly computed fingerprint is written first (atomically, by content hash), then every row
    in one transaction. When the cache already holds a fingerprint for the same content and
    settings (a touched but unchanged file), that one is kept and the new one dropped, so the
    identity of a model's fingerprint does not change between scans; unless its file is damaged,
    and then the new one replaces it.
    """
    scan_conn(store)  # the tables first: creating them is a transaction of its own
    with store.transaction() as conn:  # the file is stored under the lock that its row is written with
        existing = cached_fingerprint(store, content, settings)
        stale = None
        if (
            existing is not None
            and fingerprint_bytes is not None
            and not store.blob_intact(existing.fingerprint)
        ):
            stale, existing = existing.fingerprint, None
        if existing is not None:
            fingerprint = existing.fingerprint
        elif fingerprint_bytes is not None:
            fingerprint = store.put_blob(fingerprint_bytes)
        if fingerprint is None:
            raise ValueError("record_model needs a fingerprint or its bytes")
        for fs in stats if hashes else ():
            conn.execute(
                "INSERT OR REPLACE INTO file_hashes(path, size, mtime_ns, ctime_ns, inode, sha256) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (path_key(fs.real), fs.size, fs.mtime_ns, fs.ctime_ns, fs.inode, hashes[fs.path]),  # type: ignore[index]
            )
        if existing is None:
            conn.execute(
                "INSERT OR REPLACE INTO fingerprint_cache(content, settings, fingerprint, format, weights, seconds) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (content, settings, fingerprint, fmt, weights, seconds),
            )
            if stale is not None and stale != fingerprint:
                store.drop_unreferenced_blob(stale)
        for c in comparisons:
            conn.execute(
                "INSERT OR IGNORE INTO comparisons(fingerprint, base_fingerprint, method, ics, log10_p, "
                "shared_tokens, error, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    fingerprint,
                    c.base_fingerprint,
                    METHOD,
                    c.ics,
                    c.log10_p,
                    c.shared_tokens,
                    c.error,
                    json.dumps(c.detail) if c.detail is not None else None,
                ),
            )
        for v in fpvec:
            conn.execute(
                "INSERT OR REPLACE INTO fpvec_results(content, commitment, method, fsr, hits, n, near_miss_fsr, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (content, v.commitment, FPVEC_METHOD, v.fsr, v.hits, v.n, v.near_miss_fsr, v.error),
            )
    return fingerprint


def thumbnail(store: Store, fingerprint: str, renderer: str, size: int) -> bytes | None:
    conn = scan_conn(store)
    r = conn.execute(
        "SELECT png FROM thumbnails WHERE fingerprint = ? AND renderer = ? AND size = ?",
        (fingerprint, renderer, size),
    ).fetchone()
    return bytes(r[0]) if r else None


def put_thumbnail(store: Store, fingerprint: str, renderer: str, size: int, png: bytes) -> None:
    scan_conn(store)  # the tables first: creating them is a transaction of its own
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO thumbnails(fingerprint, renderer, size, png) VALUES (?, ?, ?, ?)",
            (fingerprint, renderer, size, png),
        )
