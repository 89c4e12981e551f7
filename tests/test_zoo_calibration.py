"""The zoo's presets as data, and the calibration of derivatives against real lineage.

The realistic preset's own zoo takes ~10 minutes to build, too long for the suite: its figures are
measured by ``huref zoo build --preset realistic`` itself (zoo.json's ``calibration``) and printed in
docs/zoo.md; here the measuring code runs on the tiny zoo, whose derivatives are stress cases and
must be recognised as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from huref.zoo import calibration
from huref.zoo.derive import relative_change
from huref.zoo.edit_jobs import job_merges
from huref.zoo.jobctx import Ctx
from huref.zoo.phases import plan
from huref.zoo.presets import PRESETS
from huref.zoo.train_jobs import job_base, job_llama_trained


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_weight_change_is_relative_l2_and_cosine(tiny_zoo: Path) -> None:
    a, b = tiny_zoo / "llama-a", tiny_zoo / "llama-a-sft"
    rel, pcs = calibration.weight_change(a, b)
    wa, wb = _weights(a), _weights(b)
    va = torch.cat([wa[k].double().flatten() for k in sorted(wa)])
    vb = torch.cat([wb[k].double().flatten() for k in sorted(wa)])
    assert rel == pytest.approx(float((vb - va).norm() / va.norm()), rel=1e-9)
    assert rel == pytest.approx(relative_change(a, b), rel=1e-9)
    assert pcs == pytest.approx(float(va @ vb / (va.norm() * vb.norm())), rel=1e-9)
    assert calibration.weight_change(a, a) == (0.0, pytest.approx(1.0))


def test_stress_derivatives_fall_outside_the_real_lineage_targets(tiny_zoo: Path, zoo_manifest: dict) -> None:
    """The tiny zoo's SFT and CPT move the weights far more than real instruction tuning does."""
    heldout = load_file(str(tiny_zoo / "_data" / "streams.safetensors"))["heldout"]
    entries = [dict(e, notes=dict(e["notes"])) for e in zoo_manifest["models"]]
    picked = [e for e in entries if e["name"] in ("llama-a-sft", "llama-a-cpt", "llama-a-int8")]
    calibration.annotate(tiny_zoo, picked, heldout)
    by = {e["name"]: e["notes"] for e in picked}
    assert "calibration" not in by["llama-a-int8"]  # no target for quantization
    for name, relation in (("llama-a-sft", "sft"), ("llama-a-cpt", "cpt")):
        cal = by[name]["calibration"]
        lo, hi = calibration.TARGETS[relation]
        assert cal["target"] == [lo, hi]
        assert cal["relative_change"] > hi and not cal["within_target"], (name, cal)
        assert cal["pcs"] == pytest.approx(
            calibration.weight_change(tiny_zoo / "llama-a", tiny_zoo / name)[1]
        )
        ppl = cal["root_data_ppl"]
        assert ppl["root"] > 1 and ppl["derivative"] > 1
        assert ppl["relative_change"] == pytest.approx(ppl["derivative"] / ppl["root"] - 1)
    summary = calibration.summary(picked)
    assert summary["all_within_target"] is False
    assert sorted(summary["reached"]) == ["cpt", "sft"]


def test_presets_choose_sections_and_the_realistic_plan_is_small() -> None:
    stories = Path("stories260K.bin")
    realistic = PRESETS["realistic"]
    assert realistic.regime == "realistic" and PRESETS["tiny"].regime == "stress"
    assert realistic.base_steps == 10 * PRESETS["tiny"].base_steps
    phases = plan(Ctx(Path("zoo"), realistic, stories))
    jobs = [(fn, args[1:]) for phase in phases for fn, args in phase]
    bases = [args for fn, args in jobs if fn is job_base]
    assert bases == [tuple(b) for b in realistic.bases]
    assert {fn.__name__ for fn, _ in jobs} == {
        "job_base",
        "job_stories",
        "job_llama_trained",
        "job_stories_derivs",
        "job_gpt2_derivs",
        "job_merges",
    }
    assert (job_llama_trained, ()) in jobs and (job_merges, ()) in jobs
    tiny = [fn.__name__ for phase in plan(Ctx(Path("zoo"), PRESETS["tiny"], None)) for fn, _ in phase]
    assert {"job_attacks", "job_disguised", "job_moe_derivs", "job_llama_structural"} <= set(tiny)
    assert "job_stories" not in tiny  # no stories260K given
    # the demo's light section: a base trained as long as the realistic ones (first, the longest
    # job), and its light SFT; the tiny zoo has neither
    demo = PRESETS["demo"]
    first_fn, first_args = plan(Ctx(Path("zoo"), demo, None))[0][0]
    assert first_fn is job_base and first_args[1:] == (*demo.plateau_base, realistic.base_steps)
    assert demo.plateau_steps == realistic.base_steps and demo.plateau_base[1] not in {
        b for _, b, _ in demo.bases
    }
    assert "job_light_sft" in {fn.__name__ for phase in plan(Ctx(Path("zoo"), demo, None)) for fn, _ in phase}
    assert "job_light_sft" not in tiny


def test_targets_follow_from_the_published_distances() -> None:
    """SFT's target holds the ~4-6% that Vicuna and Orca-2 moved from Llama-2 (L2 4.19 and 5.71
    against ~95-110 for one model's norm); heavy CPT (CodeLlama, ~90%) lies beyond light CPT's."""
    norm = 133.6 / math.sqrt(2)
    lo, hi = calibration.TARGETS["sft"]
    assert lo < 4.19 / norm < 5.71 / norm < hi
    assert 93.19 / norm > calibration.TARGETS["cpt"][1]
