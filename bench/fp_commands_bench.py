"""Whole-process time of the commands answered from fingerprint files, against a baseline huref.

``huref compare A.fp B.fp --json`` (robust and paper terms, neuron responses) and ``huref registry
add X.fp`` (a fresh registry holding one base of another family, so the new base is paired with it)
run as whole processes, each N times. With ``--baseline DIR`` (a folder holding another version's
``huref`` package, e.g. ``git archive OLD huref | tar -x -C DIR``) the same commands run with that
package first on PYTHONPATH, interleaved with the current one, so both see the same machine load.
Printed per command: median wall and user time of each side, their ratio, whether each process
imported torch (read from ``python -X importtime``), and whether both printed the same verdict.

    python bench/fp_commands_bench.py [--zoo .zoo/tiny] [--runs 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.invariants import Settings, fingerprint_model, save_fingerprint  # noqa: E402

MODELS = ("llama-a", "llama-a-sft", "llama-b")


def run(argv: list[str], pythonpath: Path, home: Path) -> tuple[float, float, bool, str]:
    """(wall s, user s, imported torch?, stdout) of ``python -X importtime -m huref ARGV``."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath), HUREF_HOME=str(home))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "huref", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,  # not the repository: ``-m`` puts the working folder before PYTHONPATH
    )
    wall = time.perf_counter() - t
    user = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({pythonpath}):\n{proc.stderr[-2000:]}")
    torch = any(ln.rsplit("|", 1)[-1].strip() == "torch" for ln in proc.stderr.splitlines() if "|" in ln)
    return wall, user, torch, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="folder holding another version's huref package")
    args = ap.parse_args()
    sides = {"current": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with tempfile.TemporaryDirectory(prefix="huref-fpbench-") as d:
        tmp = Path(d)
        fps = {
            m: save_fingerprint(fingerprint_model(args.zoo / m, Settings()), tmp / f"{m}.safetensors")
            for m in MODELS
        }
        compare = ["compare", str(fps["llama-a"]), str(fps["llama-a-sft"]), "--json"]
        add = ["registry", "add", str(fps["llama-a"]), "--name", "llama-a", "--family", "a"]
        results: dict[tuple[str, str], list[tuple[float, float, bool, str]]] = {}
        for i in range(args.runs):
            for side, path in sides.items():  # interleaved: both sides see the same load
                home = tmp / f"home-{side}-{i}"
                results.setdefault(("compare", side), []).append(run(compare, path, tmp / "empty-home"))
                run(
                    ["registry", "add", str(fps["llama-b"]), "--name", "llama-b", "--family", "b"], path, home
                )
                results.setdefault(("registry add", side), []).append(run(add, path, home))
    print(
        f"{args.runs} runs each, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, {os.cpu_count()} CPUs"
    )
    for cmd in ("compare", "registry add"):
        row = {}
        for side in sides:
            rs = results[(cmd, side)]
            wall, user = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
            row[side] = wall
            torch = "imports torch" if any(r[2] for r in rs) else "no torch"
            print(f"{cmd:13s} {side:9s} wall {wall:5.2f} s  user {user:5.2f} s  ({torch})")
        if "baseline" in row:
            same = ""
            if cmd == "compare":
                verdicts = {json.loads(r[3])["verdict"] for s in sides for r in results[(cmd, s)]}
                same = f", verdicts {sorted(verdicts)}"
            print(f"{cmd:13s} current / baseline wall: {row['current'] / row['baseline']:.2f}{same}")


if __name__ == "__main__":
    main()
