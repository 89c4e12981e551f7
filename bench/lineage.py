"""Evaluation harness: every (base, candidate) pair of a zoo manifest, and of
../shared/lineage_pairs.csv for the pairs whose models exist locally.

Prints one row per pair (relation, paper ICS, robust ICS, PCS, Z, p, verdict, correct) and then
AUC and TPR at 1% FPR for paper mode and robust mode side by side.

    python bench/lineage.py --zoo .zoo/tiny [--pairs ../shared/lineage_pairs.csv --models-dir DIR]

The pairs file is checked before any work: a UTF-8 CSV (a byte-order mark is allowed) whose header
names model_a, model_b and label (relation is optional), every row as long as the header. Only the
labels ``derived`` and ``independent`` are scored; pairs with any other label are left out and
counted. A pair listed more than once (in either order) is scored once; a pair whose rows disagree
on the label is left out. Model ids must be ``owner/name`` or ``name`` (letters, digits, ``._-``);
a model is looked for as DIR/owner/name or DIR/owner--name under --models-dir, then in the Hugging
Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) at the snapshot that
refs/main names (the only snapshot when there is no refs/main); with ``--hub on`` (or ``auto``,
the default, when the hub answers) any other model is read from the hub by its repository id
(HF_ENDPOINT, HF_TOKEN; see huref.checkpoint.hub). Each model is fingerprinted once.
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.errors import HurefError, UsageError  # noqa: E402
from huref.invariants import Settings, compare_fingerprints, fingerprint_model  # noqa: E402
from huref.invariants.separation import auc, margin, tpr_at_fpr, zoo_pairs  # noqa: E402
from huref.invariants.stats import null_from_values  # noqa: E402

DEFAULT_PAIRS = REPO.parent / "shared" / "lineage_pairs.csv"
LABELS = {"derived": True, "independent": False}
REQUIRED_COLUMNS = ("model_a", "model_b", "label")
# a Hugging Face repository id: an optional owner and a name, each of letters, digits and ._-,
# starting and ending with a letter or digit; '..' and '--' are refused (the hub refuses them too,
# and '--' is the separator of the cache's folder names)
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
MODEL_ID = re.compile(rf"(?:{_PART}/)?{_PART}")
NOT_LOCAL = "models not local"


@dataclass(frozen=True)
class HubPair:
    a: str
    b: str
    relation: str
    derived: bool
    line: int  # the first row of the file that lists the pair


@dataclass
class PairList:
    """The scorable pairs of a pairs file, and what was left out of it."""

    rows: int = 0
    pairs: list[HubPair] = field(default_factory=list)
    other_labels: Counter[str] = field(default_factory=Counter)  # label -> pairs left out
    conflicts: list[str] = field(default_factory=list)  # "a / b (derived, independent)", left out
    self_pairs: int = 0  # a model paired with itself, left out
    duplicate_rows: int = 0  # repeats (either order, same label) of a pair already listed

    def summary(self) -> str:
        distinct = len(self.pairs) + sum(self.other_labels.values()) + len(self.conflicts) + self.self_pairs
        parts = [f"{self.rows} rows, {distinct} distinct pairs, {len(self.pairs)} scorable"]
        if self.other_labels:
            labels = ", ".join(f"{k!r} x{v}" for k, v in sorted(self.other_labels.items()))
            parts.append(
                f"{sum(self.other_labels.values())} left out for a label other than derived/independent ({labels})"
            )
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} left out because their rows disagree on the label")
        if self.self_pairs:
            parts.append(f"{self.self_pairs} left out for pairing a model with itself")
        if self.duplicate_rows:
            parts.append(f"{self.duplicate_rows} duplicate rows dropped")
        return "; ".join(parts)


def read_pairs(path: Path) -> PairList:
    """Read and check the whole pairs file; any malformation is a UsageError naming the line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise UsageError(f"{path}: empty; the header must name {', '.join(REQUIRED_COLUMNS)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise UsageError(f"{path}: the header lacks the column(s) {', '.join(missing)}")
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise UsageError(f"{path}: the header names {', '.join(repeated)} more than once")
        records: list[tuple[int, str, str, str, str]] = []
        for row in reader:
            if not any(v.strip() for v in row):
                continue  # a blank line
            if len(row) != len(header):
                raise UsageError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            v = dict(zip(header, (x.strip() for x in row), strict=True))
            records.append((reader.line_num, v["model_a"], v["model_b"], v["label"], v.get("relation", "")))
    except csv.Error as e:
        raise UsageError(f"{path}:{reader.line_num}: not CSV: {e}") from None

    out = PairList(rows=len(records))
    groups: dict[tuple[str, str], list[tuple[int, str, str, str, str]]] = {}
    for rec in records:
        a, b = rec[1], rec[2]
        groups.setdefault((a, b) if a <= b else (b, a), []).append(rec)
    for (a, b), recs in groups.items():
        labels = list(dict.fromkeys(r[3] for r in recs))
        line, first_a, first_b, label, relation = recs[0]
        if a == b:
            out.self_pairs += 1
        elif len(labels) > 1:
            out.conflicts.append(
                f"{first_a} / {first_b} ({', '.join(labels)}; lines {', '.join(str(r[0]) for r in recs)})"
            )
        elif label not in LABELS:
            out.other_labels[label] += 1
        else:
            out.pairs.append(HubPair(first_a, first_b, relation, LABELS[label], line))
            out.duplicate_rows += len(recs) - 1
    return out


def id_problem(model_id: str) -> str | None:
    """Why ``model_id`` cannot name a model (it would resolve outside the places searched), or None."""
    if MODEL_ID.fullmatch(model_id) and ".." not in model_id and "--" not in model_id:
        return None
    return f"{model_id!r} is not a model id (owner/name or name: letters, digits, '.', '_', '-')"


def hub_cache() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's rules (read at call time)."""
    env = os.environ
    where = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not where:
        cache_home = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(env.get("HF_HOME") or os.path.join(cache_home, "huggingface"), "hub")
    return Path(os.path.expandvars(os.path.expanduser(where)))


def hf_snapshot(model_id: str) -> tuple[Path | None, str | None]:
    """(the snapshot refs/main names, None), or (None, why not) when the cache holds the model but
    no usable snapshot, or (None, None) when the cache does not hold it."""
    repo = hub_cache() / ("models--" + model_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None, None
    ref = repo / "refs" / "main"
    try:
        if ref.is_file():
            commit = ref.read_text(encoding="ascii").strip()
            if not re.fullmatch(r"[0-9a-f]{40}", commit):
                return None, f"{ref}: not a commit hash"
            snap = snaps / commit
            return (
                (snap, None)
                if snap.is_dir()
                else (None, f"refs/main names snapshot {commit[:12]}, which is absent")
            )
        found = sorted(d for d in snaps.iterdir() if d.is_dir())
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{repo}: cannot be read: {e}"
    if len(found) == 1:
        return found[0], None
    if found:
        return None, f"{repo}: {len(found)} snapshots and no refs/main to choose one"
    return None, None


def resolve_local(model_id: str, models_dir: Path | None) -> tuple[Path | None, str | None]:
    """(a local copy of a hub model, None), or (None, why it is skipped); (None, None): not local."""
    problem = id_problem(model_id)
    if problem:
        return None, problem
    cands = []
    if models_dir:
        cands += [models_dir / model_id, models_dir / model_id.replace("/", "--")]
    for c in cands:
        if c.is_dir() and (c / "config.json").is_file():
            return c, None
    snap, why = hf_snapshot(model_id)
    if snap is not None and not (snap / "config.json").is_file():
        return None, f"{snap}: no config.json"
    return snap, why


@dataclass(frozen=True)
class Failed:
    """A model that could not be fingerprinted (kept, so it is not tried again for its next pair)."""

    message: str


@dataclass
class Row:
    a: str
    b: str
    relation: str
    derived: bool
    fa: Any
    fb: Any
    zoo: bool  # a pair of the zoo manifest (PCS is computed from its checkpoints)


def hub_reachable(model_id: str) -> bool:
    """Whether the hub (HF_ENDPOINT) answers for ``model_id``: one metadata request; offline
    (HF_HUB_OFFLINE=1) or a network failure is 'no', any answer of the hub (even 'not found') 'yes'."""
    from huref.checkpoint.hub import HubEnv, parse_repo_id, resolve_revision

    env, ref = HubEnv.from_env(), parse_repo_id(model_id)
    if env.offline or ref is None:
        return False
    try:
        resolve_revision(ref, env)
    except HurefError as e:
        return "cannot reach" not in str(e)
    return True


def hub_rows(
    pairs: PairList,
    models_dir: Path | None,
    settings: Settings,
    fingerprint: Callable[[Path | str, Settings], Any] = fingerprint_model,
    from_hub: bool = False,
) -> tuple[list[Row], Counter[str]]:
    """The pairs whose models are local (with ``from_hub``: every pair, a model that is not local
    being read from the hub by its repository id), each model fingerprinted once; and why the
    others were skipped."""
    rows: list[Row] = []
    skipped: Counter[str] = Counter()
    fps: dict[Path | str, Any] = {}  # real path or repository id -> fingerprint, or Failed

    def fp_of(p: Path | str) -> Any:
        key = p.resolve() if isinstance(p, Path) else p
        if key not in fps:
            try:
                fps[key] = fingerprint(p, settings)
            except (HurefError, OSError, MemoryError) as e:
                fps[key] = Failed(str(e) if isinstance(e, HurefError) else f"{type(e).__name__}: {e}")
        return fps[key]

    for pr in pairs.pairs:
        (pa, why_a), (pb, why_b) = resolve_local(pr.a, models_dir), resolve_local(pr.b, models_dir)
        why = why_a or why_b
        if why:
            print(f"skip {pr.a} / {pr.b}: {why}")
            skipped["invalid id" if id_problem(pr.a) or id_problem(pr.b) else "cache unusable"] += 1
            continue
        if (pa is None or pb is None) and not from_hub:
            skipped[NOT_LOCAL] += 1
            continue
        fa, fb = fp_of(pa or pr.a), fp_of(pb or pr.b)  # a repository id: read from the hub
        bad = next((f for f in (fa, fb) if isinstance(f, Failed)), None)
        if bad is not None:
            print(f"skip {pr.a} / {pr.b}: {bad.message}")
            skipped["fingerprint failed"] += 1
            continue
        rows.append(Row(pr.a, pr.b, pr.relation, pr.derived, fa, fb, zoo=False))
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--pairs", type=Path, default=None, help=f"default: {DEFAULT_PAIRS} where it exists")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument(
        "--hub",
        choices=("auto", "on", "off"),
        default="auto",
        help="read pairs' models that are not local from the hub by repository id "
        "(auto: when the hub answers and HF_HUB_OFFLINE is not set)",
    )
    args = ap.parse_args(argv)
    try:
        return run(args)
    except HurefError as e:
        print(f"lineage.py: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from huref.zoo.build import existing_or_built, load_manifest

    t0 = time.time()
    # the pairs file and the folders are checked before the zoo is built or anything fingerprinted
    pairs_path = (
        args.pairs if args.pairs is not None else (DEFAULT_PAIRS if DEFAULT_PAIRS.is_file() else None)
    )
    pairs = read_pairs(pairs_path) if pairs_path is not None else PairList()
    if args.models_dir is not None and not args.models_dir.is_dir():
        raise UsageError(f"--models-dir {args.models_dir}: not a folder")
    settings = Settings(n=args.n)

    zoo = existing_or_built(args.zoo)  # a zoo already there is read as it is, never rebuilt
    manifest = load_manifest(zoo)
    fps = {m["name"]: fingerprint_model(zoo / m["path"], settings) for m in manifest["models"]}
    rows = [Row(a, b, rel, y, fps[a], fps[b], zoo=True) for a, b, rel, y in zoo_pairs(manifest)]
    non_local = [
        m for pr in pairs.pairs for m in (pr.a, pr.b) if resolve_local(m, args.models_dir) == (None, None)
    ]
    from_hub = args.hub == "on" or (args.hub == "auto" and bool(non_local) and hub_reachable(non_local[0]))
    if non_local:
        print(f"{len(set(non_local))} models not local: {'read from the hub' if from_hub else 'skipped'}")
    hub, skipped = hub_rows(pairs, args.models_dir, settings, from_hub=from_hub)
    rows += hub

    # Z against the null measured on this harness's own independent base pairs
    base_names = [m["name"] for m in manifest["models"] if m["relation"] == "base"]
    null_vals = []
    for a, b in itertools.combinations(base_names, 2):
        with contextlib.suppress(HurefError):
            null_vals.append(compare_fingerprints(fps[a], fps[b]).ics)
    null = null_from_values(null_vals, f"harness independent base pairs (n={len(null_vals)})")

    header = f"{'a':22s} {'b':40s} {'relation':26s} {'paper':>7s} {'robust':>7s} {'PCS':>7s} {'Z':>6s} {'log10p':>8s} {'verdict':13s} ok"
    print(header)
    print("-" * len(header))
    scores: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("paper", "robust", "robust_p")
    }
    correct = total = incomparable = 0
    from huref.arch import load_model
    from huref.invariants.pcs import parameter_cosine

    for r in rows:
        try:
            c = compare_fingerprints(r.fa, r.fb, null)
        except HurefError:
            incomparable += 1
            continue
        pcs = None
        if r.zoo and (zoo / r.a).is_dir():
            with contextlib.suppress(HurefError):
                pcs = parameter_cosine(load_model(zoo / r.a).ckpt, load_model(zoo / r.b).ckpt)
        want = "derived" if r.derived else "independent"
        ok = c.verdict == want
        correct += ok
        total += 1
        f = lambda v, w=7, d=1: ("n/a" if v is None else f"{v:.{d}f}").rjust(w)  # noqa: E731
        print(
            f"{r.a:22s} {r.b:40s} {r.relation:26s} {f(c.ics_paper)} {f(c.ics)} {f(pcs)} {f(c.z, 6)} {f(c.log10_p_value, 8)} {c.verdict:13s} {'yes' if ok else 'NO'}"
        )
        for key, v in (("paper", c.ics_paper), ("robust", c.ics), ("robust_p", -(c.log10_p_value or 0.0))):
            if v is not None:
                scores[key][0 if r.derived else 1].append(v)
    print()
    print(
        f"pairs: {total} compared ({sum(1 for r in rows if r.derived)} derived by ground truth), {incomparable} "
        "incomparable (no shared vocabulary)"
    )
    if pairs_path is not None:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
        print(f"{pairs_path.name}: {pairs.summary()}")
        print(f"{pairs_path.name}: {len(hub)} pairs compared, {sum(skipped.values())} skipped ({why})")
        for c in pairs.conflicts:
            print(f"  label conflict, left out: {c}")
    print(
        f"verdict accuracy: {correct}/{total} = {correct / max(total, 1):.3f}   (Z null: {null.source}, "
        f"mean {null.mean:.2f}, std {null.std:.2f})"
    )
    print()
    print(f"{'score':34s} {'AUC':>7s} {'TPR@1%FPR':>10s} {'margin':>8s}")
    labels = {
        "paper": "paper mode ICS (published method)",
        "robust": "robust mode ICS",
        "robust_p": "robust mode -log10 p (neuron test)",
    }
    for key, (pos, neg) in scores.items():
        print(f"{labels[key]:34s} {auc(pos, neg):7.3f} {tpr_at_fpr(pos, neg):10.3f} {margin(pos, neg):8.2f}")
    print(
        "margin: (smallest derived score - largest independent score) / sd of the independent scores;"
        " above 0 the two sets are separated, and the larger the safer"
    )
    print(f"\n({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
