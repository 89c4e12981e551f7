"""Safetensors files on the hub, read by HTTP range into sparse local copies.

Each remote weight file has a local *sparse* file of its full size (holes take no disk space)
and a record of the byte ranges already fetched. Before a header, a tensor or a band of rows is
read, the missing part of its byte range is fetched with ``Range: bytes=lo-hi`` requests of at
most ``CHUNK_BYTES`` each; every chunk is written in place, flushed to disk, and only then added
to the record. A killed run so loses at most the chunk in flight, and the next run fetches only
what is still missing. Reads then go through huref's own checked safetensors reader
(``SafetensorsFile``) on the sparse file: the header is validated as for a local file, and only
bytes recorded as fetched are ever read.

A file that the hub's cache already holds whole (downloaded by ``hf download`` or by
``resolve_model(..., need="files")``) is read from there, with no request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from huref.checkpoint.core import Checkpoint, Opener, read_config
from huref.checkpoint.hashing import sha256_file
from huref.checkpoint.hub import (
    RepoRef,
    Snapshot,
    download,
    fetch_metadata,
    hub_errors,
    parse_repo_id,
    resolve_revision,
)
from huref.checkpoint.quant import wrap_quantized
from huref.checkpoint.safetensors_io import SafetensorsFile, SafetensorsSource
from huref.checkpoint.source import BufferPool, TensorInfo, check_rows
from huref.checkpoint.vocab import load_vocab
from huref.errors import CheckpointError
from huref.paths import shown

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 2**20  # largest single range request: the work a killed run can lose
PROGRESS_MIN_BYTES = 8 * 2**20  # a fetch this large shows a progress bar on stderr
MERGE_GAP_BYTES = 64 * 2**10  # nearer gaps are fetched with the bytes between (one request)
FETCH_THREADS = 8  # range requests in flight at once
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
RECORD_EVERY = 64  # chunks fetched between two updates of the record (and one fsync)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _missing(done: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) not covered by the sorted, merged ``done`` spans."""
    out = []
    pos = lo
    for a, b in done:
        if b <= pos:
            continue
        if a >= hi:
            break
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < hi:
        out.append((pos, hi))
    return out


class SparseFile:
    """One remote file mirrored sparsely: ``ensure(lo, hi)`` makes bytes lo..hi-1 present."""

    def __init__(self, snap: Snapshot, name: str, size: int) -> None:
        self.snap = snap
        self.name = name
        self.size = size
        self.path = snap.sparse_folder / name
        self._record = self.path.with_name(self.path.name + ".ranges.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # a hole of the full size: no blocks until bytes are written
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.truncate(size)
            os.replace(tmp, self.path)
        elif self.path.stat().st_size != size:
            raise CheckpointError(
                f"{shown(self.path)}: cached copy has the wrong size (delete it to refetch)"
            )
        self.done = self._load()
        with _LOCKS_GUARD:  # one lock per file for every copy of it open in this process
            self._lock = _LOCKS.setdefault(self.path, threading.Lock())

    def _load(self) -> list[tuple[int, int]]:
        try:
            spans = json.loads(self._record.read_text())
            return _merge([(int(a), int(b)) for a, b in spans if 0 <= int(a) <= int(b) <= self.size])
        except (OSError, ValueError, TypeError):
            return []

    def _save(self) -> None:
        tmp = self._record.with_name(f".{self._record.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.done))
        os.replace(tmp, self._record)

    def ensure(self, lo: int, hi: int) -> None:
        self.ensure_spans([(lo, hi)])

    def ensure_spans(self, spans: Sequence[tuple[int, int]]) -> None:
        """Make every [lo, hi) of ``spans`` present, with as few requests as is sensible: gaps
        closer than MERGE_GAP_BYTES are fetched as one range (a few extra bytes cost less than a
        round trip), and up to FETCH_THREADS requests run at once (scattered embedding rows).
        Readers on several threads (a prefetching stream) take turns per file."""
        with self._lock:
            self._ensure_spans(spans)

    def _ensure_spans(self, spans: Sequence[tuple[int, int]]) -> None:
        self.done = _merge([*self.done, *self._load()])  # another reader may have fetched more
        gaps: list[tuple[int, int]] = []
        for lo, hi in _merge([(max(0, a), min(b, self.size)) for a, b in spans if a < b]):
            gaps.extend(_missing(self.done, lo, hi))
        if not gaps:
            return
        if self.snap.env.offline:
            raise CheckpointError(
                f"{shown(str(self.snap.ref))} ({shown(self.name)}): {sum(b - a for a, b in gaps)} bytes are "
                f"not in the local cache ({shown(self.path.parent)}) and HF_HUB_OFFLINE is set; run once online"
            )
        merged: list[tuple[int, int]] = []
        for a, b in gaps:
            if merged and a - merged[-1][1] < MERGE_GAP_BYTES:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        chunks = [(s, min(b, s + CHUNK_BYTES)) for a, b in merged for s in range(a, b, CHUNK_BYTES)]
        total = sum(b - a for a, b in chunks)
        bar = _progress(total, self.name) if total >= PROGRESS_MIN_BYTES else None
        fd = os.open(self.path, os.O_WRONLY)
        pending: list[tuple[int, int]] = []

        def commit() -> None:  # data on disk first, then the record that says it is there
            os.fsync(fd)
            self.done = _merge([*self.done, *pending])
            pending.clear()
            self._save()

        try:
            with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(chunks))) as pool:
                for (lo, hi), data in zip(chunks, pool.map(lambda c: self._fetch(*c), chunks), strict=True):
                    os.pwrite(fd, data, lo)
                    pending.append((lo, hi))
                    if bar is not None:
                        bar.update(hi - lo)
                    if len(pending) >= RECORD_EVERY:
                        commit()
        finally:
            if pending:
                commit()
            os.close(fd)
            if bar is not None:
                bar.close()

    def _fetch(self, lo: int, hi: int) -> bytes:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        env = self.snap.env
        url = hf_hub_url(self.snap.ref.repo_id, self.name, revision=self.snap.commit, endpoint=env.endpoint)
        headers = build_hf_headers(token=env.token)
        headers.update({"Range": f"bytes={lo}-{hi - 1}", "Accept-Encoding": "identity"})
        with hub_errors(self.snap.ref, env, self.name):
            r = get_session().get(url, headers=headers, follow_redirects=True)
            hf_raise_for_status(r)
            data = r.content
        if r.status_code != 206 or len(data) != hi - lo:
            raise CheckpointError(
                f"{shown(str(self.snap.ref))} ({shown(self.name)}): the server did not answer the range "
                f"request for bytes {lo}..{hi} (HTTP {r.status_code}, {len(data)} bytes)"
            )
        return data

    def ensure_header(self) -> None:
        self.ensure(0, 8)
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        if n > self.size - 8:
            raise CheckpointError(
                f"{shown(str(self.snap.ref))} ({shown(self.name)}): corrupt safetensors header length {n}"
            )
        self.ensure(8, 8 + n)

    def complete(self) -> bool:
        return not _missing(self.done, 0, self.size)


def _progress(total: int, name: str):  # type: ignore[no-untyped-def]
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"{name} (ranges)")


class RangeSafetensorsSource:
    """A TensorSource over a hub snapshot's safetensors files, fetched by range as read.

    The inventory (names, shapes, dtypes) costs one or two small range requests per file (its
    header); ``read`` fetches one tensor's bytes, ``read_rows`` only the rows asked for. The
    index, when there is one, is checked against the headers as for a local folder.
    """

    def __init__(self, snap: Snapshot, weight_names: Sequence[str]) -> None:
        from huggingface_hub import try_to_load_from_cache

        self.snap = snap
        self._sparse: dict[Path, SparseFile] = {}
        paths: list[Path] = []
        for name in weight_names:
            whole = try_to_load_from_cache(
                snap.ref.repo_id, name, cache_dir=snap.env.cache_dir, revision=snap.commit
            )
            if isinstance(whole, str):
                paths.append(Path(whole))
                continue
            size = snap.files[name].size
            if size is None:
                raise CheckpointError(f"{shown(str(snap.ref))}: the hub gave no size for {shown(name)}")
            sp = SparseFile(snap, name, size)
            sp.ensure_header()
            self._sparse[sp.path] = sp
            paths.append(sp.path)
        index = snap.folder / "model.safetensors.index.json"
        if len(paths) > 1 and not index.is_file():
            raise CheckpointError(
                f"{shown(str(snap.ref))}: {len(paths)} safetensors files but no model.safetensors.index.json"
            )
        self.inner = SafetensorsSource(paths, index=index if index.is_file() else None)

    def _ensure(self, sf: SafetensorsFile, lo: int, hi: int) -> None:
        sp = self._sparse.get(sf.path)
        if sp is not None:
            sp.ensure(lo, hi)

    def names(self) -> list[str]:
        return self.inner.names()

    def info(self, name: str) -> TensorInfo:
        return self.inner.info(name)

    def locate(self, name: str) -> tuple[SafetensorsFile, int, int]:
        sf, lo, hi = self.inner.locate(name)
        self._ensure(sf, lo, hi)
        return sf, lo, hi

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        self.locate(name)
        return self.inner.read(name, pool)

    def read_row_range(self, name: str, lo: int, hi: int) -> torch.Tensor:
        sf, begin, end = self.inner.locate(name)
        shape = sf.info(name).shape
        if shape and 0 <= lo <= hi <= shape[0] and shape[0]:
            row = (end - begin) // shape[0]
            self._ensure(sf, begin + lo * row, begin + hi * row)
        return self.inner.read_row_range(name, lo, hi)

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        shape = self.info(name).shape
        check_rows(rows, shape, name)
        sf, begin, end = self.inner.locate(name)
        sp = self._sparse.get(sf.path)
        if sp is not None and rows:
            row = (end - begin) // shape[0]
            sp.ensure_spans([(begin + r * row, begin + (r + 1) * row) for r in sorted(set(rows))])
        return self.inner.read_rows(name, rows)

    def weight_files(self) -> list[Path]:
        return self.inner.weight_files()

    def metadata(self) -> dict[str, str]:
        return self.inner.metadata()

    def file_order(self) -> list[tuple[Path, list[str]]]:
        return self.inner.file_order()

    def fetch_whole(self, path: Path) -> None:
        """Every byte of one file (to hash a file whose SHA-256 the hub did not give)."""
        sp = self._sparse.get(path)
        if sp is not None:
            sp.ensure(0, sp.size)


def open_hub_checkpoint(spec: str | RepoRef, open_checkpoint: Opener) -> Checkpoint:
    """A Checkpoint of a hub model whose weights are read by HTTP range, tensor by tensor.

    Safetensors weights stay remote: a tensor's bytes are fetched when it is first read and kept
    in a sparse local copy. A repository with only PyTorch ``.bin`` weights is downloaded whole
    and read like a local folder (with ``open_checkpoint``).
    """

    ref = spec if isinstance(spec, RepoRef) else parse_repo_id(spec)
    if ref is None:
        raise CheckpointError(f"{shown(spec)}: no such file or folder, nor a hub repository id (owner/name)")
    snap = resolve_revision(ref)
    fetch_metadata(snap)
    weights = snap.weight_names()
    if not weights:
        raise CheckpointError(
            f"{shown(str(ref))}: the repository holds no .safetensors or pytorch_model*.bin weights"
        )
    if not weights[0].endswith(".safetensors"):
        for name in weights:
            download(snap, name)
        ckpt = open_checkpoint(snap.folder)
        ckpt.origin = str(ref)
        return ckpt
    source = RangeSafetensorsSource(snap, weights)
    hashes: dict[str, str] = {}
    for name, path in zip(weights, source.weight_files(), strict=True):
        sha = snap.files[name].sha256  # the LFS object id; a file stored in git has none
        if sha is None:
            source.fetch_whole(path)
            sha = sha256_file(path)
        hashes[name] = sha
    config = read_config(snap.folder / "config.json")
    return Checkpoint(
        snap.folder,
        "hf-safetensors",
        wrap_quantized(source, config),  # a quantized release reads as float, as a local folder does
        config,
        load_vocab(snap.folder),
        _hashes=hashes,
        origin=str(ref),
    )
