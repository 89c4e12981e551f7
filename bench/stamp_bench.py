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

Two cache states, each phase in the same one: ``warm`` (default: before every timed phase the
vectors are evicted from the page cache and the checkpoint is read once, untimed, so ``cp`` and
the stamp both read the checkpoint from memory while the vector comes from disk) and ``--cold``
(the page cache dropped before every timed phase; needs root: everything comes from disk, for
``cp`` too).

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


def warm_state(ckpt: Path, vectors: list[Path]) -> None:
    """The state every warm phase starts from: each vector evicted (read from disk), the
    checkpoint read once (from the page cache, as far as it fits). Without it a phase inherits
    what the one before left: a 13.7 GB vector streamed through the cache evicts part of the
    checkpoint, and a vector stamped twice in a row comes from memory the second time."""
    os.sync()  # dirty pages of the last output are written back, not left to throttle the next phase
    for v in vectors:
        evict(v)
    buf = bytearray(64 * 2**20)
    for f in sorted(ckpt.iterdir()):
        if f.is_file():
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def _child(
    phase: str, *paths: Path, cold: bool = False, warm: tuple[Path, list[Path]] | None = None
) -> dict[str, float]:
    if cold and not drop_page_cache():
        raise SystemExit("--cold needs permission to write /proc/sys/vm/drop_caches (root)")
    if warm is not None:
        warm_state(*warm)
    cmd = [sys.executable, __file__, "--phase", phase, *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=REPO / ".bench")
    ap.add_argument("--keep", action="store_true", help="keep the copied and stamped outputs")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every timed phase (root)")
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
    cold = args.cold
    warm = None if cold else (ckpt, [vector, vector8])
    cp = _child("cp", ckpt, outs["cp"], cold=cold, warm=warm)
    if not args.keep:
        shutil.rmtree(outs["cp"])
    runs = {}
    for label, phase, vec in (
        ("stamp", "stamp", vector),
        ("stamp --no-verify-hashes", "stamp-noverify", vector),
        ("stamp (int8 vector)", "stamp", vector8),
    ):
        runs[label] = _child(phase, ckpt, vec, outs["stamp"], cold=cold, warm=warm)
        if not args.keep or label != "stamp":
            shutil.rmtree(outs["stamp"])
    print(
        f"checkpoint: {size / 1e9:.1f} GB in {len(list(ckpt.glob('*.safetensors')))} shards; vector "
        f"{vector.stat().st_size / 1e9:.1f} GB (bf16), {vector8.stat().st_size / 1e9:.1f} GB (int8); page cache "
        + (
            "dropped before every timed phase (cold)"
            if cold
            else "warm (checkpoint read once before every phase, vectors evicted)"
        )
    )
    print(f"cp -r:  {cp['seconds']:.1f} s")
    for label, st in runs.items():
        print(
            f"{label + ':':26s} {st['seconds']:5.1f} s  ratio {st['seconds'] / cp['seconds']:.2f} (target <= "
            f"{TARGET_RATIO}); compatibility check {st['check_seconds']:.1f} s, without it "
            f"{(st['seconds'] - st['check_seconds']) / cp['seconds']:.2f}; peak RSS {st['peak_rss'] / 2**30:.2f} GiB "
            f"(target < {TARGET_RSS_GB} GB); verdict {st['verdict']}, {st['stamped']} tensors"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
