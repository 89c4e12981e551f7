"""How fast ``huref fpvec stamp`` stamps a 7B-shaped checkpoint, against copying the same files.

    python bench/stamp_bench.py [--dir .bench] [--keep]

Builds (once) the synthetic LLaMA-2-7B checkpoint of ``bench/synthetic.py`` and a synthetic
fingerprint vector of the same shapes (bfloat16, small Gaussian values, sealed and with the base's
robust fingerprint embedded exactly as ``extract`` writes it), then times, each in a fresh
subprocess so that its peak RSS is its own:

- ``cp``: ``cp -r`` of the checkpoint folder (reads 13.5 GB, writes 13.5 GB): the floor for any
  tool that writes a new model.
- ``stamp``: ``stamp_model(checkpoint, vector, out)``: reads the checkpoint and the vector
  (27 GB), writes 13.5 GB, checks every tau hash, and before that runs the compatibility check
  (the downstream's robust invariants against the vector's base fingerprint).
- ``stamp --no-verify-hashes``: the same without the per-tensor digest (BLAKE3) of the vector.
- ``stamp (int8 vector)``: the same checkpoint stamped with an int8 vector of the same shapes
  (``extract --dtype int8``: int8 rows and float32 row scales, 6.9 GB), hashes verified.

Three page cache states (``--cache``), each timed phase starting from the same one: ``warm``
(default: the vectors evicted and the checkpoint read once before every phase, so ``cp`` and the
stamp read the checkpoint from memory and the vector from disk), ``cold`` (the page cache dropped
before every phase; needs root: every byte from disk, for ``cp`` too; ``--cold`` for short) and
``fleet`` (the checkpoint evicted and the phase's vector read once: FP-Vec's use, one vector
stamped into many downstream models, each new to the machine, while the vector stays in memory).

``--repeat N`` runs N rounds (each: ``cp``, then every stamp) and prints medians with their range:
on this machine the disk's speed varies by a fifth from one minute to the next.

Printed: wall times, the ratios stamp / cp (target <= 1.5), the compatibility check's share,
and the stamp's peak RSS (target < 2 GB). Outputs are deleted after each phase unless ``--keep``.
Needs ~52 GB free disk (checkpoint + both vectors + one output at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
TARGET_RATIO = 1.5
TARGET_RSS_GB = 2.0
TAU_SCALE = 0.01  # tau values ~2e-4: a fine-tune's typical step, small next to the 0.02 weights


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_vector(ckpt: Path, dest: Path, int8: bool = False) -> Path:
    """A sealed vector of the checkpoint's shapes (written once, reused while it exists); with
    ``int8`` the matrices are stored as ``extract --dtype int8`` stores them."""
    if dest.exists():
        return dest
    import torch
    from synthetic import random_tensor

    from huref import __version__
    from huref.arch import load_model
    from huref.checkpoint.writer import TensorPlan
    from huref.fpvec.vector import (
        VECTOR_FORMAT,
        base_fingerprint_bytes,
        stored_plan,
        storing,
        vector_doc_counts,
        vocab_roles,
        write_vector,
    )

    m = load_model(ckpt)
    src = m.ckpt.source
    plan: list[TensorPlan] = []
    for n in src.names():
        shape = src.info(n).shape
        dtype = (torch.int8 if len(shape) == 2 else torch.float32) if int8 else torch.bfloat16
        plan += stored_plan(n, shape, dtype)
    t0 = time.perf_counter()
    fp = base_fingerprint_bytes(m, n=128)
    print(f"base fingerprint: {time.perf_counter() - t0:.0f} s", flush=True)
    doc = {
        "format": VECTOR_FORMAT,
        "tool_version": __version__,
        "created": "synthetic",
        "key_commitment": "0" * 64,
        "base": {
            "name": ckpt.name,
            "format": m.ckpt.format,
            "sha256": {},
            "family": m.spec.name,
            "model_type": m.cfg.model_type,
            "n_layers": m.cfg.n_layers,
            "d_model": m.cfg.d_model,
            "vocab_size": m.cfg.vocab_size,
            "vocab_roles": vocab_roles(m),
            "fingerprint_sha256": __import__("hashlib").sha256(fp).hexdigest(),
        },
        "fingerprinted": {"name": "synthetic", "sha256": {}},
        "dropped_roles": [],
        **vector_doc_counts(plan),
    }

    def tau_of(p: TensorPlan) -> torch.Tensor:
        like = TensorPlan(p.name, p.shape, torch.bfloat16)
        return random_tensor(like, seed=1).sub_(1.0 if len(p.shape) == 1 else 0.0).mul_(TAU_SCALE)

    t0 = time.perf_counter()
    write_vector(dest, plan, storing(tau_of), doc, None, fp)
    print(f"synthetic vector written in {time.perf_counter() - t0:.0f} s", flush=True)
    return dest


def _phase_cp(ckpt: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(ckpt), str(out)], check=True)
    return {"seconds": time.perf_counter() - t0}


def _phase_stamp(ckpt: Path, vector: Path, out: Path, verify: bool = True) -> dict[str, float]:
    from huref.fpvec.stamp import stamp_model

    t0 = time.perf_counter()
    r = stamp_model(ckpt, vector, out, rows_by_position=True, verify_hashes=verify)
    return {
        "seconds": time.perf_counter() - t0,
        "check_seconds": r.check_seconds,
        "peak_rss": _peak_rss_bytes(),
        "verdict": r.verdict,
        "stamped": r.stamped,
    }  # type: ignore[dict-item]


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache (root only); False where not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def evict(path: Path) -> None:
    """Drop one file's clean pages from the page cache (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


CACHE_STATES = {
    "warm": "checkpoint read once before every phase, vectors evicted",
    "cold": "page cache dropped before every phase",
    "fleet": "the phase's vector read once before it, checkpoint evicted",
}


def _read_through(path: Path) -> None:
    buf = bytearray(64 * 2**20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def prepare(state: str, ckpt: Path, vectors: list[Path], vector: Path | None) -> None:
    """Put the page cache into ``state`` before a timed phase (``vector``: the phase's own).

    - warm: every vector evicted (read from disk), the checkpoint read once (from memory, as far
      as it fits);
    - cold: everything dropped (root), so every byte comes from disk, for ``cp`` too;
    - fleet: the checkpoint evicted, the phase's vector read once: one vector stamped into many
      downstream models, each new to the machine, while the vector stays in memory.

    Without a defined state a phase inherits what the one before left: a 13.7 GB vector streamed
    through the cache evicts part of the checkpoint, a vector stamped twice comes from memory.
    """
    if state == "cold":
        if not drop_page_cache():
            raise SystemExit("--cache cold needs permission to write /proc/sys/vm/drop_caches (root)")
        return
    os.sync()  # the last output's dirty pages written back, not left to throttle this phase
    weights = [f for f in sorted(ckpt.iterdir()) if f.is_file()]
    for v in vectors:
        if not (state == "fleet" and v == vector):
            evict(v)
    if state == "warm":
        for f in weights:
            _read_through(f)
    else:
        for f in weights:
            evict(f)
        if vector is not None:
            _read_through(vector)


def _child(phase: str, *paths: Path, state: tuple[str, Path, list[Path], Path | None]) -> dict[str, float]:
    prepare(*state)
    cmd = [sys.executable, __file__, "--phase", phase, *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=REPO / ".bench")
    ap.add_argument("--keep", action="store_true", help="keep the copied and stamped outputs")
    ap.add_argument(
        "--cache",
        choices=sorted(CACHE_STATES),
        default="warm",
        help="page cache state before every timed phase (see the module notes; cold needs root)",
    )
    ap.add_argument("--cold", action="store_true", help="the same as --cache cold")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every phase; medians are printed")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "cp":
        print(json.dumps(_phase_cp(*args.paths)))
        return 0
    if args.phase in ("stamp", "stamp-noverify"):
        print(json.dumps(_phase_stamp(*args.paths, verify=args.phase == "stamp")))
        return 0

    from synthetic import build_synthetic_7b

    ckpt = build_synthetic_7b(args.dir / "llama2-7b-synthetic")
    vector = build_vector(ckpt, args.dir / "llama2-7b-synthetic.fpvec.safetensors")
    vector8 = build_vector(ckpt, args.dir / "llama2-7b-synthetic.int8.fpvec.safetensors", int8=True)
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    outs = {"cp": args.dir / "stamp-bench-cp", "stamp": args.dir / "stamp-bench-stamped"}
    for o in outs.values():
        if o.exists():
            shutil.rmtree(o)
    cache = "cold" if args.cold else args.cache
    vectors = [vector, vector8]
    phases = (
        ("stamp", "stamp", vector),
        ("stamp --no-verify-hashes", "stamp-noverify", vector),
        ("stamp (int8 vector)", "stamp", vector8),
    )
    cps: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in phases}
    for r in range(args.repeat):
        # rounds interleave the phases (a slow spell of the disk hits all of them), and the stamps
        # take turns at coming first after cp (no phase owns the place after the largest deletion)
        keep = args.keep and r == args.repeat - 1
        cps.append(_child("cp", ckpt, outs["cp"], state=(cache, ckpt, vectors, None)))
        if not keep:
            shutil.rmtree(outs["cp"])
        for label, phase, vec in phases[r % len(phases) :] + phases[: r % len(phases)]:
            runs[label].append(_child(phase, ckpt, vec, outs["stamp"], state=(cache, ckpt, vectors, vec)))
            if not keep or label != "stamp":
                shutil.rmtree(outs["stamp"])
    print(
        f"checkpoint: {size / 1e9:.1f} GB in {len(list(ckpt.glob('*.safetensors')))} shards; vector "
        f"{vector.stat().st_size / 1e9:.1f} GB (bf16), {vector8.stat().st_size / 1e9:.1f} GB (int8); page cache "
        f"{cache} ({CACHE_STATES[cache]}); "
        + (f"medians of {args.repeat} rounds [min-max]" if args.repeat > 1 else "one round")
    )
    cp = median([c["seconds"] for c in cps])
    print(f"cp -r:  {cp:.1f} s{_spread([c['seconds'] for c in cps])}")
    for label, sts in runs.items():
        sec = median([st["seconds"] for st in sts])
        check = median([st["check_seconds"] for st in sts])
        rss = max(st["peak_rss"] for st in sts)
        print(
            f"{label + ':':26s} {sec:5.1f} s{_spread([st['seconds'] for st in sts])}  ratio {sec / cp:.2f} "
            f"(target <= {TARGET_RATIO}); compatibility check {check:.1f} s, without it {(sec - check) / cp:.2f}; "
            f"peak RSS {rss / 2**30:.2f} GiB (target < {TARGET_RSS_GB} GB); verdict {sts[-1]['verdict']}, "
            f"{sts[-1]['stamped']} tensors"
        )
    return 0


def _spread(xs: list[float]) -> str:
    return f" [{min(xs):.1f}-{max(xs):.1f}]" if len(xs) > 1 else ""


if __name__ == "__main__":
    raise SystemExit(main())
