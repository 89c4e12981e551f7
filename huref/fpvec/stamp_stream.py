"""The streaming stage of a stamp: read, add tau, write, one tensor at a time.

Runs only after the plan (:mod:`huref.fpvec.stamp_plan`) and the provenance check
(:func:`huref.fpvec.stamp.check_derived`) passed. Peak memory is two tensors (the largest
downstream tensor and its tau), never the model: each output tensor is read, has tau added in
place and is written before the next is read, through huref's atomic writer. A tau stored as
low-rank factors (``extract --rank``) is added as A @ B (:func:`huref.fpvec.lowrank.add_product`:
in place by the CPU's bf16 units where it has them, else formed in float32 a block of rows at a
time): never more than one tensor's factors and ~4 MB of product besides the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from huref.arch import Model
from huref.checkpoint.source import DTYPES, BufferPool
from huref.checkpoint.writer import TensorPlan, write_checkpoint
from huref.errors import FPVecError, HurefError
from huref.fpvec.lowrank import add_product, product_rows
from huref.fpvec.stamp_plan import StampPlan, disk_order
from huref.fpvec.vector import FACTOR_A, FACTOR_B, SCALE_PREFIX, Vector, all_finite, dequantize_rows
from huref.paths import shown

STAMP_META_KEY = "huref.fpvec.stamp"
# (downstream tensor, stored tau or None, int8 row scales or None, B of a low-rank tau or None)
_Loaded = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
PREFETCH_MAX_BYTES = 128 * 2**20
ROW_BLOCK = 4096  # vocabulary rows updated per step when rows are matched


def stream_stamp(
    v: Vector,
    m: Model,
    sp: StampPlan,
    out: Path,
    lam: float,
    verify_hashes: bool,
    shard_bytes: int,
    extra: dict[str, bytes],
    before_done: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Stream stage: read, add, write, one tensor at a time, into ``out`` through the atomic
    checkpoint writer (nothing is left behind on failure). Tau tensors are hash-checked as they
    pass (when ``verify_hashes``) and every stamped tensor is checked to be finite; a failure is
    one :class:`FPVecError`. ``before_done`` runs once the last tensor is produced, before the
    small files of ``extra`` (which it may still fill in) are written and the output renamed into
    place; an error it raises leaves nothing behind. Returns the counts of stamped and copied
    tensors."""
    s = _Stream(v, m, sp, lam, verify_hashes, before_done)
    stamp_meta = {STAMP_META_KEY: json.dumps({"key_commitment": v.commitment, "lambda": lam})}
    # The stream's arithmetic runs on this thread alone: with intra-op threads, the workers of
    # every small parallel add spin between adds (measured: a fifth of a 7B stamp's CPU time on
    # 2 cores), taking the CPU from the threads that read, hash and write.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_checkpoint(
            out,
            s.plan,
            s.produce,
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
        s.close()
    return s.counts


class _Stream:
    """The tensors of one stamp in disk order, produced one at a time for the writer.

    Two helper threads overlap the work of consecutive tensors (file reads and hashing release the
    GIL): one reads tensor i+1 and its tau while tensor i is written (only tensors up to
    PREFETCH_MAX_BYTES: a 7B's layer matrices, not its embedding), one hashes tau i meanwhile.
    Peak memory: two tensors and their taus plus one tau being hashed, under 1 GB for a 7B.
    Low-rank factors are small (a 7B's at rank 16: ~80 MB in all): they are hash-checked, and
    A @ B added to the tensor, as they are read, on the reader thread.
    """

    def __init__(
        self,
        v: Vector,
        m: Model,
        sp: StampPlan,
        lam: float,
        verify_hashes: bool,
        before_done: Callable[[], None] | None = None,
    ) -> None:
        self.v, self.src, self.sp, self.lam, self.verify_hashes = v, m.ckpt.source, sp, lam, verify_hashes
        self.before_done = before_done
        self.order = disk_order(m)
        self.plan = [
            TensorPlan(n, self.src.info(n).shape, DTYPES[self.src.info(n).dtype]) for n in self.order
        ]
        tau_names = [n for n in self.order if n in sp.tau_of]
        self.last_tau = tau_names[-1] if tau_names else None
        self.counts = {"stamped": 0, "copied": 0}
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.reader = ThreadPoolExecutor(max_workers=1)
        self.pending: list[tuple[str, Future[str]]] = []
        self.ahead: dict[str, Future[_Loaded]] = {}
        self.position = {n: i for i, n in enumerate(self.order)}
        self.buffers = BufferPool()

    def load(self, name: str) -> _Loaded:
        """(downstream tensor, stored tau or None, its int8 row scales or None, or for a low-rank
        tau: A as the tau and B)."""
        t = self.src.read(name, self.buffers)
        if name not in self.sp.tau_of:
            return t, None, None, None
        of = self.sp.tau_of[name]
        if self.v.rank(of) is not None:
            # checked and added here, on the reader thread: the product of tensor i+1 overlaps the
            # writing of tensor i
            a, b = self.v.read_factors(of, check=self.verify_hashes)
            self.add_factors(name, t, a, b)
            return t, a, None, b
        return (t, *self.v.read_stored(of, check=False, pool=self.buffers), None)

    def settle(self) -> None:
        while self.pending:
            name, fut = self.pending.pop()
            self.v.check(name, fut.result())

    def produce(self, p: TensorPlan) -> torch.Tensor:
        t = self.produce_one(p)
        if self.before_done is not None and p.name == self.order[-1]:
            self.settle()
            self.before_done()
        return t

    def produce_one(self, p: TensorPlan) -> torch.Tensor:
        fut = self.ahead.pop(p.name, None) or self.reader.submit(self.load, p.name)
        nxt = self.position[p.name] + 1
        if nxt < len(self.order) and self.plan[nxt].nbytes <= PREFETCH_MAX_BYTES:
            self.ahead[self.order[nxt]] = self.reader.submit(self.load, self.order[nxt])
        t, tau, scale, b = fut.result()
        if tau is None:
            self.counts["copied"] += 1
            return t
        of = self.sp.tau_of[p.name]
        if b is not None:  # low-rank: the factors were checked and A @ B added as they were read
            if self.verify_hashes and p.name == self.last_tau:
                self.settle()  # the dense taus' hashes, before the output can be renamed into place
            if not all_finite(t):
                _refuse_non_finite(self.v, p.name, of, [(FACTOR_A + of, tau), (FACTOR_B + of, b)])
            self.counts["stamped"] += 1
            return t
        if self.verify_hashes:
            self.settle()  # the previous tensor's hash, before this one is queued
            self.pending.append((of, self.pool.submit(self.v.digest, tau)))
            if p.name == self.last_tau:
                self.settle()  # every hash checked before the output can be renamed into place
        self.add(p.name, t, tau, scale)
        if not all_finite(t):
            stored = [(of, tau)] + ([(SCALE_PREFIX + of, scale)] if scale is not None else [])
            _refuse_non_finite(self.v, p.name, of, stored)
        self.counts["stamped"] += 1
        return t

    def add_factors(self, name: str, t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """t += lam * (a @ b) in place; for a vocabulary tensor only on the matched rows, whose
        tau rows are A[rows] @ B."""
        rm = self.sp.matches.get(name)
        if rm is not None and rm.src is not None and rm.dst is not None:
            for lo in range(0, len(rm.dst), ROW_BLOCK):
                dst, srcr = rm.dst[lo : lo + ROW_BLOCK], rm.src[lo : lo + ROW_BLOCK]
                rows = t[dst].to(torch.float32) + self.lam * product_rows(a, b, srcr)  # [block, d]
                t[dst] = rows.to(t.dtype)
        else:
            add_product(t, a, b, self.lam)

    def add(self, name: str, t: torch.Tensor, tau: torch.Tensor, scale: torch.Tensor | None) -> None:
        """t += lam * tau in place, on the matched rows only for a vocabulary tensor."""
        lam = self.lam
        rm = self.sp.matches.get(name)
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

    def close(self) -> None:
        for f in self.ahead.values():
            f.cancel()
        self.reader.shutdown(wait=True)
        self.pool.shutdown(wait=True)


def _refuse_non_finite(v: Vector, name: str, of: str, stored: list[tuple[str, torch.Tensor]]) -> None:
    """A stamped tensor holds NaN or infinity: say whether the vector brought it (a resealed
    vector can carry any values past its hashes) or the sum overflowed the model's dtype."""
    for n, x in stored:
        v.check_finite(n, x)
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
