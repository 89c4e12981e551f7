"""Token strings of a checkpoint, normalised so that the same text means the same token.

Invariants are computed on token *strings*, not ids, so that a vocabulary permutation or
expansion cannot misalign rows. Tokenizers spell the same text differently (byte-level BPE maps
bytes to printable characters and writes a space as 'Ġ'; SentencePiece writes '▁' and '<0x0A>'),
so every token is decoded to the bytes it stands for and written back as text with
backslash-escapes for bytes that are not valid UTF-8. Special/control tokens are kept apart: they
carry no text and are never used as probe rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from huref.checkpoint.files import read_json, read_small_file
from huref.errors import CheckpointError
from huref.paths import refuse_special, shown

# the files a checkpoint's vocabulary is read from (whichever are present): part of its identity
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


def _byte_level_table() -> dict[str, int]:
    """The printable-character alphabet of byte-level BPE (GPT-2 and its descendants)."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _decode_bytes(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def normalise_token(tok: str, style: str) -> str:
    """The text a token stands for. ``style``: 'byte_level', 'sentencepiece', 'wordpiece', 'plain'."""
    if style == "byte_level":
        if all(c in _BYTE_LEVEL for c in tok):
            return _decode_bytes(bytes(_BYTE_LEVEL[c] for c in tok))
        return tok
    if style == "sentencepiece":
        m = _SP_BYTE.match(tok)
        if m:
            return _decode_bytes(bytes([int(m.group(1), 16)]))
        return tok.replace("▁", " ")
    if style == "wordpiece":
        # a continuation piece has no space before it; a word-initial piece has one
        return tok[2:] if tok.startswith("##") else " " + tok
    return tok


@dataclass(frozen=True)
class Vocab:
    """id -> normalised token string, and the ids that are special (no text)."""

    tokens: tuple[str, ...]
    special: frozenset[int] = field(default_factory=frozenset)
    style: str = "plain"
    source: str = ""

    def __len__(self) -> int:
        return len(self.tokens)

    def text_ids(self) -> list[int]:
        """Ids of ordinary tokens whose normalised text is unique (first id wins)."""
        seen: set[str] = set()
        out = []
        for i, t in enumerate(self.tokens):
            if i in self.special or not t or t in seen:
                continue
            seen.add(t)
            out.append(i)
        return out


def _style_from_tokenizer_json(data: dict) -> str:
    text = json.dumps(
        {k: data.get(k) for k in ("pre_tokenizer", "decoder", "normalizer")}, ensure_ascii=False
    )
    model = data.get("model") or {}
    if "ByteLevel" in text:
        return "byte_level"
    if model.get("type") == "WordPiece" or "WordPiece" in text:
        return "wordpiece"
    if "▁" in text or "Metaspace" in text or model.get("byte_fallback"):
        return "sentencepiece"
    return "plain"


def _token_id(value: object) -> int:
    """A token id as a JSON file gives it: an integer (not 2.5, 1e400, "3" or true)."""
    if type(value) is not int:
        raise TypeError("a token id is not an integer")
    return value


def _from_tokenizer_json(path: Path) -> Vocab:
    data = read_json(path, "tokenizer.json")
    try:
        model = data["model"]
        vocab: dict[str, int] = dict(model["vocab"]) if isinstance(model.get("vocab"), dict) else {}
        if not vocab and isinstance(model.get("vocab"), list):  # Unigram: [[piece, score], ...]
            vocab = {p[0]: i for i, p in enumerate(model["vocab"])}
        style = _style_from_tokenizer_json(data)
        special = set()
        for a in data.get("added_tokens") or []:
            vocab[str(a["content"])] = _token_id(a["id"])
            if a.get("special"):
                special.add(_token_id(a["id"]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise CheckpointError(f"{shown(path)}: corrupt tokenizer.json") from None
    if not all(isinstance(t, str) for t in vocab):
        raise CheckpointError(f"{shown(path)}: corrupt tokenizer.json (a token is not a string)")
    return _build(vocab, special, style, path)


MAX_ID_GAP = 4096  # ids may skip a few (removed tokens); a table is never allocated much beyond its entries


def _build(vocab: dict[str, int], special: set[int], style: str, source: Path | str) -> Vocab:
    if not vocab:
        raise CheckpointError(f"{shown(source)}: empty vocabulary")
    if not all(type(i) is int for i in vocab.values()):
        raise CheckpointError(f"{shown(source)}: corrupt vocabulary (a token id is not an integer)")
    low, size = min(vocab.values()), max(vocab.values()) + 1
    if low < 0 or size > 2 * len(vocab) + MAX_ID_GAP:
        bad = low if low < 0 else size - 1
        raise CheckpointError(f"{shown(source)}: corrupt vocabulary (token id {bad} for {len(vocab)} tokens)")
    toks = [""] * size
    for tok, i in vocab.items():
        toks[i] = normalise_token(tok, style) if i not in special else tok
    return Vocab(tuple(toks), frozenset(special), style, str(source))


def _present(path: Path) -> bool:
    """Whether a tokenizer file is there; a FIFO or device in its place is refused, not opened."""
    refuse_special(path, "tokenizer file", CheckpointError)
    return path.is_file()


def load_vocab(folder: Path) -> Vocab | None:
    """The vocabulary of a Hugging Face folder, or None when it ships no readable tokenizer."""
    folder = Path(folder)
    if _present(folder / "tokenizer.json"):
        return _from_tokenizer_json(folder / "tokenizer.json")
    if _present(folder / "vocab.json"):  # GPT-2 style slow tokenizer: byte-level BPE
        path = folder / "vocab.json"
        vocab = read_json(path, "vocab.json")
        try:
            ids = {str(k): _token_id(v) for k, v in vocab.items()}
        except (TypeError, AttributeError):
            raise CheckpointError(f"{shown(path)}: corrupt vocabulary") from None
        return _build(ids, set(), "byte_level", path)
    if _present(folder / "vocab.txt"):  # BERT WordPiece
        path = folder / "vocab.txt"
        try:
            lines = read_small_file(path, "vocab.txt").decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CheckpointError(f"{shown(path)}: corrupt vocabulary (not UTF-8 text)") from None
        vocab = {t: i for i, t in enumerate(lines)}
        special = {i for t, i in vocab.items() if re.fullmatch(r"\[[A-Z]+\]|\[unused\d+\]", t)}
        return _build(vocab, special, "wordpiece", path)
    return None


def vocab_from_list(tokens: list[str], types: list[int] | None, source: str) -> Vocab:
    """GGUF's tokenizer.ggml.tokens (type 1 = normal, 6 = byte; others are control/unused)."""
    style = "byte_level" if any(t.startswith("Ġ") for t in tokens[:5000]) else "sentencepiece"
    special = {i for i, ty in enumerate(types or []) if ty not in (1, 6) and i < len(tokens)}
    return _build({t: i for i, t in enumerate(tokens)}, special, style, source)
