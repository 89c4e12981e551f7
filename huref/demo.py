"""``huref demo``: the whole pipeline on the demo zoo, written under ``reports/demo/``.

1. build (or reuse) the demo zoo: bases, derivatives and disguised copies, with ground truth;
2. register its bases (each its own family, so their pairs feed the Z null);
3. FP-Vec: make secret keys, fingerprint one base, extract the vector, stamp it into a derivative;
4. scan the zoo against the registry;
5. audit a few suspects, linking each report from the scan's index;
6. check every verdict against the zoo's ground truth and print where to look.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from huref.errors import FPVecError, UsageError
from huref.invariants import Settings

if TYPE_CHECKING:
    from huref.scan.runner import ScanReport

AUDITED = (
    "llama-a-attack-residual-rotation",
    "llama-a-prune-depth",
    "llama-a-cpt-disguised",  # continued pretraining, then a function-preserving disguise
    "llama-a-merge-ties",
    "llama-b",
    "stories260k-cpt",
    "llama-a-upcycled",  # a Mixtral-style MoE upcycled from llama-a: the report names the experts
)
# the zoo's "light" section: a base trained to its loss plateau and an SFT as gentle as real
# instruction tuning (FP-Vec's published setting), beside the stress cases
FP_BASE = "llama-p"
DOWNSTREAM = f"{FP_BASE}-sft"
STAMPED = f"{DOWNSTREAM}-stamped"
OUTPUT_DIRS = ("registry", "fpvec", "suspects", "scan")  # replaced on every run
MARKER = ".huref-demo"  # written into --out: only a folder holding it has outputs to replace


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("reports/demo")
    zoo: Path = Path(".zoo/demo")
    preset: str = "demo"
    workers: int = 2


def _truth(manifest: dict[str, Any]) -> dict[str, str]:
    """model -> expected overall verdict: derived when it has a registered root other than itself."""
    return {m["name"]: ("independent" if m["root"] == m["name"] else "derived") for m in manifest["models"]}


def _is_demo_folder(out: Path) -> bool:
    """Holds the marker, or is an earlier run's output from before the marker (its demo.json)."""
    if (out / MARKER).is_file():
        return True
    try:
        doc = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and {"audits", "index", "ok"} <= doc.keys()


def check_config(cfg: DemoConfig) -> None:
    """Refuse a bad configuration before anything is built, written or removed."""
    from huref.zoo.presets import PRESETS

    if cfg.preset not in PRESETS:
        raise UsageError(f"unknown preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
    if cfg.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {cfg.workers}")
    for flag, path in (("--out", cfg.out), ("--zoo", cfg.zoo)):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path} exists and is not a folder")
    out, zoo = cfg.out.resolve(), cfg.zoo.resolve()
    if out == zoo or zoo in out.parents or out in zoo.parents:
        raise UsageError(
            f"--out {cfg.out} and --zoo {cfg.zoo} must be separate folders, neither inside the other"
        )
    if cfg.out.is_dir() and any(cfg.out.iterdir()) and not _is_demo_folder(cfg.out):
        raise UsageError(
            f"--out {cfg.out} holds files that huref demo did not write; choose a new or empty folder"
        )


class _Steps:
    """The demo's step log: each finished step is printed with the time since the start."""

    def __init__(self, con: Console) -> None:
        self.con, self.t0 = con, time.perf_counter()
        self.steps: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.steps.append((what, time.perf_counter() - self.t0))
        self.con.print(Text.assemble(("✓", "green"), f" {what} ({time.perf_counter() - self.t0:.0f} s)"))


def run_demo(cfg: DemoConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the demo's steps (see the module notes) and return its summary (also ``demo.json``).

    The configuration is checked first (:func:`check_config`: nothing is built, written or
    removed on a bad one); then each step is one function, run in order."""
    cfg = cfg or DemoConfig()
    check_config(cfg)
    # paths printed as they are (no markup) and on one line
    con = console or Console(stderr=True, markup=False, soft_wrap=True)
    steps = _Steps(con)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("huref demo outputs: the next 'huref demo --out' here replaces them\n")

    con.print(
        Text.assemble(("huref demo", "bold"), f": zoo {cfg.zoo} (preset {cfg.preset}), outputs under {out}")
    )
    zoo, manifest = _zoo_step(cfg, steps)
    truth = _truth(manifest)
    home = out / "registry"
    bases = _register_step(home, zoo, manifest, steps)
    stamped, suspect_vectors = _fpvec_step(out, zoo, steps)
    scan_dir = out / "scan"
    report, wrong_scan = _scan_step(cfg, zoo, scan_dir, home, truth, steps)
    suspects: list[tuple[str, Path, str, list[tuple[Path, Path]]]] = [
        (name, zoo / name, truth[name], []) for name in AUDITED if (zoo / name).is_dir()
    ]
    suspects.insert(0, (STAMPED, stamped, "derived", suspect_vectors))
    audits = _audit_step(suspects, scan_dir, home, bases)
    from huref.scan.results import write_outputs

    write_outputs(scan_dir, report.doc)  # refresh the index's links to the reports just written
    steps.mark(f"audited {len(audits)} suspects")
    return _summary_step(con, steps, out, scan_dir, audits, wrong_scan)


def _zoo_step(cfg: DemoConfig, steps: _Steps) -> tuple[Path, dict[str, Any]]:
    """Build (or reuse) the demo zoo and read its manifest; then clear the previous run's
    outputs (in a folder the demo owns, as :func:`check_config` made sure)."""
    from huref.zoo.build import build_zoo, default_stories

    zoo = build_zoo(cfg.zoo, cfg.preset, stories=default_stories(), workers=cfg.workers)
    manifest = json.loads((zoo / "zoo.json").read_text())
    steps.mark(f"zoo ready: {len(manifest['models'])} models")
    for sub in OUTPUT_DIRS:
        shutil.rmtree(cfg.out / sub, ignore_errors=True)
    return zoo, manifest


def _register_step(home: Path, zoo: Path, manifest: dict[str, Any], steps: _Steps) -> list[str]:
    """Register the zoo's bases, each its own family (their pairs feed the Z null)."""
    from huref.registry.enroll import add_base
    from huref.registry.store import Store

    bases = [m["name"] for m in manifest["models"] if m["relation"] == "base"]
    with Store(home) as store:
        for b in bases:
            add_base(store, zoo / b, b, family=b)
        n_pairs = len(store.pairs())
    steps.mark(f"registered {len(bases)} bases ({n_pairs} independent pairs for the Z null)")
    return bases


def _fpvec_step(out: Path, zoo: Path, steps: _Steps) -> tuple[Path, list[tuple[Path, Path]]]:
    """FP-Vec: make keys, fingerprint the plateau base (train's defaults, its end check included),
    extract its vector and stamp it into the base's light SFT. Returns the stamped model and its
    (vector, keys) pair for the audit."""
    from huref.fpvec import extract_vector, make_keys, save_keys, stamp_model, train_fingerprint, verify_model
    from huref.fpvec.train_config import TrainConfig

    keys_path = out / "fpvec" / "keys.json"
    ks = make_keys(seed=2024)
    save_keys(ks, keys_path)
    fp_model = out / "fpvec" / f"{FP_BASE}-fingerprinted"
    try:
        tr = train_fingerprint(zoo / FP_BASE, ks, fp_model)
        how = "end check passed"
    except FPVecError as e:
        # the check passed here after 450 of its 900 steps (2026-12-06); other arithmetic may end
        # elsewhere: the refused run wrote nothing, and the demo shows the rest of the chain on an
        # unchecked run rather than stopping, and says so
        steps.con.print(Text(f"FP-Vec: {e}; training again without the end check"))
        tr = train_fingerprint(zoo / FP_BASE, ks, fp_model, TrainConfig(until_fires=False))
        how = "end check off: it refused the checked run"
    vector = out / "fpvec" / f"{FP_BASE}.fpvec.safetensors"
    extract_vector(zoo / FP_BASE, fp_model, vector, key_commitment=ks.commitment)
    stamped = out / "suspects" / STAMPED
    stamp_model(zoo / DOWNSTREAM, vector, stamped)
    v = verify_model(stamped, ks)
    lt = v.likelihood
    steps.mark(
        f"FP-Vec: fingerprinted {FP_BASE} ({tr.steps} steps, {how}), stamped {DOWNSTREAM} "
        f"(FSR {v.fsr:.2f}" + (f", key likelihood p {lt.p_value:.1e})" if lt is not None else ")")
    )
    return stamped, [(vector, keys_path)]


def _scan_step(
    cfg: DemoConfig, zoo: Path, scan_dir: Path, home: Path, truth: dict[str, str], steps: _Steps
) -> tuple[ScanReport, list[str]]:
    """Scan the zoo against the registry; returns the report and the models whose verdict is off
    the ground truth."""
    from huref.scan.runner import ScanConfig, run_scan

    report = run_scan(ScanConfig(zoo=zoo, out_dir=scan_dir, workers=cfg.workers, home=home, progress=False))
    wrong_scan = [
        m["name"]
        for m in report.doc["models"]
        if m.get("error") is None and m["name"] in truth and m["verdict"] != truth[m["name"]]
    ]
    steps.mark(f"scan: {len(report.doc['models'])} models, {len(wrong_scan)} verdicts off the ground truth")
    return report, wrong_scan


def _audit_step(
    suspects: list[tuple[str, Path, str, list[tuple[Path, Path]]]],
    scan_dir: Path,
    home: Path,
    bases: list[str],
) -> list[dict[str, Any]]:
    """Audit each suspect into the scan's reports folder, against every registered base but the
    suspect itself (a registered base is its own best match)."""
    from huref.report.audit import run_audit

    settings = Settings()
    audits: list[dict[str, Any]] = []
    for name, path, expected, vectors in suspects:
        ev, html, _ = run_audit(
            path,
            scan_dir / "reports" / f"{name}.html",
            [],
            False,
            vectors,
            settings,
            argv=["huref", "demo"],
            home=home,
            registered=[b for b in bases if b != name],  # names, never paths in the current folder
        )
        got = ev["verdict"]["verdict"]
        audits.append(
            {
                "suspect": name,
                "verdict": got,
                "expected": expected,
                "ok": got == expected,
                "report": str(html),
            }
        )
    return audits


def _summary_step(
    con: Console,
    steps: _Steps,
    out: Path,
    scan_dir: Path,
    audits: list[dict[str, Any]],
    wrong_scan: list[str],
) -> dict[str, Any]:
    """Write ``demo.json`` and print every verdict against the ground truth and where to look."""
    elapsed = time.perf_counter() - steps.t0
    summary = {
        "seconds": round(elapsed, 1),
        "steps": steps.steps,
        "audits": audits,
        "scan_wrong": wrong_scan,
        "index": str(scan_dir / "index.html"),
        "ok": not wrong_scan and all(a["ok"] for a in audits),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print()
    for a in audits:
        mark_ = ("correct", "green") if a["ok"] else ("WRONG", "red")
        con.print(
            Text.assemble(f"  {a['suspect']:36s} {a['verdict']:13s} (expected {a['expected']}) ", mark_)
        )
    con.print(
        Text.assemble(
            "\nopen ",
            (str(scan_dir / "index.html"), "bold"),
            " (scan of the zoo, with links to every audit report)",
        )
    )
    con.print(
        f"demo finished in {elapsed / 60:.1f} min ({elapsed:.0f} s); all verdicts correct: {summary['ok']}"
    )
    return summary
