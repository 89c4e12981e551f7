"""Config keys as data: which ``config.json`` keys give each hyperparameter, read by one reader.

A family declares, in order, one entry per value it reads: ``count("n_embd", "hidden_size")``
(the first key that is set wins), ``real``, ``flag``, ``text``, a constant, ``Ref`` (an entry read
before it: kv heads default to query heads) or ``Derived`` (a small named function of the entries
before it: a d_ff of four widths). Per-``model_type`` differences are overrides of entries, as
data too. Names that are ``ArchConfig`` fields fill them, names declared ``extra`` go to
``ArchConfig.extra`` and names starting with ``_`` are intermediate; any other name is refused
when the family is defined, so a typo cannot pass.

Every value is checked for its JSON type and range where its meaning is known: a mistyped value
(true for a count, "false" for a flag, 2.5 layers, NaN, 1e400) is one error naming the key, never
a silent coercion or an exception where it is used.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from huref.arch.config import ArchConfig
from huref.errors import ArchitectureError
from huref.paths import shown

MAX_SIZE = 2**31 - 1  # sizes and counts: frameworks index them with 32-bit integers
_REQUIRED: Any = object()


def describe(value: Any) -> str:
    """A JSON value as an error message shows it."""
    if isinstance(value, str):
        return f"the string '{shown(value[:40])}'"
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)  # true, 2.5, NaN, Infinity
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def _lookup(cfg: dict[str, Any], keys: tuple[str, ...], default: Any) -> tuple[str, Any]:
    """(the first of ``keys`` that is set, its value); null counts as unset."""
    for k in keys:
        if cfg.get(k) is not None:
            return k, cfg[k]
    if default is _REQUIRED:
        raise ArchitectureError(f"config.json lacks '{keys[0]}'")
    return keys[0], default


def _count(cfg: dict[str, Any], *keys: str, default: Any = _REQUIRED, low: int = 1) -> int:
    """A size or count: a whole number (1000 or 1e3, not 2.5, true or "2") in low..MAX_SIZE."""
    key, value = _lookup(cfg, keys, default)
    whole = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not whole or not low <= value <= MAX_SIZE:
        raise ArchitectureError(
            f"config.json: '{key}' must be a whole number from {low} to {MAX_SIZE}, not {describe(value)}"
        )
    return int(value)


def _real(cfg: dict[str, Any], key: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in low..high (an epsilon: NaN or Infinity would poison every norm; no upper
    bound, since rescaling a model's residual stream by c legitimately scales its epsilon by c**2)."""
    _, value = _lookup(cfg, (key,), default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArchitectureError(f"config.json: '{key}' must be a finite number, not {describe(value)}")
    if not low <= value <= high:
        raise ArchitectureError(f"config.json: '{key}' must be between {low} and {high}, not {value}")
    return float(value)


def _flag(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """A JSON boolean; the string "false" is not one (bool("false") would be True)."""
    _, value = _lookup(cfg, (key,), default)
    if not isinstance(value, bool):
        raise ArchitectureError(f"config.json: '{key}' must be true or false, not {describe(value)}")
    return value


def _text(cfg: dict[str, Any], *keys: str, default: str) -> str:
    key, value = _lookup(cfg, keys, default)
    if not isinstance(value, str):
        raise ArchitectureError(f"config.json: '{key}' must be a string, not {describe(value)}")
    return value


def heads(d: int, h: int, kv: int, hd: int | None = None) -> dict[str, int]:
    """Head counts checked against each other; head_dim defaults to d_model // heads."""
    if h % kv:
        raise ArchitectureError(f"config.json: {h} attention heads do not divide into {kv} key/value heads")
    hd = hd or d // h
    if hd < 1:
        raise ArchitectureError(f"config.json: {h} attention heads for a hidden size of {d}")
    return {"n_heads": h, "n_kv_heads": kv, "head_dim": hd}


# ---------------------------------------------------------------- the entries a family declares
@dataclass(frozen=True)
class Ref:
    """The value of an entry read before this one."""

    name: str


@dataclass(frozen=True)
class Derived:
    """A value computed by a small named function of the entries read so far (``Values``)."""

    fn: Callable[[Values], Any]


@dataclass(frozen=True)
class Key:
    """A config value of a checked JSON type: the first of ``keys`` that is set, else ``default``
    (a constant, ``Ref`` or ``Derived``; ``None`` for an optional count; required if absent)."""

    kind: Literal["count", "real", "flag", "text"]
    keys: tuple[str, ...]
    default: Any = _REQUIRED
    low: int = 1  # a count's least value (0 for counts that may be none, as dense layers)


def count(*keys: str, default: Any = _REQUIRED, low: int = 1) -> Key:
    return Key("count", keys, default, low)


def real(key: str, default: Any) -> Key:
    return Key("real", (key,), default)


def flag(key: str, default: Any) -> Key:
    return Key("flag", (key,), default)


def text(*keys: str, default: Any) -> Key:
    return Key("text", keys, default)


class Values(dict[str, Any]):
    """The entries read so far, and the config they come from (for ``Derived`` functions that
    read a key only in some configurations, as Falcon's new architecture does)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg

    def resolve(self, entry: Any) -> Any:
        if isinstance(entry, Ref):
            return self[entry.name]
        if isinstance(entry, Derived):
            return entry.fn(self)
        if isinstance(entry, Key):
            return self.read(entry)
        return entry  # a constant

    def read(self, key: Key) -> Any:
        default = key.default if key.default is _REQUIRED else self.resolve(key.default)
        if key.kind == "count":
            if default is None and all(self.cfg.get(k) is None for k in key.keys):
                return None  # optional and unset (head_dim)
            return _count(self.cfg, *key.keys, default=default, low=key.low)
        if key.kind == "real":
            return _real(self.cfg, key.keys[0], default)
        if key.kind == "flag":
            return _flag(self.cfg, key.keys[0], default)
        return _text(self.cfg, *key.keys, default=default)


_FIELDS = {f.name for f in dataclasses.fields(ArchConfig)} - {"family", "model_type", "extra"}
_NEEDED = {
    f.name
    for f in dataclasses.fields(ArchConfig)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
} - {"family", "model_type"}


@dataclass(frozen=True, eq=False)
class ConfigKeys:
    """One family's config keys, defaults and per-model_type overrides, read in declared order.

    ``head_dim`` is where the head counts are checked against each other, so d_model, n_heads
    and n_kv_heads come before it; ``None`` there means d_model // n_heads.
    """

    entries: Mapping[str, Any]
    extra: tuple[str, ...] = ()  # entries kept in ArchConfig.extra, for rules' ``when`` and the model
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # by model_type
    model_type: str | None = None  # fixed model_type recorded; None: the config's own

    def __post_init__(self) -> None:
        for name in self.entries:
            if name not in _FIELDS and name not in self.extra and not name.startswith("_"):
                raise ArchitectureError(
                    f"config entry {name!r} is no ArchConfig field and not declared extra"
                )
        for group, names in (("ArchConfig field", _NEEDED), ("extra", set(self.extra))):
            if lacking := sorted(names - set(self.entries)):
                raise ArchitectureError(f"config keys lack the {group} {', '.join(lacking)}")
        order = list(self.entries)
        if order.index("head_dim") < max(order.index(n) for n in ("d_model", "n_heads", "n_kv_heads")):
            raise ArchitectureError("config keys: head_dim must come after d_model, n_heads and n_kv_heads")
        for mt, over in self.overrides.items():
            if unknown := sorted(set(over) - set(self.entries)):
                raise ArchitectureError(f"override for {mt!r} names unknown entries {', '.join(unknown)}")
        for entries in (self.entries, *self.overrides.values()):
            for name, entry in entries.items():
                self._check_refs(name, entry, order)

    @staticmethod
    def _check_refs(name: str, entry: Any, order: list[str]) -> None:
        ref = entry.default if isinstance(entry, Key) else entry
        if isinstance(ref, Ref) and (ref.name not in order or order.index(ref.name) >= order.index(name)):
            raise ArchitectureError(
                f"config entry {name!r} refers to {ref.name!r}, which is not read before it"
            )

    def read(self, cfg: dict[str, Any], family: str) -> ArchConfig:
        """The ``ArchConfig`` of ``cfg`` for ``family``; every value checked, in declared order."""
        model_type = _text(cfg, "model_type", default=family)
        v = Values(cfg)
        for name, entry in {**self.entries, **self.overrides.get(model_type, {})}.items():
            v[name] = v.resolve(entry)
            if name == "head_dim":
                v.update(heads(v["d_model"], v["n_heads"], v["n_kv_heads"], v["head_dim"]))
        return ArchConfig(
            family=family,
            model_type=self.model_type or model_type,
            **{k: v[k] for k in self.entries if k in _FIELDS},
            extra={k: v[k] for k in self.extra},
        )


# ---------------------------------------------------------------- computed values shared by families
def four_widths(v: Values) -> int:
    """The MLP width that GPT-2, GPT-NeoX, BLOOM and Falcon default to: 4 * d_model."""
    return 4 * v["d_model"]
