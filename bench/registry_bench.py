"""Registry-size benchmark: indexed (sketch) scans against exhaustive scans at 10, 100 and 1000 bases.

A synthetic registry: the tiny zoo's real bases (each its own family, so their pairs form the Z
null) plus random-init models of the zoo's architectures (llama, gpt2, gpt_neox) at many seeds,
sharing the zoo's tokenizer, each fingerprinted once (robust mode, the scan's settings) and cached
under ``.bench/registry/`` so reruns are cheap. For each registry size, in one run and side by
side: a fresh registry holding that many bases, then the same few zoo models scanned indexed (the
default) and exhaustively (``--exhaustive``), each in its own copy of the registry (no shared
comparison cache). Printed per size: scan time per model for both, their ratio, the bases compared
exactly and ruled out per model, whether the two scans give identical verdicts, and whether the
verdicts match the zoo's ground truth (zoo.json: derived from its root base, or independent).

    python bench/registry_bench.py [--zoo .zoo/tiny] [--sizes 10,100,1000] [--models a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.registry.enroll import add_base  # noqa: E402
from huref.registry.store import BLOB_DIR, Store  # noqa: E402
from huref.scan import ScanConfig, run_scan  # noqa: E402
from huref.scan.runner import scan_settings  # noqa: E402

ARCHS = ("llama", "gpt2", "gpt_neox")
# derived models of every kind the zoo has (fine-tunes, attacks, a vocabulary change) and independents
DEFAULT_MODELS = (
    "gpt2-a-sft",
    "llama-a-cpt",
    "llama-a-attack-vocab-perm",
    "llama-a-vocab-expand",
    "stories260k-sft",
    "llama-b",
)


def synthetic_fingerprint(zoo: Path, cache: Path, arch: str, seed: int, n: int) -> Path:
    """The cached fingerprint file of a random-init ``arch`` model at ``seed`` (built when missing)."""
    out = cache / f"synth-n{n}-{arch}-{seed}.safetensors"
    if out.is_file():
        return out
    from transformers.utils import logging as hf_logging

    from huref.registry.enroll import load_source
    from huref.zoo.models import new_model, save_hf
    from huref.zoo.presets import PRESETS

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per model otherwise
    p = PRESETS["tiny"]
    with tempfile.TemporaryDirectory(prefix="huref-registry-bench-") as d:
        model_dir = save_hf(new_model(arch, p, p.vocab, seed), Path(d) / "m", zoo / "_tokenizer")
        _, data, _ = load_source(model_dir, scan_settings(n))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def build_home(home: Path, zoo: Path, real: list[str], synth: list[Path], n: int) -> float:
    t = time.perf_counter()
    with Store(home) as store:
        for name in real:
            add_base(store, zoo / name, name, family=name, settings=scan_settings(n))
        for f in synth:
            add_base(store, f, f.stem)  # no family: no pairs (the null comes from the zoo's bases)
    return time.perf_counter() - t


def copy_home(src: Path, dst: Path) -> None:
    """A copy of a registry whose fingerprint files are hard links (they are never written in place)."""
    blobs = src / BLOB_DIR

    def link_or_copy(a: str, b: str) -> object:
        if Path(a).resolve().is_relative_to(blobs.resolve()):
            os.link(a, b)
            return b
        return shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def scan(home: Path, zoo: Path, out: Path, exhaustive: bool, n: int) -> tuple[float, list[dict[str, Any]]]:
    cfg = ScanConfig(
        zoo, out, workers=1, settings=scan_settings(n), home=home, progress=False, exhaustive=exhaustive
    )
    t = time.perf_counter()
    rep = run_scan(cfg)
    return time.perf_counter() - t, rep.models


def warm_up() -> None:
    """Import what a scan imports before anything is timed (neither scan pays the imports)."""
    import huref.invariants.compare
    import huref.invariants.extract
    import huref.registry.sketch
    import huref.scan.index  # noqa: F401


def truth(manifest: dict[str, Any], registered: set[str]) -> dict[str, str | None]:
    """model -> the base it derives from (when registered), or None (independent of the registry)."""
    out: dict[str, str | None] = {}
    for m in manifest["models"]:
        root = m["root"] if isinstance(m["root"], str) else None
        out[m["name"]] = root if m["relation"] != "base" and root in registered else None
    return out


def correct(entry: dict[str, Any], want: str | None) -> bool:
    if want is None:
        return entry.get("verdict") != "derived"
    return entry.get("verdict") == "derived" and entry.get("best_base") == want


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--cache", type=Path, default=REPO / ".bench" / "registry")
    ap.add_argument("--workers", type=int, default=2, help="processes building synthetic fingerprints")
    ap.add_argument(
        "--n", type=int, default=128, help="probe tokens (scan and bases alike; 128 keeps 1000 files small)"
    )
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    models = [m for m in args.models.split(",") if m]
    manifest = json.loads((args.zoo / "zoo.json").read_text())
    real = [m["name"] for m in manifest["models"] if m["relation"] == "base"]
    args.cache.mkdir(parents=True, exist_ok=True)

    n_synth = max(0, sizes[-1] - len(real))
    t = time.perf_counter()
    jobs = [(args.zoo, args.cache, ARCHS[i % 3], 1000 + i, args.n) for i in range(n_synth)]
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        synth = list(pool.map(synthetic_fingerprint, *zip(*jobs, strict=True))) if jobs else []
    print(f"{n_synth} synthetic fingerprints ready in {time.perf_counter() - t:.1f} s (cache {args.cache})")

    # the full registry (the zoo's bases and every synthetic one) is built once and cached; each
    # size is a copy of it less the bases beyond that size
    full = args.cache / f"home-n{args.n}-{sizes[-1]}"
    if not (full / "done").is_file():
        shutil.rmtree(full, ignore_errors=True)
        t_add = build_home(full, args.zoo, real, synth, args.n)
        (full / "done").write_text(f"{t_add:.1f}\n")
    print(f"registry of {len(real) + len(synth)} bases: built in {float((full / 'done').read_text()):.1f} s")
    warm_up()

    with tempfile.TemporaryDirectory(prefix="huref-registry-bench-") as tmp:
        zoo = Path(tmp) / "zoo"  # the scanned models only (copies: a few MB)
        for m in models:
            shutil.copytree(args.zoo / m, zoo / m)
        print(
            f"{'bases':>6} {'indexed s/model':>16} {'exhaustive s/model':>19} {'ratio':>6} "
            f"{'compared':>9} {'ruled out':>10} {'same':>5} {'truth':>6}"
        )
        for n in sizes:
            if n < len(real):
                real_n, synth_n = real[:n], []
            else:
                real_n, synth_n = real, synth[: n - len(real)]
            home = Path(tmp) / f"home-{n}"
            copy_home(full, home)
            keep = set(real_n) | {f.stem for f in synth_n}
            with Store(home) as store:
                for b in store.bases():
                    if b.name not in keep:
                        store.remove_base(b.name)
            copy_home(home, Path(tmp) / f"home-{n}-x")
            if n == sizes[0]:  # untimed: lazy imports and first-call costs fall on neither timed scan
                copy_home(home, Path(tmp) / "home-warm")
                scan(Path(tmp) / "home-warm", zoo, Path(tmp) / "out-warm", False, args.n)
            t_idx, idx = scan(home, zoo, Path(tmp) / f"out-{n}", False, args.n)
            t_exh, exh = scan(Path(tmp) / f"home-{n}-x", zoo, Path(tmp) / f"out-{n}-x", True, args.n)
            key = ("name", "verdict", "best_base")
            same = [{k: e.get(k) for k in key} for e in idx] == [{k: e.get(k) for k in key} for e in exh]
            want = truth(manifest, set(real_n))
            ok = sum(correct(e, want.get(e["name"])) for e in idx)
            compared = sum(int(e.get("bases_compared") or 0) for e in idx) / max(1, len(idx))
            ruled = sum(int(e.get("bases_ruled_out") or 0) for e in idx) / max(1, len(idx))
            k = max(1, len(models))
            print(
                f"{n:>6} {t_idx / k:>16.3f} {t_exh / k:>19.3f} {t_exh / max(t_idx, 1e-9):>6.2f} "
                f"{compared:>9.1f} {ruled:>10.1f} {'yes' if same else 'NO':>5} {ok:>3}/{len(idx)}"
            )
            if n == sizes[-1]:  # where the exact comparisons go, per model
                for e in idx:
                    unread = sum(1 for r in e.get("comparisons", []) if "share only" in str(r.get("error")))
                    print(
                        f"  {e['name']}: {e.get('bases_compared')} compared exactly ({unread} of them "
                        f"not comparable, known from the token sets), {e.get('bases_ruled_out')} ruled out"
                    )
            if not same:
                for a, b in zip(idx, exh, strict=True):
                    if (a.get("verdict"), a.get("best_base")) != (b.get("verdict"), b.get("best_base")):
                        print(
                            f"  differs: {a['name']}: indexed {a.get('verdict')} {a.get('best_base')}; "
                            f"exhaustive {b.get('verdict')} {b.get('best_base')}"
                        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
