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

Before anything is written, the downstream's robust invariants are compared with the base
fingerprint embedded in the vector; a model that is not derived from the vector's base is refused
unless ``force``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from huref import __version__
from huref.arch import Model
from huref.checkpoint.source import DTYPES, BufferPool
from huref.checkpoint.writer import TensorPlan, parse_size, write_checkpoint
from huref.errors import FPVecError, HurefError
from huref.fpvec.check import compatibility
from huref.fpvec.vector import (
    FP_CARD,
    SCALE_PREFIX,
    Vector,
    _open_model,
    all_finite,
    dequantize_rows,
    open_vector,
    vocab_roles,
)
from huref.paths import refuse_special, shown

log = logging.getLogger(__name__)

STAMP_FORMAT = "huref-fpvec-stamp/1"
STAMP_META_KEY = "huref.fpvec.stamp"
PREFETCH_MAX_BYTES = 128 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

READAHEAD_BYTES = 4 * 2**30  # at most this much of the vector is read ahead during the check
READAHEAD_CHUNK = 8 * 2**20
ROW_BLOCK = 4096  # vocabulary rows updated per step when rows are matched


@dataclass
class RowMatch:
    mode: str  # 'identical' | 'token-string' | 'position' | 'none'
    base_rows: int
    downstream_rows: int
    shared: int
    src: torch.Tensor | None = None  # [shared] base row ids
    dst: torch.Tensor | None = None  # [shared] downstream row ids

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "base_rows": self.base_rows,
            "downstream_rows": self.downstream_rows,
            "shared": self.shared,
        }


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


def check_output_path(out: Path, inputs: list[Path]) -> None:
    """Refuse an existing output, or one that is (inside) an input folder."""
    from huref.checkpoint.outputs import refuse_inputs_as_output

    refuse_special(out, "-o", FPVecError)
    if out.exists() or out.is_symlink():
        raise FPVecError(f"{out} already exists; choose a new output folder")
    refuse_inputs_as_output(out, inputs)


def _row_match(v: Vector, m: Model, name: str, rows_by_position: bool, target: str | None = None) -> RowMatch:
    """How the rows of tau ``name`` map onto the rows of the downstream tensor ``target`` (default:
    the tensor of the same name)."""
    vb = v.vocab
    vd = m.ckpt.vocab
    nb, nd = v.shape(name)[0], m.ckpt.source.info(target or name).shape[0]
    if vb is not None and vd is not None:
        if list(vd.tokens) == list(vb) and nb == nd:
            return RowMatch("identical", nb, nd, nb)
        # Normalised strings can repeat within one vocabulary (a byte-fallback token <0x41> and
        # the token A are both "A"): the k-th occurrence downstream takes the k-th in the base.
        where: dict[str, list[int]] = {}
        for i, t in enumerate(vb[:nb]):
            if t:
                where.setdefault(t, []).append(i)
        src, dst = [], []
        taken: dict[str, int] = {}
        for j, t in enumerate(vd.tokens[:nd]):
            k = taken.get(t, 0)
            if t and k < len(where.get(t, ())):
                taken[t] = k + 1
                src.append(where[t][k])
                dst.append(j)
        return RowMatch(
            "token-string",
            nb,
            nd,
            len(src),
            torch.tensor(src, dtype=torch.long),
            torch.tensor(dst, dtype=torch.long),
        )
    if not rows_by_position:
        side = "the vector's base" if vb is None else "the downstream model"
        raise FPVecError(
            f"tensor {name}: {side} has no tokenizer, so embedding rows cannot be matched by token; "
            "pass --rows-by-position to add tau to the first shared rows by id (or extract without embeddings)"
        )
    k = min(nb, nd)
    if nb == nd:
        return RowMatch("position", nb, nd, k)
    return RowMatch("position", nb, nd, k, torch.arange(k), torch.arange(k))


def _extra_files(m: Model) -> dict[str, bytes]:
    """Every small file beside the downstream's weights (config, tokenizer, generation config)."""
    src = m.ckpt.path if m.ckpt.path.is_dir() else m.ckpt.path.parent
    weights = {p.resolve() for p in m.ckpt.weight_files()}
    out: dict[str, bytes] = {}
    if m.ckpt.path.is_dir():
        for p in sorted(src.iterdir()):
            if (
                not p.is_file()
                or p.resolve() in weights
                or p.name in INDEX_NAMES
                or p.suffix in WEIGHT_SUFFIXES
                or p.name == FP_CARD
                or p.name.startswith(".")
            ):
                continue
            out[p.name] = p.read_bytes()
    if "config.json" not in out:
        out["config.json"] = (json.dumps(m.ckpt.config, indent=2, sort_keys=True) + "\n").encode()
    return out


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
) -> StampResult:
    """Stamp ``downstream`` with ``vector`` into the new folder ``out``; see the module notes.

    ``verify_hashes`` checks every tau tensor against the digest recorded at extraction (in a
    helper thread, overlapped with writing); without it only the sealed metadata and the file
    structure are checked, which already catches truncation and tampered metadata.
    """
    t0 = time.perf_counter()
    out = Path(out)
    downstream, vector = Path(downstream), Path(vector)
    check_output_path(out, [downstream, vector])
    refuse_special(downstream, "downstream model", FPVecError)
    if not (lam == lam and abs(lam) < 1e6):  # NaN, infinite or absurd
        raise FPVecError(f"--lambda must be a number between -1e6 and 1e6 (got {lam})")
    shard_bytes = parse_size(max_shard_size)
    v = open_vector(vector)
    m = _open_model(downstream, "downstream model")
    src = m.ckpt.source
    if m.ckpt.format not in ("hf-safetensors", "safetensors", "hf-bin"):
        raise FPVecError(f"{downstream}: stamping needs a Hugging Face checkpoint (got {m.ckpt.format})")

    # 1. structure, from headers only: every vector tensor must have a home downstream
    base_roles = v.doc["base"].get("vocab_roles", {})
    down_vocab = vocab_roles(m)
    down_names = set(src.names())
    skipped: list[str] = []
    tau_of: dict[str, str] = {}  # downstream tensor -> the vector tensor added to it
    for n in v.names:
        if n in down_names:
            tau_of[n] = n
        elif skip_missing:
            skipped.append(n)
        else:
            raise FPVecError(
                f"vector tensor {n} has no counterpart in {downstream} "
                f"(vector for {v.doc['base']['family']}, model is {m.spec.name}); --skip-missing ignores it"
            )
    if skipped and len(skipped) == len(v.names):
        raise FPVecError(f"no tensor of the vector matches {downstream}: wrong architecture")
    # a base that ties its output layer to the token embedding changed both roles through one tau:
    # a downstream model with an lm_head of its own gets the embedding's tau there too (else half
    # the fingerprint is lost)
    tied_note = None
    head, embed_tau = down_vocab.get("lm_head"), base_roles.get("embed")
    if "lm_head" not in base_roles and head is not None and head not in tau_of and embed_tau in tau_of:
        tau_of[head] = embed_tau
        tied_note = f"{head}: the vector's base ties it to the token embedding; the embedding's tau was added to it too"
    base_vocab_names = set(base_roles.values())
    matches: dict[str, RowMatch] = {}
    for d, n in tau_of.items():
        vs, ds = v.shape(n), src.info(d).shape
        if n in base_vocab_names and d in down_vocab.values():
            if vs[1:] != ds[1:]:
                raise FPVecError(f"tensor {d}: vector shape {list(vs)} does not fit the model's {list(ds)}")
            matches[d] = _row_match(v, m, n, rows_by_position, target=d)
        elif vs != ds:
            raise FPVecError(f"tensor {d}: vector shape {list(vs)} does not fit the model's {list(ds)}")
        if src.info(d).dtype not in DTYPES or not DTYPES[src.info(d).dtype].is_floating_point:
            raise FPVecError(f"tensor {d} is stored as {src.info(d).dtype} downstream: cannot add tau to it")

    # 2. is the downstream model derived from the vector's base? (the disk reads the vector meanwhile)
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

    # 3. stream: read, add, write; one tensor at a time
    order = _disk_order(m)
    plan = [TensorPlan(n, src.info(n).shape, DTYPES[src.info(n).dtype]) for n in order]
    last_tau = [n for n in order if n in tau_of][-1] if tau_of else None
    counts = {"stamped": 0, "copied": 0}
    # Two helper threads overlap the work of consecutive tensors (file reads and hashing release the
    # GIL): one reads tensor i+1 and its tau while tensor i is written (only tensors up to
    # PREFETCH_MAX_BYTES: a 7B's layer matrices, not its embedding), one hashes tau i meanwhile.
    # Peak memory: two tensors and their taus plus one tau being hashed, under 1 GB for a 7B.
    pool = ThreadPoolExecutor(max_workers=1)
    reader = ThreadPoolExecutor(max_workers=1)
    pending: list[tuple[str, Future[str]]] = []
    ahead: dict[str, Future[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]] = {}
    position = {n: i for i, n in enumerate(order)}

    buffers = BufferPool()

    def load(name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(downstream tensor, stored tau or None, its int8 row scales or None)."""
        t = src.read(name, buffers)
        if name not in tau_of:
            return t, None, None
        return (t, *v.read_stored(tau_of[name], check=False, pool=buffers))

    def settle() -> None:
        while pending:
            name, fut = pending.pop()
            v.check(name, fut.result())

    def produce(p: TensorPlan) -> torch.Tensor:
        fut = ahead.pop(p.name, None) or reader.submit(load, p.name)
        nxt = position[p.name] + 1
        if nxt < len(order) and plan[nxt].nbytes <= PREFETCH_MAX_BYTES:
            ahead[order[nxt]] = reader.submit(load, order[nxt])
        t, tau, scale = fut.result()
        if tau is None:
            counts["copied"] += 1
            return t
        if verify_hashes:
            settle()  # the previous tensor's hash, before this one is queued
            pending.append((tau_of[p.name], pool.submit(v.digest, tau)))
            if p.name == last_tau:
                settle()  # every hash checked before the output can be renamed into place
        rm = matches.get(p.name)
        if rm is not None and rm.src is not None and rm.dst is not None:
            # in blocks of rows: float32 copies of a whole 7B embedding would cost ~1.5 GB
            for lo in range(0, len(rm.dst), ROW_BLOCK):
                dst, srcr = rm.dst[lo : lo + ROW_BLOCK], rm.src[lo : lo + ROW_BLOCK]
                rows_tau = tau[srcr].float() if scale is None else dequantize_rows(tau[srcr], scale[srcr])
                rows = t[dst].to(torch.float32) + lam * rows_tau  # [block, d]
                t[dst] = rows.to(t.dtype)
        elif scale is not None:
            add_int8_rows(t, tau, scale, lam)
        else:
            t.add_(tau, alpha=lam)  # mixed dtypes: computed in the wider type, rounded once
        if not all_finite(t):
            _refuse_non_finite(v, p.name, tau_of[p.name], tau, scale)
        counts["stamped"] += 1
        return t

    rows = {n: rm.summary() for n, rm in matches.items()}
    card = {
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
            "verdict": verdict,
            "ics": ics,
            "log10_p_value": log10_p,
            "forced": verdict != "derived",
        },
        "rows": rows,
        "skipped": skipped,
        "tau_of": {d: n for d, n in tau_of.items() if d != n},  # downstream tensors given another's tau
        "hashes_verified": verify_hashes,
    }
    extra = _extra_files(m)
    extra[FP_CARD] = (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode()
    stamp_meta = {STAMP_META_KEY: json.dumps({"key_commitment": v.commitment, "lambda": lam})}
    # The stream's arithmetic runs on this thread alone: with intra-op threads, the workers of
    # every small parallel add spin between adds (measured: a fifth of a 7B stamp's CPU time on
    # 2 cores), taking the CPU from the threads that read, hash and write.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_checkpoint(
            out,
            plan,
            produce,
            config=None,
            extra_files=extra,
            metadata=stamp_meta,
            max_shard_bytes=shard_bytes,
        )
    except HurefError as e:
        if isinstance(e, FPVecError):
            raise
        raise FPVecError(f"stamping failed: {e}") from None
    finally:
        torch.set_num_threads(threads)
        for f in ahead.values():
            f.cancel()
        reader.shutdown(wait=True)
        pool.shutdown(wait=True)
    row_note = "; ".join(f"{n}: rows matched by {r['mode']} ({r['shared']} shared)" for n, r in rows.items())
    if row_note:
        notes.append(row_note)
    if tied_note:
        notes.append(tied_note)
    if skipped:
        notes.append(_skip_note(skipped))
    return StampResult(
        str(out),
        lam,
        verdict,
        ics,
        log10_p,
        verdict != "derived",
        counts["stamped"],
        counts["copied"],
        skipped,
        rows or None,
        v.commitment,
        time.perf_counter() - t0,
        check_s,
        notes,
    )


def _refuse_non_finite(v: Vector, name: str, of: str, tau: torch.Tensor, scale: torch.Tensor | None) -> None:
    """A stamped tensor holds NaN or infinity: say whether the vector brought it (a resealed
    vector can carry any values past its hashes) or the sum overflowed the model's dtype."""
    v.check_finite(of, tau)
    if scale is not None:
        v.check_finite(SCALE_PREFIX + of, scale)
    raise FPVecError(
        f"tensor {shown(name)}: the stamped values are NaN or infinite (the downstream tensor holds "
        "some, or the sum overflows its dtype); nothing was written"
    )


def add_int8_rows(t: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, lam: float) -> None:
    """t += lam * q * scale[:, None], in place, in blocks of rows through one small reused buffer
    of t's dtype (cache-resident; fresh allocations and mixed-dtype arithmetic cost several times
    the add itself). In bf16/fp16 the scale is rounded to t's dtype first: at most 0.4% of a row's
    tau, below the int8 step. Float32 models get the float32 product."""
    s = (scale * lam).to(t.dtype)
    rows = max(1, (2**20) // max(1, t.shape[1]))  # ~1M elements per block: fits in L2 with its rows of t
    buf = torch.empty((min(rows, t.shape[0]), t.shape[1]), dtype=t.dtype)
    for lo in range(0, t.shape[0], rows):
        hi = min(lo + rows, t.shape[0])
        b = buf[: hi - lo]
        b.copy_(q[lo:hi])
        t[lo:hi].addcmul_(b, s[lo:hi, None])


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


def _skip_note(skipped: list[str]) -> str:
    """What --skip-missing left out; a warning when whole layers are missing (a depth-pruned or
    renumbered model: tau is added by name, so the remaining layers may get another layer's tau)."""
    shown = ", ".join(skipped[:4]) + (f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
    note = f"skipped {len(skipped)} vector tensors with no counterpart downstream: {shown}"
    layers = sorted({int(x) for n in skipped for x in re.findall(r"\.(\d+)\.", n)[:1]})
    if layers:
        note += (
            f"; the vector's layers {', '.join(map(str, layers))} have none: if layers were removed, the "
            "remaining ones were renumbered, and tau, added by name, went to other layers than in the base"
        )
    return note


def _disk_order(m: Model) -> list[str]:
    """Tensor names in on-disk order where the source knows it: sequential reads."""
    order = getattr(m.ckpt.source, "file_order", None)
    if order is None:
        return list(m.ckpt.source.names())
    return [n for _, names in order() for n in names]
