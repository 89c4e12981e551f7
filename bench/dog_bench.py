"""Whole-process time of ``huref dog X.fp`` (a dog from a fingerprint file), against a baseline huref.

``huref dog X.fp --json`` (the dog vector) and ``huref dog X.fp -o dog.png`` (the default
renderer's picture) run as whole processes, each N times. With ``--baseline DIR`` (a folder holding
another version's ``huref`` package, e.g. ``git archive OLD huref | tar -x -C DIR``) the same
commands run with that package first on PYTHONPATH, interleaved with the current one, so both see
the same machine load; both read the weights from this checkout's ``encoders/``. Printed per
command: median wall time and peak RSS of each side, their ratio, whether each process imported
torch (read from ``python -X importtime``); then the largest difference between the two sides' dog
vectors and whether their PNG files are byte-identical.

    python bench/dog_bench.py [--zoo .zoo/tiny] [--runs 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.invariants import Settings, fingerprint_model, save_fingerprint  # noqa: E402


def run(argv: list[str], pythonpath: Path, home: Path) -> tuple[float, float, bool, str]:
    """(wall s, peak RSS MiB, imported torch?, stdout) of ``python -X importtime -m huref ARGV``,
    the peak RSS read from GNU time (``/usr/bin/time``)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(pythonpath),
        HUREF_HOME=str(home),
        HUREF_ENCODERS_DIR=str(REPO / "encoders"),
    )
    rss_file = home / "rss.txt"
    t = time.perf_counter()
    proc = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(rss_file),
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "huref",
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,  # not the repository: ``-m`` puts the working folder before PYTHONPATH
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({pythonpath}):\n{proc.stderr[-2000:]}")
    rss = int(rss_file.read_text().split()[-1]) / 1024  # KiB -> MiB
    torch = any(ln.rsplit("|", 1)[-1].strip() == "torch" for ln in proc.stderr.splitlines() if "|" in ln)
    return wall, rss, torch, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--model", default="llama-a")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="folder holding another version's huref package")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fp = save_fingerprint(fingerprint_model(args.zoo / args.model, Settings()), tmp / "x.safetensors")
        sides = {"current": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
        commands = {
            "dog --json": lambda side: ["dog", str(fp), "--json"],
            "dog -o png": lambda side: ["dog", str(fp), "-o", str(tmp / f"{side}.png")],
        }
        print(f"huref dog of {args.model}'s fingerprint file, {args.runs} runs each, interleaved")
        outputs: dict[str, str] = {}
        for label, argv_of in commands.items():
            times: dict[str, list[float]] = {s: [] for s in sides}
            rss: dict[str, list[float]] = {s: [] for s in sides}
            torch: dict[str, bool] = {}
            for _ in range(args.runs):
                for side, path in sides.items():
                    (tmp / f"{side}.png").unlink(missing_ok=True)
                    home = tmp / f"home-{side}"
                    home.mkdir(exist_ok=True)
                    wall, peak, torch[side], out = run(argv_of(side), path, home)
                    times[side].append(wall)
                    rss[side].append(peak)
                    if label == "dog --json":
                        outputs[side] = out
            row = "  ".join(
                f"{side} {statistics.median(times[side]):.2f} s, {statistics.median(rss[side]):.0f} MiB"
                f" (torch {'yes' if torch[side] else 'no'})"
                for side in sides
            )
            ratio = (
                f"  -> {statistics.median(times['baseline']) / statistics.median(times['current']):.1f}x faster"
                if "baseline" in sides
                else ""
            )
            print(f"{label:12s} {row}{ratio}")
        if "baseline" in sides:
            import numpy as np

            za, zb = (np.asarray(json.loads(outputs[s])["z"]) for s in ("current", "baseline"))
            same_png = (tmp / "current.png").read_bytes() == (tmp / "baseline.png").read_bytes()
            print(
                f"max |z_current - z_baseline| = {np.abs(za - zb).max():.2e}; PNG bytes identical: {same_png}"
            )


if __name__ == "__main__":
    main()
