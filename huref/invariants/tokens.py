"""Choosing probe tokens by *string*, ranked by a keyed hash.

Rows are chosen by the text a token stands for, so a vocabulary permutation or expansion cannot
change which rows are compared; the two fingerprints are later restricted to the strings they
share. The ranking is an HMAC of the string, so an adversary who does not hold the key cannot tell
which tokens will be probed; the default key is public, and auditors may pass their own.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huref.errors import UsageError

if TYPE_CHECKING:  # annotations only: importing the checkpoint readers would import torch
    from huref.checkpoint.vocab import Vocab

DEFAULT_KEY = b"huref/token-selection/v1"


@dataclass(frozen=True)
class TokenSet:
    ids: tuple[int, ...]
    strings: tuple[str, ...]
    source: str  # 'tokenizer' | 'ids' | 'frequency-list'


def key_digest(key: bytes) -> str:
    """A public commitment to the key, recorded in fingerprints so mismatched keys are caught."""
    return hashlib.sha256(b"huref-key:" + key).hexdigest()[:16]


def _rank(key: bytes, s: str) -> bytes:
    return hmac.new(key, s.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def candidate_strings(vocab: Vocab | None, n_rows: int) -> tuple[list[int], list[str], str]:
    """(ids, strings) of every usable token: ordinary tokens with a unique text, or ids."""
    if vocab is None:
        # no tokenizer: tokens are named by id (the same names huref gives imported llama2.c models)
        ids = list(range(n_rows))
        return ids, [f"id:{i}" for i in ids], "ids"
    ids = [i for i in vocab.text_ids() if i < n_rows]
    return ids, [vocab.tokens[i] for i in ids], "tokenizer"


def select_tokens(vocab: Vocab | None, n_rows: int, n: int, key: bytes = DEFAULT_KEY) -> TokenSet:
    ids, strings, source = candidate_strings(vocab, n_rows)
    if not ids:
        raise UsageError("the vocabulary has no ordinary tokens to probe")
    order = sorted(range(len(ids)), key=lambda i: _rank(key, strings[i]))[:n]
    return TokenSet(tuple(ids[i] for i in order), tuple(strings[i] for i in order), source)


def read_frequency_list(path: Path) -> dict[str, int]:
    """Lines 'token<TAB>count' (the token written as its text, JSON-escaped if it has tabs)."""
    import json

    counts: dict[str, int] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read frequency list ({e})") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        tok, sep, cnt = line.rpartition("\t")
        if not sep:
            raise UsageError(f"{path}:{ln}: expected 'token<TAB>count'")
        if len(tok) >= 2 and tok.startswith('"') and tok.endswith('"'):  # a JSON-escaped token
            try:
                tok = json.loads(tok)
            except ValueError:
                raise UsageError(f"{path}:{ln}: token {tok[:40]!r} is not a valid JSON string") from None
        try:
            counts[tok] = int(cnt)
        except ValueError:
            raise UsageError(f"{path}:{ln}: count {cnt!r} is not an integer") from None
    return counts


def select_least_frequent(vocab: Vocab | None, n_rows: int, n: int, counts: dict[str, int]) -> TokenSet:
    """The published choice: the n least frequent tokens that do occur in a reference corpus."""
    ids, strings, _ = candidate_strings(vocab, n_rows)
    scored = [(counts[s], s, i) for i, s in zip(ids, strings, strict=True) if counts.get(s, 0) > 0]
    if not scored:
        raise UsageError("no token of this model occurs in the frequency list")
    scored.sort()
    chosen = scored[:n]
    return TokenSet(tuple(i for _, _, i in chosen), tuple(s for _, s, _ in chosen), "frequency-list")
