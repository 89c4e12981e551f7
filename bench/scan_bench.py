"""Batch-scan benchmark: a first scan of the tiny zoo, then a second scan of the unchanged zoo.

In one run, with a fresh HUREF_HOME: register the zoo's bases (each its own family, so their
pairs form the Z null), scan the zoo twice through the same API the CLI uses, and print both
times, their ratio (target: the second at least 20x faster), the cache counters of each scan,
and the accuracy table against zoo.json. The second scan is also timed as a whole ``huref scan``
process (interpreter start and imports included, the figure a user feels), with the same target:
a scan answered from the cache imports no tensor library, so the process stays well under a second.

    python bench/scan_bench.py [--zoo .zoo/tiny] [--workers N] [--keep-home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.registry.enroll import add_base  # noqa: E402
from huref.registry.store import Store  # noqa: E402
from huref.scan import ScanConfig, run_scan  # noqa: E402
from huref.scan.accuracy import accuracy, format_table  # noqa: E402
from huref.scan.runner import default_workers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument(
        "--keep-home", type=Path, default=None, help="use (and keep) this HUREF_HOME instead of a temp dir"
    )
    args = ap.parse_args()
    from huref.zoo.build import existing_or_built

    existing_or_built(args.zoo)
    manifest = json.loads((args.zoo / "zoo.json").read_text())
    with tempfile.TemporaryDirectory(prefix="huref-scan-bench-") as tmp:
        home = args.keep_home or Path(tmp) / "home"
        os.environ["HUREF_HOME"] = str(home)
        out = Path(tmp) / "out"
        bases = [m["name"] for m in manifest["models"] if m["relation"] == "base"]
        t = time.perf_counter()
        with Store(home) as store:
            for name in bases:
                add_base(store, args.zoo / name, name, family=name)
            n_pairs, null = len(store.pairs()), store.null()
        print(
            f"registered {len(bases)} bases in {time.perf_counter() - t:.1f} s; {n_pairs} independent pairs; "
            f"null: {null.source if null else 'built-in'}"
        )

        cfg = ScanConfig(args.zoo, out, workers=args.workers, home=home, progress=False)
        t = time.perf_counter()
        first = run_scan(cfg)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        second = run_scan(cfg)
        t_second = time.perf_counter() - t

        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "huref", "scan", str(args.zoo), "-o", str(out), "--no-progress"],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        t_cli = time.perf_counter() - t

        same = first.models == second.models
        print(f"first scan  {t_first:8.2f} s  ({first.stats})")
        print(f"second scan {t_second:8.3f} s  ({second.stats})")
        print(f"ratio {t_first / t_second:,.0f}x (target >= 20x); results identical: {same}")
        print(
            f"second scan as a whole 'huref scan' process (interpreter start and imports included): {t_cli:.2f} s "
            f"-> ratio {t_first / t_cli:.1f}x (target >= 20x)"
        )
        rows, counts = accuracy(first.models, manifest, set(bases))
        print()
        print(format_table(rows, counts))
        ok = (
            same
            and t_first / t_second >= 20
            and t_first / t_cli >= 20
            and counts["FN"] == counts["FP"] == counts["WRONG"] == counts["ERROR"] == 0
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
