"""Invariants on the 7B-shaped synthetic checkpoints: time, reading, matmul efficiency, memory.

Two checkpoints: LLaMA-2-7B's shapes (dense, 32 layers) and Mixtral-8x7B's (sparse: 8 experts of
width 14336 per layer, top-2; 4 of its 32 layers, since the whole model is 93 GB and peak memory is
a per-layer matter). Both bf16, sharded as released.

For paper mode (last two layers, n = 4096) and robust mode (all 32 layers, default n), each in a
fresh process so that peak RSS is its own, this prints wall time, the time spent reading tensors,
the matmul FLOPs counted by PyTorch, the achieved throughput of the compute part, and that
throughput as a fraction of this machine's large-matmul throughput measured in the same run.
Where a CUDA device is available, the same two modes are also run on it and printed as GPU rows
beside the CPU ones (with the GPU's own large-matmul reference); elsewhere those rows are skipped.

    python bench/invariants_bench.py [--dir .bench] [--device cpu|auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def matmul_peak(device: str = "cpu", size: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of a large float32 matmul (the physical limit the invariants should approach)."""
    import torch

    dev = torch.device(device)
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    a @ b
    best = float("inf")
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def child(path: str, mode: str, device: str) -> None:
    """Run one fingerprint under the FLOP counter and print one JSON line."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from huref.invariants import Settings, fingerprint_model
    from huref.invariants.extract import resolve_device

    dev = str(resolve_device(device))
    t = time.perf_counter()
    with FlopCounterMode(display=False) as fc:
        fp = fingerprint_model(path, Settings(modes=(mode,), device=dev))
    wall = time.perf_counter() - t
    mt = fp.robust if mode == "robust" else fp.paper
    assert mt is not None
    print(
        json.dumps(
            {
                "mode": mode,
                "device": dev,
                "wall_s": wall,
                "read_s": fp.timing["read_s"],
                "compute_s": fp.timing["compute_s"],
                "flops": fc.get_total_flops(),
                "n": mt.n,
                "layers": len(mt.layers),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / ".bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    from synthetic import MIXTRAL_LAYERS, build_synthetic_7b, build_synthetic_mixtral

    checkpoints = {
        "dense": build_synthetic_7b(args.dir / "llama2-7b-synthetic"),
        "moe": build_synthetic_mixtral(args.dir / "mixtral-8x7b-synthetic"),
    }
    from huref.invariants.extract import resolve_device

    print(f"dense: {checkpoints['dense']} (LLaMA-2-7B shapes, bf16)")
    print(f"moe:   {checkpoints['moe']} (Mixtral-8x7B shapes, {MIXTRAL_LAYERS} of 32 layers, bf16)")
    devices = [str(resolve_device(args.device))]
    if devices[0] == "cpu" and _cuda_available():
        devices.append("cuda")
    hdr = (
        f"{'device':6s} {'model':5s} {'mode':7s} {'layers':>6s} {'n':>5s} {'wall s':>8s} {'read s':>7s} {'compute s':>9s} "
        f"{'TFLOP':>7s} {'GFLOP/s':>8s} {'of peak':>7s} {'peak RSS':>9s}"
    )
    table, refs = [], []
    for dev in devices:
        peak = matmul_peak(dev)
        rows = [
            {**_run_child(path, mode, dev), "model": kind}
            for kind, path in checkpoints.items()
            for mode in ("paper", "robust")
        ]
        peak_after = matmul_peak(dev)
        ref = max(peak, peak_after)
        refs.append(f"{dev}: {peak:.1f} / {peak_after:.1f} GFLOP/s")
        for r in rows:
            rate = r["flops"] / r["compute_s"] / 1e9
            table.append(
                f"{dev:6s} {r['model']:5s} {r['mode']:7s} {r['layers']:6d} {r['n']:5d} {r['wall_s']:8.1f} {r['read_s']:7.1f} "
                f"{r['compute_s']:9.1f} {r['flops'] / 1e12:7.2f} {rate:8.1f} {rate / ref:7.2f} "
                f"{r['peak_rss_mb'] / 1024:8.2f}G"
            )
    print(hdr)
    print("-" * len(hdr))
    print("\n".join(table))
    print(f"\nlarge-matmul reference (float32, 4096^3), before / after the runs: {'; '.join(refs)}")
    print(
        "targets: peak RSS < 2 GB for both modes and both models (the MoE's experts are read one at a "
        "time, so its peak does not grow with their number); robust mode < 600 s; compute at >= 0.6 "
        "of the reference"
    )
    return 0


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _run_child(path: Path, mode: str, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), mode, device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    raise SystemExit(main())
