"""The zoo build's phases, worked out from a preset's bases and sections, and how they run.

Each phase is a list of jobs independent of one another: phase 1 trains the bases, phase 2 the
derivatives of one base each (trained, structural, attacks, the MoE section), phase 3 what needs
two derivatives (merges) or a trained derivative (the disguised ones). A phase's jobs are spread
over worker processes with one thread each: these models are far too small to gain from intra-op
threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from huref.zoo.edit_jobs import job_attacks, job_disguised, job_llama_structural, job_merges
from huref.zoo.jobctx import Ctx
from huref.zoo.train_jobs import (
    job_base,
    job_gpt2_derivs,
    job_light_sft,
    job_llama_trained,
    job_moe_derivs,
    job_stories,
    job_stories_derivs,
)

Job = tuple[Callable[..., list[dict]], tuple]


def plan(ctx: Ctx) -> list[list[Job]]:
    """The build's phases (the jobs of each independent of one another), from the preset's bases
    and sections."""
    p, stories = ctx.preset, ctx.stories
    names = {name for _, name, _ in p.bases}
    phase1: list[Job] = [(job_base, (ctx, arch, name, seed)) for arch, name, seed in p.bases]
    if stories:
        phase1.insert(1, (job_stories, (ctx,)))
    if "light" in p.sections:  # the longest job first, so that the other bases share the other worker
        phase1.insert(0, (job_base, (ctx, *p.plateau_base, p.plateau_steps)))
    phase2: list[Job] = [(job_llama_trained, (ctx,))]
    if "gpt2-a" in names:
        phase2.append((job_gpt2_derivs, (ctx,)))
    if stories:
        phase2.insert(1, (job_stories_derivs, (ctx,)))
    if "light" in p.sections:
        phase2.append((job_light_sft, (ctx,)))
    if "structural" in p.sections:
        phase2.append((job_llama_structural, (ctx,)))
    if "attacks" in p.sections:
        phase2 += [(job_attacks, (ctx, b)) for b in p.attacks_on if b != "stories260k" or stories]
    if "moe" in p.sections:
        phase2 += [(job_moe_derivs, (ctx,)), (job_attacks, (ctx, "moe-a", "mixtral"))]
    phase3: list[Job] = [(job_merges, (ctx,))] if "merges" in p.sections else []
    if "disguise" in p.sections:
        disguised = [("llama-a-sft", "llama-a"), ("llama-a-cpt", "llama-a")]
        if stories:
            disguised += [("stories260k-sft", "stories260k"), ("stories260k-cpt", "stories260k")]
        phase3 += [(job_disguised, (ctx, n, r, 2000 + i)) for i, (n, r) in enumerate(disguised)]
        if "moe" in p.sections:
            phase3.append((job_disguised, (ctx, "moe-a-sft", "moe-a", 2100, "mixtral")))
    return [phase for phase in (phase1, phase2, phase3) if phase]


def init_worker() -> None:
    """A worker process (or the builder itself with one worker): one thread, quiet transformers."""
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_phase(jobs: list[Job], workers: int) -> list[dict]:
    """Run one phase's jobs and return their entries in job order."""
    if workers <= 1:
        init_worker()
        return [e for fn, args in jobs for e in fn(*args)]
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=init_worker
    ) as ex:
        futures = [ex.submit(fn, *args) for fn, args in jobs]
        return [e for f in futures for e in f.result()]
