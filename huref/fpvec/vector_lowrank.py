"""Extracting a low-rank vector: ``extract --rank R`` and ``--rank auto``.

:func:`extract_lowrank` runs :func:`huref.fpvec.vector.extract_vector` with a plan transform;
stages, after the dense vector was planned:

1. factor (:func:`factor_pass`): every tau matrix that rank-r factors would store in fewer numbers
   is read once and decomposed (:func:`huref.fpvec.lowrank.truncate`), keeping the leading
   triplets of the largest rank that may be chosen and the whole spectrum (for the errors);
2. choose the rank: a fixed ``R`` (unchecked: nothing says the fingerprint survives), or with
   ``auto`` the smallest rank of :data:`~huref.fpvec.lowrank.LADDER` whose vector, added to the
   base, answers the keys as often as the fingerprinted model (base + the full tau) does, measured
   with :func:`huref.fpvec.verify.verify_model` on a trial model written to a temporary folder
   beside the output (removed as soon as it is measured);
3. write: the factors, with the per-tensor truncation error and the energy kept, sealed into a
   ``huref-fpvec/2`` file through :func:`huref.fpvec.vector.write_vector`.

Memory: the factors of every matrix at the largest rank tried, in float32 (a 7B at rank 64:
~0.7 GB), plus one tau and its SVD at a time. Time: one SVD per matrix (a 4096 x 11008 float32
matrix takes seconds on a few cores); ``auto`` also writes and queries one trial model per rank
tried, which for a large model costs far more than the factoring.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huref.arch import Model
from huref.checkpoint.source import DTYPES
from huref.checkpoint.writer import TensorPlan, write_checkpoint
from huref.errors import FPVecError
from huref.fpvec.keys import KeySet
from huref.fpvec.lowrank import (
    LADDER,
    SPLIT_NOTE,
    Truncation,
    add_product,
    factors_smaller,
    parse_rank,
    truncate,
)
from huref.fpvec.vector_format import FACTOR_A, FACTOR_B, LOWRANK_FORMAT, factored_plan, vector_doc_counts

log = logging.getLogger(__name__)

TauOf = Callable[[TensorPlan], torch.Tensor]
COMPACT_LAYERS = 4  # layers of the base fingerprint a low-rank vector embeds


def extract_lowrank(
    base: str | Path,
    fp_model: str | Path,
    out: str | Path,
    rank: int | str,
    keys: KeySet | None = None,
    dense_embeddings: bool = False,
    drop_embeddings: bool = False,
    drop_lm_head: bool = False,
    dtype: str = "auto",
    key_commitment: str | None = None,
) -> Path:
    """Write a low-rank vector of tau = theta_fp - theta_base: ``rank`` a whole number
    (unchecked) or 'auto' (needs the fingerprinted model's ``keys``); ``dense_embeddings`` keeps
    the token embedding's tau whole. Refusals are one :class:`FPVecError` line, before any work."""
    from huref.fpvec.vector import extract_vector, vocab_roles

    r = parse_rank(rank)
    if r is None:
        raise FPVecError("a low-rank vector needs a rank (a whole number or auto)")
    if dtype == "int8":
        raise FPVecError("--rank and --dtype int8 do not combine: factors are stored as floats")
    if r == "auto" and keys is None:
        raise FPVecError("--rank auto needs --keys KEYS.json: the rank is chosen by the FSR on the keys")
    if keys is not None and key_commitment is None:
        key_commitment = keys.commitment

    def transform(
        mb: Model, plan: list[TensorPlan], tau_of: TauOf, doc: dict[str, Any]
    ) -> tuple[list[TensorPlan], TauOf, dict[str, Any]]:
        from huref.fpvec.check import CHECK_N, check_layers

        dense = frozenset({vocab_roles(mb)["embed"]} if dense_embeddings else ())
        stored, produce, new_doc = lowrank_vector(
            mb, Path(fp_model), Path(out), plan, tau_of, doc, r, keys, dense
        )
        # layer_view keeps every layer of a post-LN model (its layer inputs need the ones before)
        layers = check_layers(mb.cfg.n_layers, COMPACT_LAYERS) if mb.cfg.placement == "pre" else None
        layers = layers or list(range(mb.cfg.n_layers))
        new_doc["lowrank"]["base_fingerprint"] = {"layers": layers, "n": CHECK_N}
        return stored, produce, new_doc

    return extract_vector(
        base,
        fp_model,
        out,
        drop_embeddings,
        drop_lm_head,
        dtype,
        key_commitment,
        transform=transform,
        fingerprint_of=compact_base_fingerprint,
    )


def compact_base_fingerprint(mb: Model) -> bytes:
    """The base fingerprint a low-rank vector embeds: robust terms of COMPACT_LAYERS layers spread
    from the first to the last, on the ``CHECK_N`` probe tokens that stamp's check uses. Every
    layer would make it the larger part of the file (a 7B at n = 128: 184 MB beside 82 MB of
    rank-16 factors); these are 1/8 of that and hold what the check compares (it fingerprints
    the downstream's first and last layers on CHECK_N tokens). A depth-pruned derivative's last
    layer may then find no base layer of its own to align with: the first layer still carries
    the verdict."""
    from huref.fpvec.check import CHECK_N, check_layers, layer_view
    from huref.fpvec.vector import base_fingerprint_bytes

    return base_fingerprint_bytes(layer_view(mb, check_layers(mb.cfg.n_layers, COMPACT_LAYERS)), n=CHECK_N)


@dataclass
class Factoring:
    """Truncated SVDs of the factorable tau matrices, and ||tau||_F^2 of every planned tensor."""

    truncs: dict[str, Truncation] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)

    def factored(self, plan: list[TensorPlan], r: int) -> list[TensorPlan]:
        """The plan entries stored as factors at rank ``r``."""
        return [p for p in plan if p.name in self.truncs and factors_smaller(p.shape, r)]


def factor_pass(
    plan: list[TensorPlan], tau_of: TauOf, ranks: list[int], dense: frozenset[str] = frozenset()
) -> Factoring:
    """Stage 1: decompose every tau matrix that the smallest rank of ``ranks`` would factor
    (except those named in ``dense``), keeping the leading max(ranks) triplets."""
    f = Factoring()
    for p in plan:
        tau = tau_of(p)
        if p.name not in dense and factors_smaller(p.shape, min(ranks)):
            f.truncs[p.name] = truncate(tau, max(ranks))
            f.energy[p.name] = f.truncs[p.name].energy
        else:
            f.energy[p.name] = float(tau.to(torch.float64).pow(2).sum())
    return f


def lowrank_plan(plan: list[TensorPlan], f: Factoring, r: int) -> list[TensorPlan]:
    """The file entries at rank ``r``: factored matrices as A then B, the rest as planned."""
    done = {p.name for p in f.factored(plan, r)}
    out: list[TensorPlan] = []
    for p in plan:
        out += factored_plan(p.name, p.shape, r, p.dtype) if p.name in done else [p]
    return out


def lowrank_storing(tau_of: TauOf, f: Factoring, r: int) -> TauOf:
    """``produce`` for :func:`~huref.fpvec.vector.write_vector`: a factored matrix's A (cast to
    the planned dtype), then its B; every other tensor's tau cast to its planned dtype."""
    pending: dict[str, torch.Tensor] = {}

    def produce(p: TensorPlan) -> torch.Tensor:
        if p.name.startswith(FACTOR_B):
            return pending.pop(p.name)
        if p.name.startswith(FACTOR_A):
            name = p.name[len(FACTOR_A) :]
            a, b = f.truncs[name].factors(r)
            pending[FACTOR_B + name] = b.to(p.dtype)
            return a.to(p.dtype)
        return tau_of(p).to(p.dtype)

    return produce


def lowrank_section(
    plan: list[TensorPlan],
    f: Factoring,
    r: int,
    requested: int | str,
    tried: list[dict[str, Any]] | None = None,
    reference_fsr: float | None = None,
    dense_roles: list[str] | None = None,
) -> dict[str, Any]:
    """The document's ``lowrank`` object: the rank, how it was chosen, per factored tensor its
    shape, rank and relative Frobenius error of the truncation, and the energy of tau kept over
    the whole vector (1 - sum of the truncation errors^2 / sum ||tau||^2; dense tensors lose none);
    for ``auto``, ``tried``: [{"rank", "fsr"}] in the order tried."""
    tensors = {
        p.name: {"shape": list(p.shape), "rank": r, "rel_error": f.truncs[p.name].rel_error(r)}
        for p in f.factored(plan, r)
    }
    total = sum(f.energy.values())
    lost = sum(f.truncs[n].tail(r) for n in tensors)
    return {
        "rank": r,
        "requested": requested,
        "split": SPLIT_NOTE,
        "checked": tried is not None,
        "tried": tried,
        "reference_fsr": reference_fsr,
        "energy_kept": 1.0 - lost / total if total > 0 else 1.0,
        "dense_roles": dense_roles or [],
        "tensors": tensors,
    }


def write_trial(mb: Model, plan: list[TensorPlan], tau_of: TauOf, f: Factoring, r: int, dest: Path) -> Path:
    """The base plus the rank-``r`` vector, as a model folder (the base's config and tokenizer):
    what a stamp of the base would give. Factors and dense taus are rounded to their stored dtype
    first, as the vector file will hold them."""
    from huref.fpvec.stamp_plan import extra_files

    src = mb.ckpt.source
    planned = {p.name: p for p in plan}
    factored = {p.name for p in f.factored(plan, r)}
    tplan = [TensorPlan(n, src.info(n).shape, DTYPES[src.info(n).dtype]) for n in src.names()]

    def produce(p: TensorPlan) -> torch.Tensor:
        t = src.read(p.name)
        q = planned.get(p.name)
        if q is None:
            return t  # integer buffers and dropped roles: as in the base
        x = t.to(torch.float32)
        if p.name in factored:
            a, b = f.truncs[p.name].factors(r)
            add_product(x, a.to(q.dtype), b.to(q.dtype))
        else:
            x += tau_of(q).to(q.dtype).to(torch.float32)
        return x.to(t.dtype)

    return write_checkpoint(dest, tplan, produce, config=None, extra_files=extra_files(mb))


def choose_rank(
    mb: Model,
    fp_model: Path,
    keys: KeySet,
    plan: list[TensorPlan],
    tau_of: TauOf,
    f: Factoring,
    workdir: Path,
) -> tuple[int, list[dict[str, Any]], float]:
    """Stage 2 of ``--rank auto``: (chosen rank, FSR per rank tried, the full vector's FSR).

    The full vector's FSR is the fingerprinted model's (base + the full tau). Ranks are tried in
    ladder order; the first whose trial model's FSR reaches it is chosen. None reaching it, or
    a fingerprinted model that answers no key, is one :class:`FPVecError`."""
    from huref.fpvec.verify import verify_model

    def fsr(model: Path) -> float:
        return verify_model(model, keys, near_miss=False, decoys=0).fsr

    reference = fsr(fp_model)
    if reference == 0:
        raise FPVecError(
            f"{fp_model} answers none of its keys (FSR 0): --rank auto has no fingerprint to keep"
        )
    tried: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=".huref-rank-", dir=workdir) as d:
        for r in LADDER:
            if not f.factored(plan, r):
                break  # at this rank every matrix stays whole: the dense vector
            trial = write_trial(mb, plan, tau_of, f, r, Path(d) / f"rank-{r}")
            tried.append({"rank": r, "fsr": fsr(trial)})
            shutil.rmtree(trial)
            log.info("rank %d: FSR %.2f (full vector %.2f)", r, tried[-1]["fsr"], reference)
            if tried[-1]["fsr"] >= reference:
                return r, tried, reference
    shown = ", ".join(f"rank {t['rank']}: {t['fsr']:.2f}" for t in tried) or "no rank factors any matrix"
    raise FPVecError(
        f"no rank of {'/'.join(map(str, LADDER))} keeps the fingerprint firing as the full vector does "
        f"(FSR {reference:.2f}; {shown}): try --dense-embeddings (a token embedding's tau changes only the "
        "rows of the tokens trained on: a high-rank delta), extract without --rank, or give a fixed --rank "
        "(unchecked)"
    )


def lowrank_vector(
    mb: Model,
    fp_model: Path,
    out: Path,
    plan: list[TensorPlan],
    tau_of: TauOf,
    doc: dict[str, Any],
    rank: int | str,
    keys: KeySet | None,
    dense: frozenset[str] = frozenset(),
) -> tuple[list[TensorPlan], TauOf, dict[str, Any]]:
    """Stages 1 and 2: (the file's plan, its ``produce``, its document) for a rank-``rank`` vector
    (a whole number, or 'auto' with ``keys``); the tensors named in ``dense`` (the token
    embedding, or none) stay whole."""
    ranks = list(LADDER) if rank == "auto" else [int(rank)]
    f = factor_pass(plan, tau_of, ranks, dense)
    roles = ["embed"] if dense else []
    if rank == "auto":
        if keys is None:  # checked before any work by extract_vector; kept for direct callers
            raise FPVecError("--rank auto needs --keys KEYS.json (the fingerprinted model's keys)")
        r, tried, reference = choose_rank(mb, fp_model, keys, plan, tau_of, f, out.parent)
        section = lowrank_section(plan, f, r, "auto", tried, reference, roles)
    else:
        r = int(rank)
        section = lowrank_section(plan, f, r, r, dense_roles=roles)
    stored = lowrank_plan(plan, f, r)
    if not section["tensors"]:
        log.warning("rank %d factors no matrix (every factor pair would be larger): the vector is dense", r)
    new_doc = {**doc, "format": LOWRANK_FORMAT, **vector_doc_counts(stored), "lowrank": section}
    return stored, lowrank_storing(tau_of, f, r), new_doc
