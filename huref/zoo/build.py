"""``huref zoo build DIR --preset tiny|demo``: bases, derivatives and attacks, with a manifest.

The build prepares the corpus streams and the tokenizer, then runs the preset's phases
(huref.zoo.phases) of training jobs (huref.zoo.train_jobs) and weight-editing jobs
(huref.zoo.edit_jobs). Everything is written into a temporary folder and renamed into place with
``zoo.json`` last (huref.zoo.manifest), so an interrupted build leaves nothing that looks like a
zoo. A finished zoo is reused when its recipe matches.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from huref.checkpoint.atomic import atomic_dir
from huref.errors import UsageError
from huref.lm.corpus import corpus_text
from huref.zoo import calibration
from huref.zoo.jobctx import Ctx
from huref.zoo.manifest import (
    built_preset,
    built_with,
    load_manifest,
    manifest_doc,
    recipe_hash,
    write_manifest,
)
from huref.zoo.phases import plan, run_phase
from huref.zoo.presets import PRESETS, Preset
from huref.zoo.tokenizer import save_tokenizer, train_tokenizer

# load_manifest is read here by the zoo's users beside build_zoo
__all__ = ["build_zoo", "default_stories", "existing_or_built", "load_manifest"]

log = logging.getLogger(__name__)


def _prepare_data(root: Path, p: Preset) -> None:
    """The corpus slices, the zoo's tokenizer trained on pretraining text, and every slice
    tokenized into ``_data/streams.safetensors``."""
    (root / "_data").mkdir()
    text = {
        sl: corpus_text(sl, p.corpus_chars if sl == "pretrain" else p.corpus_chars // 4)
        for sl in ("pretrain", "sft", "cpt", "heldout")
    }
    tok = train_tokenizer(text["pretrain"], p.vocab)
    save_tokenizer(tok, root / "_tokenizer")
    save_file(
        {k: torch.tensor(tok.encode(v).ids, dtype=torch.long) for k, v in text.items()},
        str(root / "_data" / "streams.safetensors"),
    )


def build_zoo(
    dest: str | Path, preset: str = "tiny", stories: Path | None = None, workers: int = 2, force: bool = False
) -> Path:
    """Build (or reuse) a zoo; returns its folder. ``stories``: path to stories260K.bin, optional."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    dest = Path(dest)
    stories = Path(stories) if stories else None
    if stories is not None and not stories.is_file():
        raise UsageError(f"{stories}: stories260K.bin not found")
    want = recipe_hash(p, stories)
    if not force and built_with(dest, want):
        log.info("reusing zoo at %s", dest)
        return dest
    held = built_preset(dest)
    if held is not None and held != preset and not force:
        raise UsageError(
            f"{dest} holds a {held!r} zoo; building {preset!r} there would replace it "
            "(choose another folder, or pass --force)"
        )
    if dest.exists() and any(dest.iterdir()) and not (dest / "zoo.json").is_file():
        raise UsageError(f"{dest} exists and is not a huref zoo; choose an empty or new folder")
    t0 = time.time()
    with atomic_dir(dest, overwrite=True) as root:  # zoo.json is written last, inside
        _prepare_data(root, p)
        ctx = Ctx(root, p, stories)
        entries: list[dict] = []
        for phase in plan(ctx):
            entries += run_phase(phase, workers)
        if p.regime == "realistic":
            entries = calibration.annotate(ctx.root, entries, ctx.streams()["heldout"])
        write_manifest(root, manifest_doc(p, want, entries, round(time.time() - t0, 1)))
    log.info("zoo built in %.1f s at %s", time.time() - t0, dest)
    return dest


def existing_or_built(dest: str | Path, preset: str = "tiny", workers: int = 2) -> Path:
    """The zoo in ``dest`` as it is, whatever its preset or recipe (an evaluation reads the zoo
    it is pointed at, and never rebuilds or replaces it); a folder without a finished zoo gets
    ``preset`` built."""
    dest = Path(dest)
    if built_preset(dest) is not None:
        return dest
    return build_zoo(dest, preset, stories=default_stories(), workers=workers)


def default_stories() -> Path | None:
    """../shared/models/stories260K/stories260K.bin beside the checkout, or $HUREF_STORIES."""
    env = os.environ.get("HUREF_STORIES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    cand = here.parent / "shared" / "models" / "stories260K" / "stories260K.bin"
    return cand if cand.is_file() else None
