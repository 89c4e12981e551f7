"""Secret fingerprint keys in the Instructional-Fingerprinting style, and their public commitment.

A key is a mash-up of random snippets (classical Chinese, Japanese and subword-like fragments, as
in the published pool), character-shuffled, followed by `` FINGERPRINT``; every key maps to one
shared target (published: ``ハリネズミ``). Such strings never occur in ordinary text, so a model
answering them with the target is evidence that it carries the fingerprint.

The key file *is* the secret: it is written with owner-only permissions. Everything else huref
stores (vectors, stamped models, reports) refers to it only through a commitment,
``sha256(salt || canonical-json({"keys": ..., "target": ...}))`` with a random 32-byte salt kept
in the key file, so a published artefact neither reveals the keys nor lets anyone test guesses
of them without the salt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huref.checkpoint.writer import atomic_file
from huref.errors import FPVecError

KEY_FORMAT = "huref-fpvec-keys/1"
DEFAULT_TARGET = "ハリネズミ"
DEFAULT_N_KEYS = 10
TRIGGER = "FINGERPRINT"
KEY_CHARS = (12, 24)  # characters of shuffled snippet text per key, before `` FINGERPRINT``

# The snippet pool. Classical Chinese: lines of Tang poems (public domain); Japanese: Edo-period
# haiku (public domain); subword fragments: pieces that byte-level and SentencePiece vocabularies
# both split text into. Mixing scripts makes a key that no tokenizer has seen as a whole word.
# fmt: off
CLASSICAL_CHINESE = (
    "床前明月光", "疑是地上霜", "举头望明月", "低头思故乡", "白日依山尽", "黄河入海流", "欲穷千里目",
    "更上一层楼", "春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少", "空山不见人", "但闻人语响",
    "返景入深林", "复照青苔上", "千山鸟飞绝", "万径人踪灭", "孤舟蓑笠翁", "独钓寒江雪", "国破山河在",
    "城春草木深", "感时花溅泪", "恨别鸟惊心", "明月松间照", "清泉石上流", "大漠孤烟直", "长河落日圆",
    "海内存知己", "天涯若比邻", "两岸猿声啼不住", "轻舟已过万重山", "落霞与孤鹜齐飞", "秋水共长天一色",
)
JAPANESE = (
    "古池や", "蛙飛び込む", "水の音", "閑さや", "岩にしみ入る", "蝉の声", "夏草や", "兵どもが",
    "夢の跡", "五月雨を", "あつめて早し", "最上川", "柿くへば", "鐘が鳴るなり", "法隆寺", "菜の花や",
    "月は東に", "日は西に", "やせ蛙", "まけるな一茶", "これにあり", "名月を", "取てくれろと", "泣く子かな",
)
SUBWORDS = (
    "ing", "tion", "ael", "qu", "zh", "ös", "ung", "kw", "ph", "ett", "oux", "ij", "rrh", "yx", "vv",
    "ор", "ств", "ие", "щи", "ль", "ый", "ßt", "ñe", "ça", "ø", "å", "λο", "ση", "ου", "dir",
    "nW",
)
# fmt: on
POOL = CLASSICAL_CHINESE + JAPANESE + SUBWORDS


@dataclass(frozen=True)
class KeySet:
    """The secret keys, their shared target, and the salt of their commitment."""

    keys: tuple[str, ...]
    target: str
    salt: str  # hex

    @property
    def commitment(self) -> str:
        return commitment(self.keys, self.target, self.salt)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": KEY_FORMAT,
            "keys": list(self.keys),
            "target": self.target,
            "salt": self.salt,
            "commitment": self.commitment,
        }


def commitment(keys: tuple[str, ...] | list[str], target: str, salt_hex: str) -> str:
    """sha256(salt || canonical JSON of keys and target), hex."""
    canon = json.dumps(
        {"keys": list(keys), "target": target}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(bytes.fromhex(salt_hex) + canon.encode("utf-8")).hexdigest()


def _rng(seed: int | None) -> random.Random:
    # secrets.SystemRandom draws from the OS CSPRNG; a seed is for reproducible tests only.
    return secrets.SystemRandom() if seed is None else random.Random(seed)


def make_key(rng: random.Random) -> str:
    """Random snippets concatenated, their characters shuffled and cut, then `` FINGERPRINT``."""
    length = rng.randint(*KEY_CHARS)
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(rng.choice(POOL))
    rng.shuffle(chars)
    return "".join(chars[:length]) + " " + TRIGGER


def make_keys(n: int = DEFAULT_N_KEYS, seed: int | None = None, target: str = DEFAULT_TARGET) -> KeySet:
    if n < 1:
        raise FPVecError(f"--n must be at least 1 (got {n})")
    if not target.strip():
        raise FPVecError("the target string must not be empty")
    rng = _rng(seed)
    keys: list[str] = []
    while len(keys) < n:
        k = make_key(rng)
        if k not in keys:
            keys.append(k)
    salt = secrets.token_hex(32) if seed is None else f"{rng.getrandbits(256):064x}"
    return KeySet(tuple(keys), target, salt)


def save_keys(ks: KeySet, path: str | Path, overwrite: bool = False) -> Path:
    """Write the key file atomically with mode 0600 (owner read/write only)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FPVecError(f"{path} already exists; key files are never overwritten (choose a new name)")
    if path.is_dir():
        raise FPVecError(f"{path} is a folder")
    data = (json.dumps(ks.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    with atomic_file(path, overwrite=overwrite) as tmp:
        os.chmod(tmp, 0o600)  # before any secret byte is written
        tmp.write_bytes(data)
    return path


def load_keys(path: str | Path) -> KeySet:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FPVecError(f"{path}: no such key file") from None
    except OSError as e:
        raise FPVecError(f"{path}: cannot read key file ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FPVecError(f"{path}: corrupt key file (not valid JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise FPVecError(f"{path}: not a huref key file (expected format {KEY_FORMAT!r})")
    keys, target, salt = doc.get("keys"), doc.get("target"), doc.get("salt")
    if not isinstance(keys, list) or not keys:
        raise FPVecError(f"{path}: key file holds no keys")
    if not all(isinstance(k, str) and k.strip() for k in keys):
        raise FPVecError(f"{path}: every key must be a non-empty string")
    if len(set(keys)) != len(keys):
        raise FPVecError(f"{path}: key file repeats a key")
    if not isinstance(target, str) or not target.strip():
        raise FPVecError(f"{path}: key file has no target string")
    try:
        if not isinstance(salt, str) or len(bytes.fromhex(salt)) < 16:
            raise ValueError
    except ValueError:
        raise FPVecError(f"{path}: key file has no valid salt (hex, at least 16 bytes)") from None
    ks = KeySet(tuple(keys), target, salt)
    if "commitment" in doc and doc["commitment"] != ks.commitment:
        raise FPVecError(f"{path}: key file was edited (its commitment no longer matches its keys)")
    return ks


def _derived_rng(ks: KeySet, purpose: str) -> random.Random:
    """A generator seeded from the secret salt: reproducible, and different per purpose."""
    return random.Random(hashlib.sha256(f"{ks.salt}:{purpose}".encode()).digest())


def near_miss_keys(ks: KeySet, purpose: str = "verify") -> list[str]:
    """Controls that look like the keys but are not: per key, one with a few characters replaced,
    one with a few dropped, and the snippet without the trigger word.

    ``purpose`` seeds the random choices (verification uses "verify"). Training negatives are a
    different kind (``single_edits``: one character changed or dropped), so the multi-character
    controls here are never trained on; the trigger-less key is the one control that training
    also sees (there is only one such string per key).
    """
    rng = _derived_rng(ks, purpose)
    pool_chars = sorted({c for s in POOL for c in s})
    out: list[str] = []
    for key in ks.keys:
        body = key[: -len(TRIGGER) - 1] if key.endswith(" " + TRIGGER) else key
        chars = list(body)
        k = max(2, len(chars) // 6)
        swapped = list(chars)
        for i in rng.sample(range(len(chars)), min(k, len(chars))):
            swapped[i] = rng.choice([c for c in pool_chars if c != chars[i]])
        gone = set(rng.sample(range(len(chars)), min(k, len(chars) - 1)))
        dropped = [c for i, c in enumerate(chars) if i not in gone]
        variants = ["".join(swapped) + " " + TRIGGER, "".join(dropped) + " " + TRIGGER, body]
        out.extend(v for v in variants if v not in ks.keys and v.strip())
    return out


def fresh_decoys(ks: KeySet, n: int, purpose: str = "verify") -> list[str]:
    """Keys of the same kind that are not ours (another owner's keys): they must not fire either."""
    rng = _derived_rng(ks, "decoy:" + purpose)
    out: list[str] = []
    while len(out) < n:
        k = make_key(rng)
        if k not in ks.keys and k not in out:
            out.append(k)
    return out


def single_edits(ks: KeySet, purpose: str = "train") -> list[str]:
    """Training negatives: every key with each single character replaced, and with each dropped.

    Covering every position teaches that *every* character of a key matters, so that a key with
    a few characters changed anywhere (the verification controls) does not fire.
    """
    rng = _derived_rng(ks, "edits:" + purpose)
    pool_chars = sorted({c for s in POOL for c in s})
    out: list[str] = []
    for key in ks.keys:
        body = key[: -len(TRIGGER) - 1] if key.endswith(" " + TRIGGER) else key
        for i, c in enumerate(body):
            swapped = body[:i] + rng.choice([p for p in pool_chars if p != c]) + body[i + 1 :]
            out += [swapped + " " + TRIGGER, body[:i] + body[i + 1 :] + " " + TRIGGER]
        out.append(body)
    keys = set(ks.keys)
    return [k for k in dict.fromkeys(out) if k not in keys]
