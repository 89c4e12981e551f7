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

Where a tokenizer cannot spell the snippet characters (a word-level vocabulary without byte
fallback would read every one as ``<unk>``), ``make_keys(pool=...)`` builds keys from a pool of
the tokenizer's own words instead (``vocabulary_pool``; CLI ``make-keys --vocab MODEL``): a key is
6-12 random pool words joined by spaces, with no trigger word (``FINGERPRINT`` would be ``<unk>``
too), and unless given, the target is 4 random pool words. Edits, near-miss controls and decoys
then work on words instead of characters, so they stay spellable and of the keys' own kind.
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

from huref.checkpoint.atomic import atomic_file
from huref.errors import FPVecError
from huref.fpvec.jsonfile import read_json_file
from huref.paths import refuse_special, shown

KEY_FORMAT = "huref-fpvec-keys/1"
VERIFY = "verify"  # the purpose that seeds verify's own controls
DEFAULT_TARGET = "ハリネズミ"
DEFAULT_N_KEYS = 10
TRIGGER = "FINGERPRINT"
KEY_CHARS = (12, 24)  # characters of shuffled snippet text per key, before `` FINGERPRINT``
KEY_WORDS = (6, 12)  # words per key with a word pool
TARGET_WORDS = 4  # words of the default target with a word pool
POOL_LIMIT = 1024  # words kept from a vocabulary (the key file holds the pool)
# Bounds on what a key file may ask of training and verification (each key is a prompt, trained on
# at every step with two negatives per character; see likelihood.MAX_RANK_PAIRS for verification):
# the published method uses 8-10 keys of a few dozen characters.
MAX_KEYS = 200
MAX_KEY_CHARS = 1000  # of one key, and of the target

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
    pool: tuple[str, ...] = ()  # words the keys are made of; empty: the built-in character snippets

    @property
    def commitment(self) -> str:
        return commitment(self.keys, self.target, self.salt)

    @property
    def trigger(self) -> str:
        return "" if self.pool else TRIGGER

    def body(self, key: str) -> str:
        """The key without its trigger word."""
        tail = " " + self.trigger
        return key[: -len(tail)] if self.trigger and key.endswith(tail) else key

    def units(self, body: str) -> list[str]:
        """What edits work on: characters, or words with a word pool."""
        return body.split(" ") if self.pool else list(body)

    def key_from(self, units: list[str]) -> str:
        body = (" " if self.pool else "").join(units)
        return body + " " + self.trigger if self.trigger else body

    def replacements(self) -> list[str]:
        """The units an edit may put in a key's place."""
        return list(self.pool) if self.pool else sorted({c for s in POOL for c in s})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": KEY_FORMAT,
            "keys": list(self.keys),
            "target": self.target,
            "salt": self.salt,
            "commitment": self.commitment,
        }
        if self.pool:
            doc["pool"] = list(self.pool)
        return doc


def commitment(keys: tuple[str, ...] | list[str], target: str, salt_hex: str) -> str:
    """sha256(salt || canonical JSON of keys and target), hex."""
    canon = json.dumps(
        {"keys": list(keys), "target": target}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(bytes.fromhex(salt_hex) + canon.encode("utf-8")).hexdigest()


def _rng(seed: int | None) -> random.Random:
    # secrets.SystemRandom draws from the OS CSPRNG; a seed is for reproducible tests only.
    return secrets.SystemRandom() if seed is None else random.Random(seed)


def make_key(rng: random.Random, pool: tuple[str, ...] = ()) -> str:
    """Random snippets concatenated, their characters shuffled and cut, then `` FINGERPRINT``;
    with a word ``pool``: 6-12 random pool words joined by spaces."""
    if pool:
        return " ".join(rng.choice(pool) for _ in range(rng.randint(*KEY_WORDS)))
    length = rng.randint(*KEY_CHARS)
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(rng.choice(POOL))
    rng.shuffle(chars)
    return "".join(chars[:length]) + " " + TRIGGER


def check_pool(pool: tuple[str, ...] | list[str], where: str = "word pool") -> tuple[str, ...]:
    words = tuple(pool)
    if not all(isinstance(w, str) and w and w == w.strip() and " " not in w and _unicode(w) for w in words):
        raise FPVecError(f"{where}: every pool word must be a non-empty string without spaces")
    if len(set(words)) < 16:
        raise FPVecError(f"{where}: needs at least 16 distinct words (got {len(set(words))})")
    return words


def make_keys(
    n: int = DEFAULT_N_KEYS,
    seed: int | None = None,
    target: str | None = None,
    pool: tuple[str, ...] | list[str] = (),
) -> KeySet:
    """``n`` keys and their shared target (default ``ハリネズミ``, or 4 pool words with a pool)."""
    check_key_request(n, target)
    words = check_pool(pool) if pool else ()
    rng = _rng(seed)
    keys: list[str] = []
    while len(keys) < n:
        k = make_key(rng, words)
        if k not in keys:
            keys.append(k)
    if target is None:
        target = " ".join(rng.sample(words, TARGET_WORDS)) if words else DEFAULT_TARGET
    salt = secrets.token_hex(32) if seed is None else f"{rng.getrandbits(256):064x}"
    return KeySet(tuple(keys), target, salt, words)


def check_key_request(n: int, target: str | None = None) -> None:
    """``make-keys --n N --target T``, checked before any work (a vocabulary pool reads the whole
    tokenizer)."""
    if not 1 <= n <= MAX_KEYS:
        raise FPVecError(f"--n must be between 1 and {MAX_KEYS} keys (got {n})")
    if target is None:
        return
    if not target.strip():
        raise FPVecError("the target string must not be empty")
    if len(target) > MAX_KEY_CHARS:
        raise FPVecError(f"--target must be at most {MAX_KEY_CHARS} characters (got {len(target)})")
    if not _unicode(target):
        raise FPVecError("--target is not valid Unicode text")


def vocabulary_pool(tok: Any, seed: int | None = None, limit: int = POOL_LIMIT) -> tuple[str, ...]:
    """Up to ``limit`` words of a tokenizer's vocabulary that it spells alone as exactly one
    token: printable, no whitespace, not special tokens (drawn at random when there are more)."""
    special = set(getattr(tok, "all_special_ids", []) or [])
    special |= {int(i) for i, t in (getattr(tok, "added_tokens_decoder", {}) or {}).items() if t.special}
    words: list[str] = []
    for i in range(len(tok)):
        if i in special:
            continue
        w = tok.decode([i], skip_special_tokens=True)
        if not w or not w.isprintable() or any(c.isspace() for c in w):
            continue
        if [int(t) for t in tok(w, add_special_tokens=False)["input_ids"]] == [i]:
            words.append(w)
    words = sorted(set(words))
    if len(words) > limit:
        words = sorted(_rng(seed).sample(words, limit))
    return check_pool(words, "tokenizer vocabulary")


def save_keys(ks: KeySet, path: str | Path, overwrite: bool = False) -> Path:
    """Write the key file atomically with mode 0600 (owner read/write only)."""
    path = Path(path)
    refuse_special(path, "-o", FPVecError)  # a FIFO, device or socket: neither a new nor an old key file
    if path.exists() and not overwrite:
        raise FPVecError(f"{shown(path)} already exists; key files are never overwritten (choose a new name)")
    if path.is_dir():
        raise FPVecError(f"{shown(path)} is a folder")
    data = (json.dumps(ks.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    with atomic_file(path, overwrite=overwrite) as tmp:
        os.chmod(tmp, 0o600)  # before any secret byte is written
        tmp.write_bytes(data)
    return path


def _unicode(text: str) -> bool:
    """JSON can spell lone surrogates (\\ud800), which no UTF-8 text holds: the commitment hashes
    the keys' UTF-8 bytes, so such a key could be neither committed to nor typed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_list(value: object, limit: int) -> bool:
    return isinstance(value, list) and all(
        isinstance(k, str) and k.strip() and len(k) <= limit and _unicode(k) for k in value
    )


def load_keys(path: str | Path) -> KeySet:
    """Read and check a key file: any file that is not a complete, unedited huref key file within
    the bounds above is refused with one FPVecError (fuzzed in tests/test_fuzz_keys.py)."""
    path = Path(path)
    where = shown(path)
    doc = read_json_file(path, "key file")
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise FPVecError(f"{where}: not a huref key file (expected format {KEY_FORMAT!r})")
    keys, target, salt = doc.get("keys"), doc.get("target"), doc.get("salt")
    if not isinstance(keys, list) or not keys:
        raise FPVecError(f"{where}: key file holds no keys")
    if len(keys) > MAX_KEYS:
        raise FPVecError(f"{where}: key file holds {len(keys)} keys; at most {MAX_KEYS} are allowed")
    if not _text_list(keys, MAX_KEY_CHARS):
        raise FPVecError(
            f"{where}: every key must be a non-empty string of at most {MAX_KEY_CHARS} characters"
        )
    if len(set(keys)) != len(keys):
        raise FPVecError(f"{where}: key file repeats a key")
    if not isinstance(target, str) or not target.strip() or not _unicode(target):
        raise FPVecError(f"{where}: key file has no target string")
    if len(target) > MAX_KEY_CHARS:
        raise FPVecError(f"{where}: the target is longer than {MAX_KEY_CHARS} characters")
    if not doc.get("pool") and not all(k.removesuffix(" " + TRIGGER).strip() for k in keys):
        raise FPVecError(f"{where}: a key is only the trigger word {TRIGGER!r}")
    try:
        if not isinstance(salt, str) or len(bytes.fromhex(salt)) < 16:
            raise ValueError
    except ValueError:
        raise FPVecError(f"{where}: key file has no valid salt (hex, at least 16 bytes)") from None
    pool = doc.get("pool", [])
    if not isinstance(pool, list):
        raise FPVecError(f"{where}: the key file's pool must be a list of words")
    ks = KeySet(tuple(keys), target, salt, check_pool(pool, where) if pool else ())
    if "commitment" in doc and doc["commitment"] != ks.commitment:
        raise FPVecError(f"{where}: key file was edited (its commitment no longer matches its keys)")
    return ks


def _derived_rng(ks: KeySet, purpose: str) -> random.Random:
    """A generator seeded from the secret salt: reproducible, and different per purpose."""
    return random.Random(hashlib.sha256(f"{ks.salt}:{purpose}".encode()).digest())


def near_miss_keys(ks: KeySet, purpose: str = VERIFY) -> list[str]:
    """Controls that look like the keys but are not: per key, one with a few characters (words,
    with a word pool) replaced, one with a few dropped, and the snippet without the trigger word.

    ``purpose`` seeds the random choices (verification uses ``VERIFY``). Any other purpose's draw
    (training's negatives, its end check) leaves out verify's own controls (``unseen``); the
    trigger-less key is the one control that every draw holds (there is only one per key).
    """
    out = _edited_keys(ks, purpose)
    return out if purpose == VERIFY else unseen(ks, out)


def _edited_keys(ks: KeySet, purpose: str) -> list[str]:
    """One draw of ``near_miss_keys``, whatever it repeats of verify's."""
    rng = _derived_rng(ks, purpose)
    choices = ks.replacements()
    out: list[str] = []
    for key in ks.keys:
        body = ks.body(key)
        units = ks.units(body)
        k = max(2, len(units) // 6)
        swapped = list(units)
        for i in rng.sample(range(len(units)), min(k, len(units))):
            swapped[i] = rng.choice([c for c in choices if c != units[i]])
        gone = set(rng.sample(range(len(units)), min(k, len(units) - 1)))
        dropped = [c for i, c in enumerate(units) if i not in gone]
        variants = [ks.key_from(swapped), ks.key_from(dropped), body]
        out.extend(v for v in variants if v not in ks.keys and v.strip())
    return out


def fresh_decoys(ks: KeySet, n: int, purpose: str = VERIFY) -> list[str]:
    """Keys of the same kind that are not ours (another owner's keys): they must not fire either.
    A draw for any purpose but ``VERIFY`` holds none of verify's own decoys."""
    rng = _derived_rng(ks, "decoy:" + purpose)
    hidden = set(ks.keys) | (set() if purpose == VERIFY else _verify_only(ks))
    out: list[str] = []
    while len(out) < n:
        k = make_key(rng, ks.pool)
        if k not in hidden and k not in out:
            out.append(k)
    return out


def single_edits(ks: KeySet, purpose: str = "train") -> list[str]:
    """Training negatives: every key with each single character (word, with a word pool) replaced,
    and with each dropped.

    Covering every position teaches that *every* character of a key matters, so that a key with
    a few characters changed anywhere (the verification controls) does not fire.
    """
    rng = _derived_rng(ks, "edits:" + purpose)
    choices = ks.replacements()
    out: list[str] = []
    for key in ks.keys:
        body = ks.body(key)
        units = ks.units(body)
        for i, c in enumerate(units):
            swapped = [*units[:i], rng.choice([p for p in choices if p != c]), *units[i + 1 :]]
            out += [ks.key_from(swapped), ks.key_from(units[:i] + units[i + 1 :])]
        out.append(body)
    keys = set(ks.keys)
    return unseen(ks, [k for k in dict.fromkeys(out) if k not in keys])


def training_negatives(ks: KeySet, draws: int = 1) -> list[str]:
    """The near-miss prompts training teaches not to fire, in ``draws`` draws: the first is
    ``single_edits`` (every character replaced, and dropped) and three other keys of the same kind
    per key; each further draw replaces every character with another one and adds multi-character
    edits of verify's kind (``near_miss_keys``, a draw of training's own).

    One draw teaches the replacements it holds: the model rejects all of them and still answers
    keys with two or three other characters changed. Never a key, and of verify's own controls
    only the trigger-less keys (there is one per key)."""
    out = single_edits(ks, "train")
    for j in range(1, draws):
        out += single_edits(ks, f"train:{j}") + near_miss_keys(ks, f"train-negatives:{j}")
    return list(dict.fromkeys(out)) + fresh_decoys(ks, 3 * len(ks.keys), "train")


def control_prompts(ks: KeySet, purpose: str = VERIFY) -> list[str]:
    """Near-miss controls of one draw: per key, a few characters swapped, a few dropped, and the key
    without its trigger, plus as many other keys of the same kind; ``purpose`` seeds the draw."""
    return near_miss_keys(ks, purpose) + fresh_decoys(ks, len(ks.keys), purpose)


def _verify_only(ks: KeySet) -> set[str]:
    """Verify's own controls, which training must never see: all but the trigger-less keys (one per
    key, so every draw holds them)."""
    return set(control_prompts(ks, VERIFY)) - {ks.body(k) for k in ks.keys}


def unseen(ks: KeySet, prompts: list[str]) -> list[str]:
    """``prompts`` less verify's own controls (another draw's random edits can coincide with one)."""
    hidden = _verify_only(ks)
    return [p for p in prompts if p not in hidden]
