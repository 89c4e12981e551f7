"""The stories260K llama2.c export, imported as a Hugging Face LLaMA checkpoint, generates the same
greedy tokens as a plain-torch forward pass of the llama2.c weights written here."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from huref.arch import load_model
from huref.checkpoint.convert import export_hf


def _read_llama2c(path: Path) -> tuple[tuple[int, ...], dict[str, torch.Tensor]]:
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", raw[:28])
    a = np.frombuffer(raw[28:], dtype="<f4")
    hd = dim // heads
    shapes = [
        ("tok", (abs(vocab), dim)),
        ("att", (layers, dim)),
        ("wq", (layers, dim, dim)),
        ("wk", (layers, kv * hd, dim)),
        ("wv", (layers, kv * hd, dim)),
        ("wo", (layers, dim, dim)),
        ("ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("fin", (dim,)),
    ]
    out, off = {}, 0
    for name, shp in shapes:
        n = int(np.prod(shp))
        out[name] = torch.from_numpy(a[off : off + n].copy()).reshape(shp)
        off += n
    return (dim, hidden, layers, heads, kv, abs(vocab), seq), out


def _llama2c_forward(hp: tuple[int, ...], w: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """A direct transcription of the llama2.c model: RMSNorm, interleaved-pair RoPE, GQA, SwiGLU."""
    dim, _hidden, layers, heads, kv, _vocab, _ = hp
    hd = dim // heads
    T = len(ids)
    x = w["tok"][ids]  # [T, dim]

    def rms(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    pos = torch.arange(T, dtype=torch.float32)[:, None]
    freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos * freq  # [T, hd/2]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(t: torch.Tensor) -> torch.Tensor:  # t: [T, n, hd], pairs (2i, 2i+1)
        a, b = t[..., 0::2], t[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)

    mask = torch.full((T, T), float("-inf")).triu(1)
    for li in range(layers):
        h = rms(x, w["att"][li])
        q = (h @ w["wq"][li].t()).view(T, heads, hd)
        k = (h @ w["wk"][li].t()).view(T, kv, hd)
        v = (h @ w["wv"][li].t()).view(T, kv, hd)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.repeat_interleave(heads // kv, dim=1)
        att = torch.einsum("qnd,knd->nqk", q, k) / hd**0.5 + mask
        o = torch.einsum("nqk,knd->qnd", att.softmax(-1), v).reshape(T, dim)
        x = x + o @ w["wo"][li].t()
        h = rms(x, w["ffn"][li])
        x = x + (torch.nn.functional.silu(h @ w["w1"][li].t()) * (h @ w["w3"][li].t())) @ w["w2"][li].t()
    x = rms(x, w["fin"])
    return x @ w["tok"].t()  # shared classifier


def _greedy(step, n: int) -> list[int]:
    ids = [1]  # BOS
    for _ in range(n):
        ids.append(int(step(ids)[-1].argmax()))
    return ids


def test_stories260k_import_generates_same_greedy_tokens(stories_path: Path, tmp_path: Path) -> None:
    hp, w = _read_llama2c(stories_path)
    with torch.no_grad():
        ref = _greedy(lambda ids: _llama2c_forward(hp, w, ids), 40)
    out = export_hf(stories_path, tmp_path / "stories260K-hf")
    m = load_model(out)  # the import passes huref's both-way check
    assert m.cfg.n_kv_heads == 4 and m.cfg.n_heads == 8
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = _greedy(lambda ids: hf(torch.tensor([ids])).logits[0], 40)
    assert got == ref, f"import diverges: {got} vs {ref}"
    assert len(set(ref[1:])) > 5, "a real model's continuation is not one repeated token"
