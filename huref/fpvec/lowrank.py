"""Low-rank fingerprint vectors: each tau matrix stored as two factors of a truncated SVD.

tau [out x in] = U S V^T; the rank-r vector stores A = U_r S_r [out x r] and B = V_r^T [r x in],
so tau ~= A @ B. Rows of A belong to rows of tau (for a token embedding or lm_head: to tokens),
which keeps the stamp's row matching by token string exact: row i of tau is A[i] @ B. B's rows are
orthonormal, so A carries the scale and the product's error is the SVD's: by Eckart-Young the
truncation is the best rank-r approximation, with relative Frobenius error
sqrt(sum_{i>r} s_i^2 / sum_i s_i^2) (``Truncation.rel_error``).

A matrix is factored only where the factors are smaller than the matrix (r (out + in) < out in);
1-D tensors and small matrices stay dense. Kernels here are pure functions over tensors; the file
format is described in :mod:`huref.fpvec.vector`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from huref.errors import FPVecError

LADDER = (1, 2, 4, 8, 16, 32, 64)  # ranks tried, in this order, by ``extract --rank auto``
MAX_RANK = 65536
SPLIT_NOTE = "tau ~= A @ B; A = U_r S_r [out x r], B = V_r^T [r x in] (truncated SVD)"
PRODUCT_ELEMENTS = 2**18  # float32 elements of A @ B formed per step (1 MB: stays in L2)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of bf16 multiply units


def factors_smaller(shape: tuple[int, ...], r: int) -> bool:
    """Whether a tensor of ``shape`` is stored as rank-``r`` factors: matrices whose two factors
    hold fewer numbers than the matrix itself."""
    return len(shape) == 2 and r * (shape[0] + shape[1]) < shape[0] * shape[1]


def parse_rank(rank: str | int | None) -> int | str | None:
    """``--rank``: None (dense), a whole number 1..MAX_RANK, or 'auto'."""
    if rank is None or rank == "auto":
        return rank
    try:
        r = int(rank)
    except (TypeError, ValueError):
        raise FPVecError(f"--rank takes a whole number or auto (got {rank!r})") from None
    if not 1 <= r <= MAX_RANK:
        raise FPVecError(f"--rank must be between 1 and {MAX_RANK} (got {r})")
    return r


@dataclass(frozen=True)
class Truncation:
    """The leading ``k`` singular triplets of one tau matrix, and its whole spectrum."""

    a: torch.Tensor  # [out, k] = U_k S_k, float32
    b: torch.Tensor  # [k, in] = V_k^T, float32
    s: torch.Tensor  # [min(out, in)] every singular value, descending, float64

    def factors(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [out x r], B [r x in]), contiguous."""
        a = torch.empty((self.a.shape[0], r), dtype=self.a.dtype)
        a.copy_(self.a[:, :r])
        return a, self.b[:r].clone()

    @property
    def energy(self) -> float:
        """||tau||_F^2."""
        return float((self.s**2).sum())

    def tail(self, r: int) -> float:
        """||tau - A_r B_r||_F^2 = sum_{i>r} s_i^2 (Eckart-Young)."""
        return float((self.s[r:] ** 2).sum())

    def rel_error(self, r: int) -> float:
        """||tau - A_r B_r||_F / ||tau||_F (0 for a zero matrix)."""
        e = self.energy
        return math.sqrt(self.tail(r) / e) if e > 0 else 0.0


def truncate(tau: torch.Tensor, k: int) -> Truncation:
    """Truncated SVD of a 2-D ``tau`` keeping ``k`` triplets (at most min(out, in)), in float32."""
    if tau.ndim != 2:
        raise ValueError(f"truncate needs a matrix, got shape {list(tau.shape)}")
    u, s, vh = torch.linalg.svd(tau.to(torch.float32), full_matrices=False)  # [o,m] [m] [m,i]
    k = min(k, s.numel())
    # LAPACK hands back column-major factors: copied row-major, so that slices are plain rows
    a = torch.empty((u.shape[0], k), dtype=torch.float32)
    a.copy_(u[:, :k] * s[:k])
    b = torch.empty((k, vh.shape[1]), dtype=torch.float32)
    b.copy_(vh[:k])
    return Truncation(a, b, s.to(torch.float64))


@functools.cache
def native_bf16_gemm() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (x86 AVX512-BF16 or AMX, read
    from /proc/cpuinfo's flags; False wherever that cannot be read).

    Measured for a bf16 4096 x 11008 matrix at rank 16, one core: ``t.addmm_`` in bf16 takes
    0.027 s with AMX against 0.05 s for the float32 blocks of :func:`add_product`; with the units
    masked (oneDNN limited to AVX512 or AVX2), 0.18 s and 1.1 s. So the choice is by hardware,
    never by a timing: it is the same for every stamp on one machine, and so are the bits."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def add_product(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: float = 1.0) -> None:
    """t += lam * (a @ b) in place, accumulated in float32 and rounded once to t's dtype.

    A bf16 tensor with bf16 factors on a CPU with bf16 multiply units (:func:`native_bf16_gemm`)
    takes one in-place ``addmm_`` (float32 accumulation, one rounding: the same values as the
    blocks below but for the order of the rank's sums, measured 1 value in 10^5-10^6 one bf16
    step apart). Otherwise a block of rows at a time through one reused float32 buffer (memory:
    the factors plus 1 MB, whatever t's size): the block of t is copied to float32 and the product
    accumulated onto it by one GEMM (``addmm_``): measured on one core for a bf16 4096 x 11008
    matrix at rank 16, 0.05 s, against 0.07 s for the product cast to bf16 and added, and 0.4 s
    for a mixed bf16 += float32 add."""
    if t.shape != (a.shape[0], b.shape[1]) or a.shape[1] != b.shape[0]:
        raise ValueError(f"factors {list(a.shape)} @ {list(b.shape)} do not make {list(t.shape)}")
    if (
        t.dtype == a.dtype == b.dtype == torch.bfloat16
        and t.is_contiguous()
        and t.device.type == "cpu"
        and native_bf16_gemm()
    ):
        t.addmm_(a, b, alpha=lam)
        return
    a, b = a.to(torch.float32), b.to(torch.float32)
    rows = max(1, PRODUCT_ELEMENTS // max(1, t.shape[1]))
    if t.dtype == torch.float32:
        for lo in range(0, t.shape[0], rows):
            t[lo : lo + rows].addmm_(a[lo : lo + rows], b, alpha=lam)
        return
    buf = torch.empty((min(rows, t.shape[0]), t.shape[1]), dtype=torch.float32)
    for lo in range(0, t.shape[0], rows):
        hi = min(lo + rows, t.shape[0])
        blk = buf[: hi - lo]  # [rows, in]
        blk.copy_(t[lo:hi])
        blk.addmm_(a[lo:hi], b, alpha=lam)
        t[lo:hi].copy_(blk)


def product_rows(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of a @ b in float32 ([len(rows), in]): the tau of the matched vocabulary
    rows, without forming the whole matrix."""
    return a[rows].to(torch.float32) @ b.to(torch.float32)
