"""Stamping: theta_out = theta_downstream + lambda * tau, streamed tensor by tensor.

Peak memory is two tensors (the largest downstream tensor and its tau), never the model: each
output tensor is read, has tau added in place and is written before the next is read, through
huref's atomic writer (temporary folder beside the destination, shards, then the small files, the
index last, then one rename). Nothing is ever written into the input folder.

Rules, by checkpoint name and shape (DESIGN §5):
- same name, same shape: added (in the downstream's dtype, one rounding);
- the token-embedding / lm_head tensors (found by role) when the vocabularies differ: tau is added
  to the rows of the token strings both vocabularies share; rows are matched by *string* through
  the normalised vocabularies, or by position only when asked (``rows_by_position``);
- a base that ties its output layer to the token embedding, stamped into a model that does not:
  the embedding's tau is added to the downstream lm_head as well (it changed both roles);
- a vector tensor with no tensor of that name downstream, or a shape mismatch in any other way:
  an error naming the tensor (missing names may be skipped on request);
- downstream tensors the vector does not cover are copied unchanged.

Stages: plan (:mod:`huref.fpvec.stamp_plan`, headers only), check (here), stream
(:mod:`huref.fpvec.stamp_stream`). Before anything is written, the downstream's robust invariants are compared with the base
fingerprint embedded in the vector; a model that is not derived from the vector's base is refused
unless ``force``. With a low-rank vector (a small stream) the comparison runs beside the stream
instead, and the output is completed only once it passed: a refusal still leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huref import __version__
from huref.arch import Model
from huref.checkpoint.writer import parse_size
from huref.errors import FPVecError
from huref.fpvec.check import compatibility
from huref.fpvec.stamp_plan import RowMatch, StampPlan, _row_match, extra_files, plan_stamp, skip_note
from huref.fpvec.stamp_stream import STAMP_META_KEY, add_int8_rows, stream_stamp
from huref.fpvec.vector import FP_CARD, Vector, _open_model, open_vector
from huref.paths import refuse_special

__all__ = [
    "STAMP_META_KEY",
    "RowMatch",
    "StampResult",
    "_row_match",
    "add_int8_rows",
    "check_output_path",
    "stamp_model",
    "stream_stamp",
]

log = logging.getLogger(__name__)

STAMP_FORMAT = "huref-fpvec-stamp/1"
READAHEAD_BYTES = 4 * 2**30  # at most this much of the vector is read ahead during the check
READAHEAD_CHUNK = 8 * 2**20


@dataclass
class StampResult:
    output: str
    lam: float
    verdict: str
    ics: float | None
    log10_p_value: float | None
    forced: bool
    stamped: int
    copied: int
    skipped: list[str]
    rows: dict[str, Any] | None
    key_commitment: str
    seconds: float
    check_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Compatibility:
    """The check stage's finding: is the downstream derived from the vector's base?"""

    verdict: str
    ics: float | None
    log10_p: float | None
    seconds: float
    notes: list[str]


def check_output_path(out: Path, inputs: list[Path]) -> None:
    """Refuse an existing output, or one that is (inside) an input folder."""
    from huref.checkpoint.outputs import refuse_inputs_as_output

    refuse_special(out, "-o", FPVecError)
    if out.exists() or out.is_symlink():
        raise FPVecError(f"{out} already exists; choose a new output folder")
    refuse_inputs_as_output(out, inputs)


def stamp_model(
    downstream: str | Path,
    vector: str | Path,
    out: str | Path,
    lam: float = 1.0,
    force: bool = False,
    skip_missing: bool = False,
    rows_by_position: bool = False,
    max_shard_size: str = "5GB",
    verify_hashes: bool = True,
    overlap_check: bool | None = None,
) -> StampResult:
    """Stamp ``downstream`` with ``vector`` into the new folder ``out``; see the module notes.

    In stages: the inputs are opened and checked (:func:`open_stamp_inputs`), the pairing of tau
    and downstream tensors is planned from headers (:func:`plan_stamp`), the downstream is checked
    to derive from the vector's base (:func:`check_derived`), and only then are the tensors
    streamed into ``out`` (:func:`stream_stamp`).

    ``verify_hashes`` checks every tau tensor against the digest recorded at extraction (in a
    helper thread, overlapped with writing); without it only the sealed metadata and the file
    structure are checked, which already catches truncation and tampered metadata.

    ``overlap_check`` (default: for a low-rank vector) runs the provenance check on a helper
    thread while the tensors stream, and waits for it before the output is complete: a refusal
    then still leaves nothing behind, after the stream's time instead of before it. Not for dense
    vectors: their stream already holds ~1.6 GB, and the check's layer on top passed 2 GB.
    """
    t0 = time.perf_counter()
    out, downstream, vector = Path(out), Path(downstream), Path(vector)
    shard_bytes, v, m = open_stamp_inputs(downstream, vector, out, lam, max_shard_size)
    sp = plan_stamp(v, m, downstream, skip_missing, rows_by_position)
    extra = extra_files(m)
    found: list[Compatibility] = []

    def card(comp: Compatibility) -> None:
        found.append(comp)
        extra[FP_CARD] = (
            json.dumps(_stamp_card(v, m, sp, lam, comp, verify_hashes), indent=2, ensure_ascii=False) + "\n"
        ).encode()

    if overlap_check if overlap_check is not None else bool(v.factored):
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(check_derived, v, m, downstream, vector, force)
            try:
                counts = stream_stamp(
                    v, m, sp, out, lam, verify_hashes, shard_bytes, extra, lambda: card(pending.result())
                )
            finally:
                pending.cancel()
    else:
        card(check_derived(v, m, downstream, vector, force))
        counts = stream_stamp(v, m, sp, out, lam, verify_hashes, shard_bytes, extra)
    comp = found[0]
    notes = comp.notes
    row_note = "; ".join(
        f"{n}: rows matched by {r['mode']} ({r['shared']} shared)" for n, r in sp.rows.items()
    )
    if row_note:
        notes.append(row_note)
    if sp.tied_note:
        notes.append(sp.tied_note)
    if sp.skipped:
        notes.append(skip_note(sp.skipped))
    return StampResult(
        str(out),
        lam,
        comp.verdict,
        comp.ics,
        comp.log10_p,
        comp.verdict != "derived",
        counts["stamped"],
        counts["copied"],
        sp.skipped,
        sp.rows or None,
        v.commitment,
        time.perf_counter() - t0,
        comp.seconds,
        notes,
    )


def open_stamp_inputs(
    downstream: Path, vector: Path, out: Path, lam: float, max_shard_size: str
) -> tuple[int, Vector, Model]:
    """Check stage, arguments: refuse an unusable output path, lambda or shard size, open the
    vector (its seal and metadata checked) and the downstream model (headers only), and refuse a
    checkpoint format that cannot be written back. Returns (shard byte cap, vector, model); each
    refusal is one :class:`FPVecError` line, before anything is written."""
    check_output_path(out, [downstream, vector])
    refuse_special(downstream, "downstream model", FPVecError)
    if not (lam == lam and abs(lam) < 1e6):  # NaN, infinite or absurd
        raise FPVecError(f"--lambda must be a number between -1e6 and 1e6 (got {lam})")
    shard_bytes = parse_size(max_shard_size)
    v = open_vector(vector)
    m = _open_model(downstream, "downstream model")
    if m.ckpt.format not in ("hf-safetensors", "safetensors", "hf-bin"):
        raise FPVecError(f"{downstream}: stamping needs a Hugging Face checkpoint (got {m.ckpt.format})")
    return shard_bytes, v, m


def check_derived(v: Vector, m: Model, downstream: Path, vector: Path, force: bool) -> Compatibility:
    """Check stage, provenance: compare the downstream's robust invariants with the base
    fingerprint embedded in the vector (reads the downstream's tensors that the invariants need;
    meanwhile the vector's first bytes are read ahead into the page cache). A model not shown to
    derive from the base is refused with one :class:`FPVecError` unless ``force``, in which case
    the finding becomes a note."""
    tc = time.perf_counter()
    checked = threading.Event()
    ahead_reader = threading.Thread(target=_read_ahead, args=(vector, checked), daemon=True)
    ahead_reader.start()
    try:
        verdict, ics, log10_p = compatibility(v, m)
    finally:
        checked.set()
        ahead_reader.join()  # within one chunk's read
    check_s = time.perf_counter() - tc
    notes = []
    if verdict != "derived":
        what = (
            f"{downstream} is not shown to derive from the vector's base {v.doc['base']['name']!r} "
            f"(verdict {verdict}, robust ICS {ics if ics is None else round(ics, 1)})"
        )
        if not force:
            raise FPVecError(f"{what}; refusing to stamp (use --force to stamp anyway)")
        notes.append(what + "; stamped because --force was given")
        log.warning("%s; stamping anyway (--force)", what)
    return Compatibility(verdict, ics, log10_p, check_s, notes)


def _stamp_card(
    v: Vector, m: Model, sp: StampPlan, lam: float, comp: Compatibility, verify_hashes: bool
) -> dict[str, Any]:
    """The card written beside the stamped model's config: what was added, from which vector."""
    return {
        "format": STAMP_FORMAT,
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key_commitment": v.commitment,
        "lambda": lam,
        "vector": {
            "seal": v.file.metadata().get("huref.seal"),
            "base": v.doc["base"]["name"],
            "base_fingerprint_sha256": v.doc["base"]["fingerprint_sha256"],
            "dropped_roles": v.doc.get("dropped_roles", []),
        },
        "downstream": {"name": m.ckpt.name},
        "compatibility": {
            "verdict": comp.verdict,
            "ics": comp.ics,
            "log10_p_value": comp.log10_p,
            "forced": comp.verdict != "derived",
        },
        "rows": sp.rows,
        "skipped": sp.skipped,
        "tau_of": {d: n for d, n in sp.tau_of.items() if d != n},  # downstream tensors given another's tau
        "hashes_verified": verify_hashes,
    }


def _read_ahead(path: Path, stop: threading.Event, limit: int = READAHEAD_BYTES) -> None:
    """Read the vector's first ``limit`` bytes into the page cache until ``stop`` is set.

    The compatibility check computes for seconds while the disk idles; once the tensors stream,
    reading the vector and writing back the output share the disk (measured on a 7B: ~250 MB/s
    read beside ~500 MB/s written, the disk's whole throughput). Plain reads into one small
    buffer: the kernel's read-ahead advice (``POSIX_FADV_WILLNEED``) fetched 8x less in the same
    time. Best effort: any error ends it quietly.
    """
    buf = bytearray(READAHEAD_CHUNK)
    try:
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < limit and not stop.is_set():
                got = f.readinto(buf)
                if not got:
                    break
                done += got
    except OSError:
        pass
