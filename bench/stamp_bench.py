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
- ``stamp (low-rank vector, rank R)``: the same with a low-rank vector (``extract --rank R``,
  ``--rank``, default 16): every matrix as bf16 factors A [out x R], B [R x in] (random, product
  values ~2e-4 like the dense vector's), 1-D tensors dense; the stamp reads the checkpoint and
  ~0.1 GB of factors and adds each A @ B (in place by the CPU's bf16 units where it has them, else
  in float32 a block of rows at a time), and runs the compatibility check beside the stream. Its size and its fraction of the checkpoint are printed
  (target < 1%), and its ratio to ``cp`` (target <= 1.2).

``--phases`` picks the stamp phases to run (default all; ``cp`` always runs): e.g.
``--phases lowrank`` needs neither dense vector on disk (27 GB less to build).

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
import zlib
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
TARGET_RATIO = 1.5
TARGET_LOWRANK_RATIO = 1.2  # the low-rank stamp reads ~0.1 GB of vector, not 13.7 GB
TARGET_LOWRANK_FRACTION = 0.01
PHASES = ("stamp", "noverify", "int8", "lowrank")
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

    from huref.arch import load_model
    from huref.checkpoint.writer import TensorPlan
    from huref.fpvec.vector import (
        VECTOR_FORMAT,
        base_fingerprint_bytes,
        stored_plan,
        storing,
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
        **_synthetic_doc(ckpt, m, fp, plan),
    }

    def tau_of(p: TensorPlan) -> torch.Tensor:
        like = TensorPlan(p.name, p.shape, torch.bfloat16)
        return random_tensor(like, seed=1).sub_(1.0 if len(p.shape) == 1 else 0.0).mul_(TAU_SCALE)

    t0 = time.perf_counter()
    write_vector(dest, plan, storing(tau_of), doc, None, fp)
    print(f"synthetic vector written in {time.perf_counter() - t0:.0f} s", flush=True)
    return dest


def _synthetic_doc(ckpt: Path, m: Any, fp: bytes, plan: list[Any]) -> dict[str, Any]:
    """The vector document's fields both synthetic vectors share: the base's identity and
    fingerprint digest, an all-zero key commitment, the stored tensors' counts."""
    import hashlib

    from huref import __version__
    from huref.fpvec.vector import vector_doc_counts, vocab_roles

    return {
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
            "fingerprint_sha256": hashlib.sha256(fp).hexdigest(),
        },
        "fingerprinted": {"name": "synthetic", "sha256": {}},
        "dropped_roles": [],
        **vector_doc_counts(plan),
    }


def build_lowrank_vector(ckpt: Path, dest: Path, rank: int) -> Path:
    """A sealed ``huref-fpvec/2`` vector of the checkpoint's shapes at ``rank`` (written once,
    reused while it exists): bf16 random factors for every matrix they make smaller, as
    ``extract --rank`` stores them; 1-D tensors dense; the compact base fingerprint."""
    if dest.exists():
        return dest
    import torch

    from huref.arch import load_model
    from huref.checkpoint.writer import TensorPlan
    from huref.fpvec.lowrank import SPLIT_NOTE, factors_smaller
    from huref.fpvec.vector import (
        LOWRANK_FORMAT,
        factored_plan,
        write_vector,
    )
    from huref.fpvec.vector_lowrank import compact_base_fingerprint

    m = load_model(ckpt)
    src = m.ckpt.source
    plan: list[TensorPlan] = []
    factored: dict[str, dict[str, object]] = {}
    for n in src.names():
        shape = src.info(n).shape
        if factors_smaller(shape, rank):
            plan += factored_plan(n, shape, rank, torch.bfloat16)
            factored[n] = {"shape": list(shape), "rank": rank, "rel_error": None}
        else:
            plan.append(TensorPlan(n, shape, torch.bfloat16))
    fp = compact_base_fingerprint(m)
    doc = {
        "format": LOWRANK_FORMAT,
        **_synthetic_doc(ckpt, m, fp, plan),
        "lowrank": {
            "rank": rank,
            "requested": rank,
            "split": SPLIT_NOTE,
            "checked": False,
            "tried": None,
            "reference_fsr": None,
            "energy_kept": None,
            "dense_roles": [],
            "tensors": factored,
        },
    }
    # entries of A @ B have std sigma^2 sqrt(rank): ~2e-4, the dense vector's tau scale
    sigma = (2e-4 / rank**0.5) ** 0.5

    def produce(p: TensorPlan) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(p.name.encode()))
        if len(p.shape) == 1:
            return torch.randn(p.shape, generator=g).mul_(TAU_SCALE * 0.02).to(p.dtype)
        return torch.randn(p.shape, generator=g).mul_(sigma).to(p.dtype)

    t0 = time.perf_counter()
    write_vector(dest, plan, produce, doc, None, fp)
    print(f"synthetic rank-{rank} vector written in {time.perf_counter() - t0:.0f} s", flush=True)
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
    ap.add_argument("--rank", type=int, default=16, help="rank of the low-rank vector's factors")
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated stamp phases to run after cp (of {', '.join(PHASES)})",
    )
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

    wanted = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not wanted or set(wanted) - set(PHASES):
        raise SystemExit(f"--phases takes a comma-separated list of {', '.join(PHASES)}")
    ckpt = build_synthetic_7b(args.dir / "llama2-7b-synthetic")
    paths = {
        "dense": args.dir / "llama2-7b-synthetic.fpvec.safetensors",
        "int8": args.dir / "llama2-7b-synthetic.int8.fpvec.safetensors",
        "lowrank": args.dir / f"llama2-7b-synthetic.rank{args.rank}.fpvec.safetensors",
    }
    if {"stamp", "noverify"} & set(wanted):
        build_vector(ckpt, paths["dense"])
    if "int8" in wanted:
        build_vector(ckpt, paths["int8"], int8=True)
    if "lowrank" in wanted:
        build_lowrank_vector(ckpt, paths["lowrank"], args.rank)
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    outs = {"cp": args.dir / "stamp-bench-cp", "stamp": args.dir / "stamp-bench-stamped"}
    for o in outs.values():
        if o.exists():
            shutil.rmtree(o)
    cache = "cold" if args.cold else args.cache
    vectors = [p for p in paths.values() if p.exists()]
    labels = {
        "stamp": ("stamp", "stamp", paths["dense"]),
        "noverify": ("stamp --no-verify-hashes", "stamp-noverify", paths["dense"]),
        "int8": ("stamp (int8 vector)", "stamp", paths["int8"]),
        "lowrank": (f"stamp (low-rank vector, rank {args.rank})", "stamp", paths["lowrank"]),
    }
    phases = tuple(labels[k] for k in PHASES if k in wanted)
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
    sizes = ", ".join(
        f"{paths[k].stat().st_size / 1e9:.3g} GB ({what})"
        for k, what in (("dense", "bf16"), ("int8", "int8"), ("lowrank", f"rank {args.rank}"))
        if paths[k] in {vec for _, _, vec in phases}
    )
    print(
        f"checkpoint: {size / 1e9:.1f} GB in {len(list(ckpt.glob('*.safetensors')))} shards; vector "
        f"{sizes}; page cache {cache} ({CACHE_STATES[cache]}); "
        + (f"medians of {args.repeat} rounds [min-max]" if args.repeat > 1 else "one round")
    )
    if "lowrank" in wanted:
        frac = paths["lowrank"].stat().st_size / size
        print(
            f"low-rank vector: {paths['lowrank'].stat().st_size / 1e6:.1f} MB, {100 * frac:.2f}% of the "
            f"checkpoint (target < {100 * TARGET_LOWRANK_FRACTION:.0f}%)"
        )
    cp = median([c["seconds"] for c in cps])
    print(f"cp -r:  {cp:.1f} s{_spread([c['seconds'] for c in cps])}")
    for label, sts in runs.items():
        sec = median([st["seconds"] for st in sts])
        check = median([st["check_seconds"] for st in sts])
        rss = max(st["peak_rss"] for st in sts)
        low = "low-rank" in label  # its check runs beside the stream (stamp_model's overlap_check)
        check_note = "overlapped with the stream" if low else f"without it {(sec - check) / cp:.2f}"
        print(
            f"{label + ':':26s} {sec:5.1f} s{_spread([st['seconds'] for st in sts])}  ratio {sec / cp:.2f} "
            f"(target <= {TARGET_LOWRANK_RATIO if low else TARGET_RATIO}); compatibility check {check:.1f} s, "
            f"{check_note}; peak RSS {rss / 2**30:.2f} GiB (target < {TARGET_RSS_GB} GB); verdict {sts[-1]['verdict']}, "
            f"{sts[-1]['stamped']} tensors"
        )
    return 0


def _spread(xs: list[float]) -> str:
    return f" [{min(xs):.1f}-{max(xs):.1f}]" if len(xs) > 1 else ""


if __name__ == "__main__":
    raise SystemExit(main())
