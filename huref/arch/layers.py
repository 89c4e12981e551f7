"""Streaming a model layer by layer: file-order reads into reused buffers, with prefetch.

Reading a 7B checkpoint one tensor at a time into fresh memory is slowed twice: tensors are
visited in role order rather than file order, and every fresh buffer is faulted in and zeroed by
the kernel before the copy. ``LayerStream`` reads each layer's stored tensors as the few
contiguous byte runs they occupy on disk, into an arena that is reused from layer to layer, and
reads layer l+1 in a background thread while the caller works on layer l. Yielded tensors are
*borrowed*: valid until the next iteration (pass ``reuse=False`` to get tensors of one's own).

An expert role (``expert_gate``, ``expert_up``, ``expert_down``) asked for yields one tensor per
expert of a sparse layer, keyed ``weight_key(role, e)`` ("expert_up.3"); a dense layer yields
none. Every other role is keyed by its name, as for a dense model.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from huref.arch.model import Binding, Model
from huref.arch.roles import EXPERT_ROLES
from huref.checkpoint.safetensors_io import SafetensorsFile, SafetensorsSource
from huref.checkpoint.source import DTYPES, empty_tensor


@dataclass(frozen=True)
class _Piece:
    name: str
    rel: int  # byte offset inside the run
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Run:
    file: SafetensorsFile
    begin: int  # absolute file offset
    nbytes: int
    pieces: tuple[_Piece, ...]


def plan_runs(model: Model, names: Sequence[str]) -> list[_Run] | None:
    """Contiguous byte runs covering ``names`` in file order, or None for sources that do not
    store tensors as raw bytes (torch .bin, GGUF, llama2c: read tensor by tensor)."""
    src = model.ckpt.source
    if not isinstance(src, (SafetensorsSource, SafetensorsFile)):
        return None
    entries = []
    for n in names:
        sf, begin, end = src.locate(n)
        entries.append((str(sf.path), begin, end, sf, sf.info(n)))
    entries.sort(key=lambda x: (x[0], x[1]))
    runs: list[_Run] = []
    cur: list = []
    for item in entries:
        if cur and (item[0] != cur[-1][0] or item[1] != cur[-1][2]):
            runs.append(_make_run(cur))
            cur = []
        cur.append(item)
    if cur:
        runs.append(_make_run(cur))
    return runs


def _make_run(items: list) -> _Run:
    begin = items[0][1]
    pieces = tuple(
        _Piece(info.name, b - begin, end - b, DTYPES[info.dtype], info.shape) for _, b, end, _, info in items
    )
    return _Run(items[0][3], begin, items[-1][2] - begin, pieces)


def weight_key(role: str, expert: int | None = None) -> str:
    """The key of a role's tensor in what ``LayerStream`` yields: the role, or "role.e" for
    expert ``e`` of an expert role."""
    return role if expert is None else f"{role}.{expert}"


class _Arena:
    def __init__(self) -> None:
        self.buf = torch.empty(0, dtype=torch.uint8)

    def reserve(self, nbytes: int) -> torch.Tensor:
        if self.buf.numel() < nbytes:
            self.buf = empty_tensor((nbytes,), torch.uint8)
        return self.buf


def read_raw(model: Model, names: Sequence[str], arena: _Arena | None) -> dict[str, torch.Tensor]:
    """The stored tensors of ``names``: views into ``arena`` when the source allows, else fresh."""
    runs = plan_runs(model, names) if arena is not None else None
    if runs is None:
        return {n: model.ckpt.source.read(n) for n in names}
    buf = arena.reserve(sum(r.nbytes for r in runs))  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    pos = 0
    for r in runs:
        r.file.read_bytes_into(buf[pos : pos + r.nbytes], r.begin)
        for p in r.pieces:
            lo = pos + p.rel
            out[p.name] = buf[lo : lo + p.nbytes].view(p.dtype).view(p.shape)
        pos += r.nbytes
    return out


class LayerStream:
    """for layer, weights in LayerStream(model, roles): ... (weights: role -> tensor)."""

    def __init__(
        self,
        model: Model,
        roles: Sequence[str],
        dtype: torch.dtype | None = torch.float32,
        prefetch: bool = True,
        reuse: bool = True,
        layers: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
        self.roles = list(roles)
        self.dtype = dtype  # None: yield the stored tensors (role views) without conversion
        self.prefetch = prefetch
        self.reuse = reuse
        self.read_seconds = 0.0  # time the consumer waited for reads (overlapped reads are free)

    def _bindings(self, layer: int) -> dict[str, Binding]:
        """weight_key -> binding of every asked role present in ``layer`` (each expert's, for an
        expert role)."""
        m = self.model
        out: dict[str, Binding] = {}
        for r in self.roles:
            if r not in EXPERT_ROLES:
                if m.has(r, layer):
                    out[r] = m.binding(r, layer)
                continue
            for e in range(m.n_experts(layer)):
                if m.has(r, layer, e):
                    out[weight_key(r, e)] = m.binding(r, layer, e)
        return out

    def _names(self, layer: int) -> list[str]:
        seen: dict[str, None] = {}
        for b in self._bindings(layer).values():
            seen.setdefault(b.name)
        return list(seen)

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        import time

        arenas = [_Arena(), _Arena()] if self.reuse else [None, None]
        converted: dict[str, torch.Tensor] = {}
        if not self.prefetch:
            for layer in self.layers:
                t = time.perf_counter()
                raw = read_raw(self.model, self._names(layer), arenas[0])
                self.read_seconds += time.perf_counter() - t
                yield layer, self._convert(layer, raw, converted)
            return
        q: queue.Queue = queue.Queue(maxsize=1)
        free: queue.Queue = queue.Queue()
        for a in arenas:
            free.put(a)
        stop = threading.Event()

        def reader() -> None:
            try:
                for layer in self.layers:
                    arena = free.get()
                    if stop.is_set():
                        return
                    q.put((layer, read_raw(self.model, self._names(layer), arena), arena, None))
            except BaseException as e:  # handed to the consumer, raised there
                q.put((None, None, None, e))

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            for _ in self.layers:
                t = time.perf_counter()
                layer, raw, arena, err = q.get()
                self.read_seconds += time.perf_counter() - t
                if err is not None:
                    raise err
                weights = self._convert(layer, raw, converted)
                if self.dtype is not None:
                    free.put(arena)  # converted copies are independent of the arena
                    yield layer, weights
                else:
                    yield layer, weights
                    free.put(arena)
        finally:
            stop.set()
            free.put(None)
            while th.is_alive():  # unblock a reader waiting to hand over a layer nobody will take
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                th.join(timeout=0.05)

    def _convert(
        self, layer: int, raw: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for key, b in self._bindings(layer).items():
            if self.dtype is None:
                out[key] = self.model.role_view(raw[b.name], b)
                continue
            view = self.model.role_view(raw[b.name], b)
            dest = None
            if self.reuse:
                dest = buffers.get(key)
                if dest is None or dest.shape != view.shape or dest.dtype != self.dtype:
                    dest = buffers[key] = empty_tensor(view.shape, self.dtype)
            out[key] = self.model.convert(raw[b.name], b, self.dtype, dest)
        return out
