"""index.html: one row per model, rendered with jinja2 autoescaping (names, paths and errors come
from the zoo's file names and can hold any character).

Dog thumbnails come from ``huref.dogs.dog_png_bytes(fingerprint, size=...)`` when that module is
importable at render time (checked then, not at import), embedded as data: URIs and cached in the
registry by (fingerprint, renderer key, size); without it, or when it cannot draw (no encoder
weights), the column is left out.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from huref.invariants.calibration import format_log10_p
from huref.invariants.statistics import STATISTICS
from huref.registry.store import Store
from huref.scan import cache
from huref.scan.outdir import SCHEMA

log = logging.getLogger(__name__)

THUMB_SIZE = 64


def _num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _p(m: dict[str, Any]) -> str:
    lp = m.get("log10_p_value")
    return "—" if lp is None else format_log10_p(lp)


def _stat_cells(m: dict[str, Any]) -> list[str]:
    """The best base's value of every registered statistic the scan keeps, as its text form."""
    cells = []
    for s in STATISTICS.in_order():
        if s.scan:
            v = m.get(s.name)
            cells.append("—" if v is None else s.text(v))
    return cells


def _row(m: dict[str, Any], dog: str | None) -> dict[str, Any]:
    return {
        "name": m["name"],
        "path": m["path"],
        "verdict": m["verdict"] or "not scanned",
        "verdict_class": m["verdict"]
        if m["verdict"] in ("derived", "independent", "inconclusive")
        else "error",
        "best_base": m["best_base"] or "—",
        "claim": (m.get("claim") or {}).get("status", "—"),
        "claim_summary": (m.get("claim") or {}).get("summary", ""),
        "ics": _num(m["ics"]),
        "z": _num(m["z"]),
        "p": _p(m),
        "stats": _stat_cells(m),
        "dog": dog,
        "report": m.get("report_path"),
        "error": m["error"],
        "note": m.get("note"),
        "fpvec": [
            {
                "keys": Path(v["keys"]).name,
                "fsr": "—" if v["fsr"] is None else f"{v['fsr']:.2f}",
                "error": v["error"],
            }
            for v in m.get("fpvec") or []
        ],
    }


def _stat_titles() -> list[str]:
    return [s.title for s in STATISTICS.in_order() if s.scan]


def render_index(doc: dict[str, Any], thumbnails: dict[str, str] | None = None) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("huref.scan", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    models = doc["models"]
    counts = {"models": len(models), "errors": sum(1 for m in models if m["error"])}
    for v in ("derived", "inconclusive", "independent"):
        counts[v] = sum(1 for m in models if m["verdict"] == v)
    null = doc["null"]
    return env.get_template("index.html.j2").render(
        zoo=doc["zoo"],
        registry=doc["registry"],
        bases=[b["name"] for b in doc["bases"]],
        null_source=null["source"],
        null_mean=f"{null['mean']:.2f}",
        null_std=f"{null['std']:.2f}",
        rule=doc["verdict_rule"],
        counts=counts,
        rows=[_row(m, (thumbnails or {}).get(m["name"])) for m in models],
        stat_titles=_stat_titles(),
        with_dogs=thumbnails is not None,
        with_fpvec=any("fpvec" in m for m in models),
        thumb_size=THUMB_SIZE,
        generator=doc.get("schema", SCHEMA),
    )


def _renderer_key(origin: Path) -> str:
    """Digest of everything a dog depends on besides the fingerprint: the source of huref.dogs
    (at ``origin``), huref.encoder and huref.render (the shipped encoder weights are hash-checked
    in that source) and the encoder folder override."""
    root = origin.parent
    h = hashlib.sha256(os.environ.get("HUREF_ENCODERS_DIR", "").encode())
    files = [origin]
    for pkg in ("encoder", "render"):
        files += sorted(p for p in (root / pkg).rglob("*") if p.suffix in (".py", ".json"))
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _renderer() -> tuple[Callable[[], Any], str] | None:
    """(a function that imports huref.dogs and returns its dog_png_bytes, renderer key) when
    huref.dogs is present, else None. The key is computed from the sources without importing
    them, so a scan whose thumbnails are all cached never imports the encoder (nor torch)."""
    spec = importlib.util.find_spec("huref.dogs")
    if spec is None or spec.origin is None:
        return None
    return (lambda: importlib.import_module("huref.dogs").dog_png_bytes), _renderer_key(Path(spec.origin))


def dog_thumbnails(
    store: Store, models: list[dict[str, Any]], size: int = THUMB_SIZE
) -> dict[str, str] | None:
    """model name -> data: URI of its dog, for models with a fingerprint; None (no dog column)
    without huref.dogs, or when the very first dog cannot be drawn (e.g. no encoder weights: one
    warning, not one per model)."""
    r = _renderer()
    if r is None:
        return None
    load, key = r
    fn: Any = None
    out: dict[str, str] = {}
    tried = False
    for m in models:
        sha = m.get("fingerprint")
        if not sha or m.get("error"):
            continue
        png = cache.thumbnail(store, sha, key, size)
        if png is None:
            try:
                if fn is None:
                    fn = load()  # the first thumbnail not in the cache
                png = bytes(fn(store.load_blob(sha), size=size))
            except Exception as e:
                if not tried:
                    log.warning("no dog thumbnails: %s", e)
                    return None
                log.warning("%s: no dog thumbnail (%s)", m["name"], e)
                continue
            finally:
                tried = True
            cache.put_thumbnail(store, sha, key, size, png)
        out[m["name"]] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return out
