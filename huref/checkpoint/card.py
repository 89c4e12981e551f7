"""What a model says about its own origin, and whether the evidence agrees.

A model's claims about its base come from three places: the model card (``README.md``, YAML front
matter ``base_model``, a string or a list, and ``base_model_relation``), a PEFT adapter's
``adapter_config.json`` (``base_model_name_or_path``), and, as a weaker hint, ``config.json``'s
``_name_or_path``. Config hints are tested only when neither the card nor an adapter config
names a base.

Each claimed base is looked up among the bases the audit or scan compared the model with, and
the comparison's verdict decides: ``derived`` confirms the claim, ``independent`` contradicts it,
anything else (the base was not compared, or the verdict is inconclusive) cannot test it. A
derived verdict against a base the card does not claim is called out on its own.

Everything here is torch-free and bounded: the card is read up to ``MAX_CARD_BYTES``, its front
matter up to ``MAX_FRONT_MATTER_BYTES``, parsed with ``yaml.safe_load`` (plain data only, no
tags that construct objects), and only the two expected keys are looked at, with their types
checked. A card that cannot be read is reported as such; it never stops an audit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huref.checkpoint.files import read_json, read_small_file
from huref.errors import CheckpointError
from huref.paths import shown

CARD_NAME = "README.md"
MAX_CARD_BYTES = 4 * 2**20
MAX_FRONT_MATTER_BYTES = 64 * 2**10
MAX_CLAIMED_BASES = 32
MAX_REFERENCE_CHARS = 512
STATUSES = ("confirms", "contradicts", "cannot test", "no claim")


@dataclass(frozen=True)
class Claim:
    """One claimed base: the reference as written, and where it was written."""

    base: str
    source: str  # "model card base_model" | "adapter_config.json" | "config.json _name_or_path"


@dataclass(frozen=True)
class Claims:
    claims: tuple[Claim, ...]
    relation: str | None  # base_model_relation: adapter | finetune | merge | quantized | ...
    hints: tuple[Claim, ...]  # config hints, tested only when ``claims`` is empty
    card_error: str | None = None


def _reference(v: Any) -> str | None:
    if isinstance(v, str) and v.strip() and len(v) <= MAX_REFERENCE_CHARS:
        return v.strip()
    return None


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` lines around it at the very top), or {}."""
    import yaml

    lines = text.lstrip("\ufeff").split("\n")
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() in ("---", "..."))
    except StopIteration:
        raise ValueError("front matter has no closing '---' line") from None
    block = "\n".join(lines[1:end])
    if len(block.encode()) > MAX_FRONT_MATTER_BYTES:
        raise ValueError(f"front matter larger than {MAX_FRONT_MATTER_BYTES} bytes")
    try:
        doc = yaml.safe_load(block)
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(
            f"front matter is not valid YAML ({str(e).splitlines()[0] if str(e) else e})"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError("front matter is not a mapping")
    return doc


def _card_claims(folder: Path) -> tuple[list[Claim], str | None, str | None]:
    """(claims, relation, error) from ``folder``'s README.md; no card is no claim, not an error."""
    path = folder / CARD_NAME
    if not path.is_file():
        return [], None, None
    try:
        text = read_small_file(path, "model card", MAX_CARD_BYTES).decode("utf-8")
        meta = front_matter(text)
    except (CheckpointError, UnicodeDecodeError, ValueError) as e:
        return [], None, f"{CARD_NAME}: {e if not isinstance(e, UnicodeDecodeError) else 'not UTF-8 text'}"
    raw = meta.get("base_model")
    values = raw if isinstance(raw, list) else [raw] if raw is not None else []
    refs = [r for r in (_reference(v) for v in values[:MAX_CLAIMED_BASES]) if r is not None]
    error = None
    if len(refs) != len(values):
        error = f"{CARD_NAME}: base_model holds entries that are not names (ignored)"
    rel = meta.get("base_model_relation")
    relation = rel.strip()[:64] if isinstance(rel, str) and rel.strip() else None
    return [Claim(r, "model card base_model") for r in refs], relation, error


def _json_string(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    try:
        doc = read_json(path, path.name)
    except CheckpointError:
        return None  # the checkpoint reader reports a corrupt config; here it is only no hint
    return _reference(doc.get(key)) if isinstance(doc, dict) else None


def _same_name(ref: str, folder: Path) -> bool:
    return _last(ref) == folder.name.lower()


def _last(ref: str) -> str:
    return ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def read_claims(model_path: str | Path) -> Claims:
    """The claims of a model folder (an adapter folder included); a single file makes none (a
    README.md beside it may describe other files of its folder)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return Claims((), None, ())
    claims, relation, error = _card_claims(folder)
    adapter_ref = _json_string(folder / "adapter_config.json", "base_model_name_or_path")
    if adapter_ref is not None and not any(_last(c.base) == _last(adapter_ref) for c in claims):
        claims.append(Claim(adapter_ref, "adapter_config.json"))
    hint = _json_string(folder / "config.json", "_name_or_path")
    hints = (Claim(hint, "config.json _name_or_path"),) if hint and not _same_name(hint, folder) else ()
    return Claims(tuple(claims), relation, hints, error)


def _match(claim: str, row: dict[str, Any]) -> str | None:
    """How a claimed base reference names a compared base (None: it does not)."""
    base = str(row.get("base", ""))
    if claim.lower() == base.lower():
        return "name"
    src = row.get("source")
    if isinstance(src, str) and src not in ("registry", "") and os.path.exists(claim):
        try:
            if Path(claim).resolve() == Path(src).resolve():
                return "path"
        except OSError:
            pass
    if _last(claim) == base.lower() or (
        isinstance(src, str) and src != "registry" and _last(claim) == _last(src)
    ):
        return "final name component"
    return None


_STATUS_OF = {"derived": "confirms", "independent": "contradicts"}


def weigh_claims(claims: Claims, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The claim evidence of one model, JSON-ready: each claim against the compared bases
    (``rows``: dicts with ``base``, ``verdict`` and optionally ``source``), an overall status, and
    the bases the model is derived from without the card claiming them."""
    tested = claims.claims or claims.hints
    items: list[dict[str, Any]] = []
    matched_bases: set[str] = set()
    for c in tested:
        hits = [(r, how) for r in rows if (how := _match(c.base, r)) is not None]
        # a claim matched by several rows (e.g. by name and by path) takes the strongest verdict
        hits.sort(key=lambda h: {"derived": 0, "independent": 1}.get(str(h[0].get("verdict")), 2))
        row, how = hits[0] if hits else (None, None)
        verdict = row.get("verdict") if row else None
        if row is not None:
            matched_bases.add(str(row["base"]))
        items.append(
            {
                "base": c.base,
                "source": c.source,
                "compared_as": None if row is None else str(row["base"]),
                "match": how,
                "verdict": verdict,
                "status": _STATUS_OF.get(str(verdict), "cannot test"),
            }
        )
    statuses = {i["status"] for i in items}
    status = (
        "no claim"
        if not items
        else "contradicts"
        if "contradicts" in statuses
        else "confirms"
        if "confirms" in statuses
        else "cannot test"
    )
    unclaimed = sorted(
        str(r["base"]) for r in rows if r.get("verdict") == "derived" and str(r["base"]) not in matched_bases
    )
    return {
        "status": status,
        "summary": _summary(status, items, unclaimed, claims),
        "relation": claims.relation,
        "claims": items,
        "derived_from_unclaimed": unclaimed if items else [],
        "card_error": claims.card_error,
    }


def _summary(status: str, items: list[dict[str, Any]], unclaimed: list[str], claims: Claims) -> str:
    names = ", ".join(shown(i["base"]) for i in items)
    what = "the config hints at" if not claims.claims and items else "the model claims"
    rel = f" ({shown(claims.relation)})" if claims.relation else ""
    if status == "no claim":
        return "the model card names no base" + (
            f" ({shown(claims.card_error)})" if claims.card_error else ""
        )
    if status == "confirms":
        text = f"the evidence confirms the claim: {what} {names}{rel}, and it is derived from it"
    elif status == "contradicts":
        wrong = ", ".join(shown(i["compared_as"]) for i in items if i["status"] == "contradicts")
        text = f"the evidence contradicts the claim: {what} {names}{rel}, but it is independent of {wrong}"
    else:
        text = (
            f"the evidence cannot test the claim: {what} {names}{rel}, which is not among the compared "
            "bases or gives no clear verdict"
        )
    if unclaimed:
        text += (
            f"; it is derived from {', '.join(shown(u) for u in unclaimed)}, which the claim does not name"
        )
    return text
