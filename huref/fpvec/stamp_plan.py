"""The planning stage of a stamp: which tau goes to which downstream tensor, from headers only.

Reads the vector's metadata and tensor headers and the downstream checkpoint's headers and
vocabulary; never a tensor's data. Guarantees, when it returns: every vector tensor has a home
downstream (or was skipped on request), every pairing fits by shape (vocabulary tensors by their
trailing dimensions, their rows matched by token string or by position), and every downstream
tensor that receives tau is stored in a float dtype. Any violation is one :class:`FPVecError`
naming the tensor, raised before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from huref.arch import Model
from huref.checkpoint.source import DTYPES
from huref.errors import FPVecError
from huref.fpvec.vector import FP_CARD, Vector, vocab_roles

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class RowMatch:
    mode: str  # 'identical' | 'token-string' | 'position' | 'none'
    base_rows: int
    downstream_rows: int
    shared: int
    src: torch.Tensor | None = None  # [shared] base row ids
    dst: torch.Tensor | None = None  # [shared] downstream row ids

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "base_rows": self.base_rows,
            "downstream_rows": self.downstream_rows,
            "shared": self.shared,
        }


@dataclass
class StampPlan:
    """What a stamp will do, decided from headers: ``tau_of`` maps each downstream tensor that
    receives tau to the vector tensor added to it; ``matches`` holds the row mapping of the
    vocabulary tensors; ``skipped`` the vector tensors left out by ``--skip-missing``."""

    tau_of: dict[str, str]
    skipped: list[str]
    matches: dict[str, RowMatch]
    tied_note: str | None = None
    rows: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {n: rm.summary() for n, rm in self.matches.items()}


def plan_stamp(
    v: Vector, m: Model, downstream: Path, skip_missing: bool, rows_by_position: bool
) -> StampPlan:
    """Pair every vector tensor with its downstream tensor and check the pairs fit (headers only)."""
    base_roles = v.doc["base"].get("vocab_roles", {})
    down_vocab = vocab_roles(m)
    tau_of, skipped = _pair_by_name(v, m, downstream, skip_missing)
    # a base that ties its output layer to the token embedding changed both roles through one tau:
    # a downstream model with an lm_head of its own gets the embedding's tau there too (else half
    # the fingerprint is lost)
    tied_note = None
    head, embed_tau = down_vocab.get("lm_head"), base_roles.get("embed")
    if "lm_head" not in base_roles and head is not None and head not in tau_of and embed_tau in tau_of:
        tau_of[head] = embed_tau
        tied_note = f"{head}: the vector's base ties it to the token embedding; the embedding's tau was added to it too"
    src = m.ckpt.source
    base_vocab_names = set(base_roles.values())
    matches: dict[str, RowMatch] = {}
    for d, n in tau_of.items():
        vs, ds = v.shape(n), src.info(d).shape
        if n in base_vocab_names and d in down_vocab.values():
            if vs[1:] != ds[1:]:
                raise FPVecError(f"tensor {d}: vector shape {list(vs)} does not fit the model's {list(ds)}")
            matches[d] = _row_match(v, m, n, rows_by_position, target=d)
        elif vs != ds:
            raise FPVecError(f"tensor {d}: vector shape {list(vs)} does not fit the model's {list(ds)}")
        if src.info(d).dtype not in DTYPES or not DTYPES[src.info(d).dtype].is_floating_point:
            raise FPVecError(f"tensor {d} is stored as {src.info(d).dtype} downstream: cannot add tau to it")
    return StampPlan(tau_of, skipped, matches, tied_note)


def _pair_by_name(
    v: Vector, m: Model, downstream: Path, skip_missing: bool
) -> tuple[dict[str, str], list[str]]:
    """(downstream tensor -> vector tensor of the same name, the vector tensors with none)."""
    down_names = set(m.ckpt.source.names())
    skipped: list[str] = []
    tau_of: dict[str, str] = {}
    for n in v.names:
        if n in down_names:
            tau_of[n] = n
        elif skip_missing:
            skipped.append(n)
        else:
            raise FPVecError(
                f"vector tensor {n} has no counterpart in {downstream} "
                f"(vector for {v.doc['base']['family']}, model is {m.spec.name}); --skip-missing ignores it"
            )
    if skipped and len(skipped) == len(v.names):
        raise FPVecError(f"no tensor of the vector matches {downstream}: wrong architecture")
    return tau_of, skipped


def _row_match(v: Vector, m: Model, name: str, rows_by_position: bool, target: str | None = None) -> RowMatch:
    """How the rows of tau ``name`` map onto the rows of the downstream tensor ``target`` (default:
    the tensor of the same name)."""
    vb = v.vocab
    vd = m.ckpt.vocab
    nb, nd = v.shape(name)[0], m.ckpt.source.info(target or name).shape[0]
    if vb is not None and vd is not None:
        if list(vd.tokens) == list(vb) and nb == nd:
            return RowMatch("identical", nb, nd, nb)
        # Normalised strings can repeat within one vocabulary (a byte-fallback token <0x41> and
        # the token A are both "A"): the k-th occurrence downstream takes the k-th in the base.
        where: dict[str, list[int]] = {}
        for i, t in enumerate(vb[:nb]):
            if t:
                where.setdefault(t, []).append(i)
        src, dst = [], []
        taken: dict[str, int] = {}
        for j, t in enumerate(vd.tokens[:nd]):
            k = taken.get(t, 0)
            if t and k < len(where.get(t, ())):
                taken[t] = k + 1
                src.append(where[t][k])
                dst.append(j)
        return RowMatch(
            "token-string",
            nb,
            nd,
            len(src),
            torch.tensor(src, dtype=torch.long),
            torch.tensor(dst, dtype=torch.long),
        )
    if not rows_by_position:
        side = "the vector's base" if vb is None else "the downstream model"
        raise FPVecError(
            f"tensor {name}: {side} has no tokenizer, so embedding rows cannot be matched by token; "
            "pass --rows-by-position to add tau to the first shared rows by id (or extract without embeddings)"
        )
    k = min(nb, nd)
    if nb == nd:
        return RowMatch("position", nb, nd, k)
    return RowMatch("position", nb, nd, k, torch.arange(k), torch.arange(k))


def extra_files(m: Model) -> dict[str, bytes]:
    """Every small file beside the downstream's weights (config, tokenizer, generation config)."""
    src = m.ckpt.path if m.ckpt.path.is_dir() else m.ckpt.path.parent
    weights = {p.resolve() for p in m.ckpt.weight_files()}
    out: dict[str, bytes] = {}
    if m.ckpt.path.is_dir():
        for p in sorted(src.iterdir()):
            if (
                not p.is_file()
                or p.resolve() in weights
                or p.name in INDEX_NAMES
                or p.suffix in WEIGHT_SUFFIXES
                or p.name == FP_CARD
                or p.name.startswith(".")
            ):
                continue
            out[p.name] = p.read_bytes()
    if "config.json" not in out:
        out["config.json"] = (json.dumps(m.ckpt.config, indent=2, sort_keys=True) + "\n").encode()
    return out


def disk_order(m: Model) -> list[str]:
    """Tensor names in on-disk order where the source knows it: sequential reads."""
    order = getattr(m.ckpt.source, "file_order", None)
    if order is None:
        return list(m.ckpt.source.names())
    return [n for _, names in order() for n in names]


def skip_note(skipped: list[str]) -> str:
    """What --skip-missing left out; a warning when whole layers are missing (a depth-pruned or
    renumbered model: tau is added by name, so the remaining layers may get another layer's tau)."""
    shown = ", ".join(skipped[:4]) + (f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
    note = f"skipped {len(skipped)} vector tensors with no counterpart downstream: {shown}"
    layers = sorted({int(x) for n in skipped for x in re.findall(r"\.(\d+)\.", n)[:1]})
    if layers:
        note += (
            f"; the vector's layers {', '.join(map(str, layers))} have none: if layers were removed, the "
            "remaining ones were renumbered, and tau, added by name, went to other layers than in the base"
        )
    return note
