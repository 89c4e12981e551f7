"""Fingerprint files: safetensors tensors plus JSON metadata, sealed with a content hash.

A fingerprint can be published without the parameters: it holds the standardised terms, the
token strings they were computed on, the neuron responses of the independence test, and the
identity of the model (weight-file SHA-256s). The seal is a SHA-256 over the metadata and every
tensor's bytes (``huref.checkpoint.sealed.seal_arrays``); a file whose seal does not verify is
refused as tampered.

Files are read into numpy arrays, without torch: the header through huref's own strict parser
(``huref.checkpoint.safetensors_header``), the tensors through the reference reader's numpy
interface (``safetensors.safe_open(framework="numpy")``, which checks every tensor's dtype, shape
and byte range). Nothing in a fingerprint file is executed: it holds JSON and raw numbers only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from huref.checkpoint.outputs import check_output_file
from huref.checkpoint.safetensors_header import parse_header, read_header, read_metadata
from huref.checkpoint.sealed import SEAL_KEY, canonical_json, seal_arrays, seal_matches
from huref.errors import CheckpointError, FingerprintError
from huref.invariants.fingerprint import FORMAT_VERSION, Fingerprint, ModeTerms, Responses, as_numpy
from huref.paths import refuse_special

if TYPE_CHECKING:
    import numpy as np

META_KEY = "huref.fingerprint"


def _tensors(fp: Fingerprint) -> dict[str, np.ndarray]:
    import numpy as np

    out: dict[str, np.ndarray] = {}
    for mt in (fp.robust, fp.paper):
        if mt is not None:
            out[f"{mt.mode}.terms"] = np.ascontiguousarray(as_numpy(mt.terms), dtype=np.float16)
            out[f"{mt.mode}.token_ids"] = np.asarray(mt.token_ids, dtype=np.int64)
    if fp.responses is not None:
        for i, layer in enumerate(fp.responses.layers):
            out[f"responses.{layer}.a"] = np.ascontiguousarray(as_numpy(fp.responses.a[i]), dtype=np.float16)
            out[f"responses.{layer}.b"] = np.ascontiguousarray(as_numpy(fp.responses.b[i]), dtype=np.float16)
    return out


def _doc(fp: Fingerprint) -> dict:
    doc = dict(fp.meta)
    for mt in (fp.robust, fp.paper):
        if mt is not None:
            doc[mt.mode] = {
                "layers": mt.layers,
                "tokens": mt.token_strings,
                "token_source": mt.token_source,
                "key_digest": mt.key_digest,
                "n": mt.n,
            }
    if fp.responses is not None:
        doc["responses"] = {
            "views": list(fp.responses.views),
            "tokens": fp.responses.token_strings,
            "layers": fp.responses.layers,
        }
        if fp.responses.groups:  # sparse layers: which expert each run of neuron columns is
            doc["responses"]["groups"] = {
                str(ly): [[label, width] for label, width in g] for ly, g in fp.responses.groups.items()
            }
    doc["timing"] = fp.timing
    return doc


def _seal(meta_json: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata and, by name, each tensor's name, dtype, shape and bytes."""
    arrays = {name: as_numpy(t) for name, t in tensors.items()}
    return seal_arrays(meta_json, arrays, FingerprintError, "a fingerprint")


def check_fingerprint_target(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse to write a fingerprint over one of ``inputs``, inside their model folders, or over
    an existing file that is not itself a fingerprint (an earlier fingerprint may be replaced)."""
    return check_output_file(
        path, inputs, replaceable=is_fingerprint_file, kind="huref fingerprint file (.safetensors)"
    )


def save_fingerprint(fp: Fingerprint, path: str | Path) -> Path:
    # the writer streams torch tensors: saving follows an extraction, which has imported torch
    import torch

    from huref.checkpoint.atomic import atomic_file
    from huref.checkpoint.writer import TensorPlan, write_safetensors_file

    path = check_fingerprint_target(path)
    arrays = _tensors(fp)
    # ASCII (canonical_json): a token holding a lone surrogate is written as an escape inside the
    # metadata string, not as one of the header itself, which the reference safetensors parser
    # (and huref's) refuses
    meta_json = canonical_json(_doc(fp))
    seal = _seal(meta_json, arrays)
    tensors = {n: torch.from_numpy(a) for n, a in arrays.items()}
    plan = [TensorPlan(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    with atomic_file(path) as tmp:
        write_safetensors_file(tmp, plan, lambda p: tensors[p.name], {META_KEY: meta_json, SEAL_KEY: seal})
    return path


def is_fingerprint_file(path: str | Path) -> bool:
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return False
    try:
        return META_KEY in read_metadata(p)  # the header only
    except CheckpointError:
        return False


def _read_file(p: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors as numpy arrays) of a safetensors file, or FingerprintError."""
    from safetensors import SafetensorError, safe_open

    try:
        meta = parse_header(p, read_header(p)[0])[1]
    except CheckpointError as e:
        raise FingerprintError(f"{p}: not a readable fingerprint ({e})") from None
    if META_KEY not in meta:
        raise FingerprintError(f"{p}: not a huref fingerprint (no '{META_KEY}' metadata)")
    try:
        with safe_open(str(p), framework="numpy") as f:
            tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise FingerprintError(f"{p}: not a readable fingerprint ({e})") from None
    return meta, tensors


def load_fingerprint(path: str | Path) -> Fingerprint:
    """The fingerprint of a file, its seal verified and its content checked; arrays are numpy."""
    p = Path(path)
    refuse_special(p, "fingerprint file", FingerprintError)  # reading a FIFO would block forever
    meta, tensors = _read_file(p)
    try:
        doc = json.loads(meta[META_KEY])
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise FingerprintError(f"{p}: corrupt fingerprint metadata (not a JSON object)")
    fmt = doc.get("format")
    if fmt != FORMAT_VERSION:
        raise FingerprintError(
            f"{p}: fingerprint format {fmt!r} (tool {doc.get('tool_version')!r}) is not {FORMAT_VERSION!r}; "
            "recompute it with this version of huref"
        )
    if not seal_matches(meta, _seal(meta[META_KEY], tensors)):
        raise FingerprintError(
            f"{p}: fingerprint seal does not verify: the file was modified after it was written"
        )
    _check_doc(p, doc)
    try:
        modes = {}
        for mode in ("robust", "paper"):
            if mode in doc:
                d = doc[mode]
                modes[mode] = ModeTerms(
                    mode,
                    list(d["layers"]),
                    tensors[f"{mode}.token_ids"].tolist(),
                    list(d["tokens"]),
                    d["token_source"],
                    tensors[f"{mode}.terms"],
                    d["key_digest"],
                )
        resp = None
        if "responses" in doc:
            r = doc["responses"]
            resp = Responses(
                tuple(r["views"]),
                list(r["tokens"]),
                list(r["layers"]),  # type: ignore[arg-type]
                [tensors[f"responses.{ly}.a"] for ly in r["layers"]],
                [tensors[f"responses.{ly}.b"] for ly in r["layers"]],
                {int(ly): [(str(lb), int(w)) for lb, w in g] for ly, g in r.get("groups", {}).items()},
            )
    except KeyError as e:
        raise FingerprintError(f"{p}: incomplete fingerprint (missing {e})") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise FingerprintError(f"{p}: corrupt fingerprint ({e})") from None
    for mt in modes.values():
        n = len(mt.token_ids)
        if len(mt.token_strings) != n or tuple(mt.terms.shape) != (len(mt.layers), 3, n, n):
            raise FingerprintError(
                f"{p}: corrupt fingerprint ({mt.mode} terms {list(mt.terms.shape)} for "
                f"{len(mt.layers)} layers and {n} tokens)"
            )
    if resp is not None:
        for ly, a, b in zip(resp.layers, resp.a, resp.b, strict=True):
            if a.ndim != 2 or a.shape != b.shape or a.shape[0] != len(resp.token_strings):
                raise FingerprintError(
                    f"{p}: corrupt fingerprint (responses of layer {ly}: {list(a.shape)} and "
                    f"{list(b.shape)} for {len(resp.token_strings)} tokens)"
                )
            widths = [w for _, w in resp.groups.get(ly, [])]
            if widths and (sum(widths) != a.shape[1] or min(widths) < 1):
                raise FingerprintError(
                    f"{p}: corrupt fingerprint (expert groups of layer {ly} cover {sum(widths)} of "
                    f"{a.shape[1]} neurons)"
                )
        if set(resp.groups) - set(resp.layers):
            raise FingerprintError(f"{p}: corrupt fingerprint (expert groups of layers without responses)")
    fp = Fingerprint({}, modes.get("robust"), modes.get("paper"), resp)
    where = fp.non_finite()
    if where is not None:
        raise FingerprintError(f"{p}: corrupt fingerprint (NaN or infinite values in the {where})")
    meta_out = {k: v for k, v in doc.items() if k not in ("robust", "paper", "responses", "timing")}
    return Fingerprint(meta_out, modes.get("robust"), modes.get("paper"), resp, doc.get("timing", {}))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list_of(v: object, kind: type) -> TypeGuard[list[Any]]:
    return isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)


def _check_doc(p: Path, doc: dict[str, Any]) -> None:
    """Refuse metadata of the wrong types: the seal proves only that the file was not changed by
    accident (anyone can recompute it), and every reader of a fingerprint trusts these types."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FingerprintError(f"{p}: corrupt fingerprint metadata ({what})")

    def obj(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        v = d.get(key)
        if not isinstance(v, dict):
            raise FingerprintError(f"{p}: corrupt fingerprint metadata ('{where}{key}' is not an object)")
        return v

    model, arch = obj(doc, "model"), obj(doc, "architecture")
    need(isinstance(model.get("name"), str), "'model.name' is not a string")
    for k in ("path", "format"):
        need(isinstance(model.get(k, ""), str), f"'model.{k}' is not a string")
    sums = obj(model, "sha256", "model.")
    need(all(isinstance(v, str) for v in sums.values()), "'model.sha256' holds a non-string")
    need(_is_int(arch.get("n_layers")) and arch["n_layers"] >= 0, "'architecture.n_layers' is not a count")
    need(isinstance(arch.get("family", ""), str), "'architecture.family' is not a string")
    for k in ("tool_version", "created"):
        need(isinstance(doc.get(k, ""), str), f"'{k}' is not a string")
    need(isinstance(doc.get("settings", {}), dict), "'settings' is not an object")
    timing = doc.get("timing", {})
    need(
        isinstance(timing, dict) and all(_is_number(v) for v in timing.values()),
        "'timing' is not an object of numbers",
    )
    for mode in ("robust", "paper", "responses"):
        if mode not in doc:
            continue
        d = obj(doc, mode)
        layers, tokens = d.get("layers"), d.get("tokens")
        need(
            _is_list_of(layers, int) and len(set(layers)) == len(layers),
            f"'{mode}.layers' is not a list of distinct layer numbers",
        )
        need(_is_list_of(tokens, str), f"'{mode}.tokens' is not a list of strings")
        if mode == "responses":
            views = d.get("views")
            need(_is_list_of(views, str) and len(views) == 2, "'responses.views' is not two names")
            groups = d.get("groups", {})
            need(
                isinstance(groups, dict)
                and all(
                    k.isascii()
                    and k.isdigit()
                    and isinstance(g, list)
                    and all(
                        isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and _is_int(x[1])
                        for x in g
                    )
                    for k, g in groups.items()
                ),
                "'responses.groups' is not a map of layer -> [[expert, neurons], ...]",
            )
        else:
            for k in ("token_source", "key_digest"):
                need(isinstance(d.get(k), str), f"'{mode}.{k}' is not a string")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
