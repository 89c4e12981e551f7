"""How fast huref reads a 7B checkpoint layer by layer, against a plain read of the same files.

    python bench/read_bench.py [--dir .bench] [--cold] [--phases plain,sha256,huref-raw,huref-f32]

Builds (once) the synthetic LLaMA-2-7B checkpoint of ``bench/synthetic.py`` under ``--dir``, then
times, each phase in a fresh subprocess so that every peak RSS is its own:

- ``plain``: every weight file read sequentially into one reused 64 MB buffer (``readinto``);
  the ceiling any reader can reach on this machine.
- ``sha256``: huref's streamed file hash (what ``huref inspect`` does by default).
- ``huref-raw``: ``load_model`` then every layer through ``LayerStream`` (the layer's tensors read
  as contiguous file runs into a reused buffer, the next layer prefetched in a background thread),
  in the stored dtype (bfloat16), plus embed / final_norm / lm_head.
- ``huref-f32``: the same converted to float32 and checked finite, as the invariants read them.
- ``huref-tensorwise``: each role's tensor read on its own into fresh memory (for comparison).
- ``check-values``: ``huref inspect --check-values``' scan (read + non-finite check per tensor).

Throughput is in GB (1e9 bytes) of weight-file bytes per second for every phase, so the ratios
compare like with like. ``--cold`` drops the page cache before each phase (needs root); without it
an untimed plain read first warms the cache, so every phase reads from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported in the phases that need it: the plain read imports no torch
    from huref.arch import Model

REPO = Path(__file__).resolve().parents[1]
PHASES = ("plain", "sha256", "huref-raw", "huref-f32", "huref-tensorwise", "check-values")
TARGET_RSS_GB = 2.0
TARGET_RATIO = 0.8


def _weight_files(ckpt: Path) -> list[Path]:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    return [ckpt / s for s in sorted(set(index["weight_map"].values()))]


def _peak_rss_bytes() -> int:
    """This process image's peak resident set size.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``execve`` on Linux, so a fresh subprocess would
    report its parent's peak (with torch imported) as its own; VmHWM belongs to the new image.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ------------------------------------------------------------------ phases (run in a child)


def _plain(ckpt: Path, chunk: int) -> int:
    buf = bytearray(chunk)
    total = 0
    for f in _weight_files(ckpt):
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


def _sha256(ckpt: Path) -> int:
    from huref.checkpoint.hashing import sha256_file

    for f in _weight_files(ckpt):
        sha256_file(f)
    return sum(f.stat().st_size for f in _weight_files(ckpt))


def _role_order(m: Model) -> list[tuple[str, int | None]]:
    """embed, then layer after layer, then final norm and head: roughly the order on disk."""
    order: list[tuple[str, int | None]] = [("embed", None)]
    order += [(r, layer) for layer in range(m.cfg.n_layers) for r in m.roles(layer)]
    return order + [(r, None) for r in m.roles(None) if r != "embed"]


def _huref(ckpt: Path, convert: bool) -> int:
    """Every layer through LayerStream (file-order runs into reused buffers, next layer prefetched),
    then the global tensors (embedding, final norm, head) one by one."""
    import torch

    from huref.arch import load_model
    from huref.arch.layers import LayerStream

    m = load_model(ckpt)
    total = 0
    roles = sorted({r for layer in range(m.cfg.n_layers) for r in m.roles(layer)})
    for _layer, weights in LayerStream(m, roles, dtype=torch.float32 if convert else None):
        total += sum(t.numel() for t in weights.values())
    for role in m.roles(None):
        t = m.tensor(role) if convert else m.ckpt.source.read(m.binding(role).name)
        total += t.numel()
        del t
    return total


def _huref_tensorwise(ckpt: Path) -> int:
    """The naive way, for comparison: each role's tensor read on its own into fresh memory."""
    from huref.arch import load_model

    m = load_model(ckpt)
    total = 0
    for role, layer in _role_order(m):
        t = m.ckpt.source.read(m.binding(role, layer).name)
        total += t.numel()
        del t
    return total


def _check_values(ckpt: Path) -> int:
    from huref.arch import load_model
    from huref.inspect import non_finite_tensors

    bad = non_finite_tensors(load_model(ckpt))
    assert not bad, bad
    return len(bad)


def run_phase(phase: str, ckpt: Path, chunk: int) -> dict[str, float]:
    """Time one phase in this process; returns seconds, peak RSS before and after the work."""
    if phase != "plain":
        import torch  # imports are not part of the timed work, but they are part of the RSS

        torch.set_num_threads(os.cpu_count() or 1)
    rss_idle = _peak_rss_bytes()
    t0 = time.perf_counter()
    if phase == "plain":
        _plain(ckpt, chunk)
    elif phase == "sha256":
        _sha256(ckpt)
    elif phase in ("huref-raw", "huref-f32"):
        _huref(ckpt, convert=phase == "huref-f32")
    elif phase == "huref-tensorwise":
        _huref_tensorwise(ckpt)
    elif phase == "check-values":
        _check_values(ckpt)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_idle": rss_idle, "rss_peak": _peak_rss_bytes()}


# ------------------------------------------------------------------ driver


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _child(phase: str, ckpt: Path, chunk: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", phase, "--ckpt", str(ckpt), "--chunk-mb", str(chunk >> 20)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / ".bench", help="where the synthetic checkpoint lives")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each phase (root)")
    ap.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase; the fastest is reported")
    ap.add_argument("--chunk-mb", type=int, default=64, help="buffer of the plain read, MB (2**20 bytes)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    chunk = args.chunk_mb << 20

    if args.child:
        print(json.dumps(run_phase(args.child, args.ckpt, chunk)))
        return 0

    sys.path.insert(0, str(REPO / "bench"))
    import logging

    from synthetic import build_synthetic_7b

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ckpt = build_synthetic_7b(args.dir / "llama2-7b-synthetic")
    files = _weight_files(ckpt)
    size = sum(f.stat().st_size for f in files)
    phases = [p for p in args.phases.split(",") if p]
    if "plain" not in phases:
        phases.insert(0, "plain")  # the reference every ratio is taken against
    cold = args.cold and _drop_caches()
    if args.cold and not cold:
        print("cannot drop the page cache (not root?): running warm", file=sys.stderr)
    if not cold:
        _child("plain", ckpt, chunk)  # untimed: bring every file into the page cache

    results: dict[str, dict[str, float]] = {}
    for phase in phases:
        runs = []
        for _ in range(args.repeat):
            if cold:
                _drop_caches()
            runs.append(_child(phase, ckpt, chunk))
        results[phase] = min(runs, key=lambda r: r["seconds"])

    mode = "cold (page cache dropped before each phase)" if cold else "warm (files in the page cache)"
    print(f"\n{ckpt}: {len(files)} files, {size / 1e9:.2f} GB; {mode}; {os.cpu_count()} CPUs")
    print(f"{'phase':<14}{'seconds':>9}{'GB/s':>8}{'vs plain':>10}{'RSS idle':>10}{'peak RSS':>10}")
    base = results["plain"]["seconds"]
    for phase, r in results.items():
        print(
            f"{phase:<14}{r['seconds']:>9.2f}{size / r['seconds'] / 1e9:>8.2f}{base / r['seconds']:>10.2f}"
            f"{r['rss_idle'] / 1e9:>9.2f}G{r['rss_peak'] / 1e9:>9.2f}G"
        )
    ok = True
    if "huref-raw" in results:
        r = results["huref-raw"]
        ratio_ok = base / r["seconds"] >= TARGET_RATIO
        rss_ok = r["rss_peak"] / 1e9 < TARGET_RSS_GB
        ok = ratio_ok and rss_ok
        print(
            f"huref-raw (layer-by-layer read): throughput {'meets' if ratio_ok else 'MISSES'} >= {TARGET_RATIO} x plain; "
            f"peak RSS {'meets' if rss_ok else 'MISSES'} < {TARGET_RSS_GB} GB"
        )
    if "huref-f32" in results:
        r = results["huref-f32"]
        print(
            f"huref-f32 (read + float32 conversion, informational): {base / r['seconds']:.2f} x plain, "
            f"peak RSS {r['rss_peak'] / 1e9:.2f} GB ({'<' if r['rss_peak'] / 1e9 < TARGET_RSS_GB else '>='} {TARGET_RSS_GB} GB)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
