"""The registry of report sections: one declaration per section, read by the audit, the schema
and the page.

A section declares its name (its key in report.json), its heading, how it gathers its value from
the audit's inputs (``AuditInputs`` below: the suspect, its fingerprint, the candidate bases, the
FP-Vec vectors, the user's switches, and the values of the sections gathered before it), the JSON
schema of that value, the template partial that shows it, and its order. From that one
declaration:

- ``huref.report.evidence.gather`` calls every registered section and writes its value under its
  name: a top-level key of report.json (slot ``"evidence"``, after ``verdict``) or a key of the
  verdict object (slot ``"verdict"``, after ``rule``). The key is always written; a section with
  nothing to show says so by its value (null, an empty list);
- ``huref.report.load_schema`` merges the fragment (and any ``$defs`` it refers to) into the
  shipped core schema, so every report.json is validated against it before it is written; an
  evidence-slot key is required, a verdict-slot key is optional in the verdict object;
- the page (``templates/audit.html.j2``) shows an evidence-slot section as a ``<section>`` of its
  own with its title as heading, between the suspect's identity and the method notes, and a
  verdict-slot section inside the verdict box, in ``order``; only when ``show(value)`` holds
  (by default: the value is not null and not empty). The partial sees ``value``, ``section`` and
  the whole record as ``ev``; the page autoescapes it like every other template. A section's
  ``method`` items join the page's method notes, in the same order.

The overall verdict is not a section: its rule (``huref.report.evidence.overall_verdict``) reads
the ``passive`` and ``active`` sections by name, and a section added later does not change it.
Sections are gathered evidence slot first, then verdict slot, each in order, so a verdict-slot
section (the model card's claims) can weigh what the evidence sections found.

huref's own sections are the modules of this package: each registers itself when imported, and
the registry imports them all the first time it is read, so a new one needs no other edit. A
section registered elsewhere (a plug-in module, a test) counts once its module is imported.
This module imports nothing heavy: a section's ``gather`` imports what it needs when it runs.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.plugins import Registry

if TYPE_CHECKING:
    from huref.arch import Model
    from huref.checkpoint import Checkpoint
    from huref.invariants import Fingerprint, Settings
    from huref.invariants.calibration import NullModel
    from huref.report.evidence import Candidate

NAME = re.compile(r"[a-z][a-z0-9_]*")  # a JSON key and the id of an HTML element
SLOTS = ("evidence", "verdict")  # the order in which the slots are gathered

# keys the record and its verdict already spell out: a section may not take them
CORE_KEYS = frozenset(
    {
        "schema",
        "huref_version",
        "created",
        "finished",
        "command",
        "settings",
        "suspect",
        "verdict",
        # keys of the verdict object
        "base",
        "because",
        "rule",
    }
)


@dataclass(frozen=True)
class AuditInputs:
    """What a section's ``gather`` sees."""

    subject: str | Path | Checkpoint  # the suspect as the audit was given it (a path, or an adapter merged)
    suspect: Model  # the suspect, opened
    fingerprint: Fingerprint  # the suspect's fingerprint (the audit's settings)
    candidates: tuple[Candidate, ...]  # the candidate bases with their fingerprints
    settings: Settings
    null: NullModel  # the Z null the comparisons use
    vectors: tuple[tuple[Path, Path], ...]  # FP-Vec (vector file, key file) pairs, checked to belong together
    with_pcs: bool  # the user's switches (huref audit --no-pcs, --no-dogs)
    with_dogs: bool
    gathered: Mapping[str, Any]  # the values of the sections gathered before this one, by name


def has_content(value: Any) -> bool:
    """The default ``show``: a value that is not null and not an empty list, object or string."""
    return value is not None and not (isinstance(value, (list, dict, str, tuple)) and not value)


@dataclass(frozen=True)
class Section:
    """One registered report section (see the module notes for where it appears)."""

    name: str  # its key in report.json, and the id of its <section> on the page
    title: str  # its heading on the page (an evidence-slot section)
    gather: Callable[[AuditInputs], Any]  # a JSON value (null or empty: nothing to show)
    schema: Mapping[str, Any]  # JSON schema of the value gather returns, null or empty included
    template: str | Path  # the partial: Jinja source, or a template file (a Path)
    order: int  # place among the sections of its slot, on the page and in report.json
    slot: str = "evidence"  # "evidence": a section of the page; "verdict": inside the verdict box
    defs: Mapping[str, Any] = field(default_factory=dict)  # schema $defs the fragment refers to
    show: Callable[[Any], bool] = has_content  # whether the page shows a value
    method: str | Path = ""  # its items (<li>) in the page's method notes, shown with or without a value

    @property
    def template_name(self) -> str:
        """The name the page includes the partial by (the page's loader answers it)."""
        return f"section:{self.name}"

    @property
    def method_name(self) -> str:
        return f"section-method:{self.name}"

    def source(self, part: str) -> str:
        """The Jinja source of the partial (``"section"``) or the method notes (``"section-method"``)."""
        src = self.template if part == "section" else self.method
        return src.read_text(encoding="utf-8") if isinstance(src, Path) else src


class SectionRegistry(Registry[Section]):
    """The registry, refusing names the record already uses; removable for tests."""

    def add(self, name: str, item: Section) -> Section:
        if not NAME.fullmatch(name):
            raise ValueError(f"report section {name!r}: a name is lower-case letters, digits and _")
        if name != item.name:
            raise ValueError(f"report section {item.name!r} registered under another name, {name!r}")
        if name in CORE_KEYS:
            raise ValueError(f"report section {name!r} would shadow a field of the report record")
        if item.slot not in SLOTS:
            raise ValueError(f"report section {name!r}: slot {item.slot!r} is not one of {', '.join(SLOTS)}")
        taken = {d: s.name for s in self._items.values() for d in s.defs}
        for d in item.defs:
            if d in taken:
                raise ValueError(f"report section {name!r}: schema $defs {d!r} is {taken[d]!r}'s already")
        return super().add(name, item)

    def remove(self, name: str) -> None:
        self.get(name)  # an unknown name is refused with the registry's own message
        del self._items[name]

    def in_slot(self, slot: str) -> list[Section]:
        """The sections of one slot in order (ties by name)."""
        return sorted((s for s in self._items.values() if s.slot == slot), key=lambda s: (s.order, s.name))


SECTIONS = SectionRegistry("report section")


def register(section: Section) -> Section:
    load_builtin()  # a plug-in's name and $defs are checked against huref's own sections
    return SECTIONS.add(section.name, section)


@contextmanager
def registered(section: Section) -> Iterator[Section]:
    """A section registered for the duration of a block (plug-in trials and tests)."""
    register(section)
    try:
        yield section
    finally:
        SECTIONS.remove(section.name)


_builtin_loading = False


def builtin_modules() -> list[str]:
    """huref's own sections: every module of this package (a new one needs no other edit)."""
    return sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.ispkg)


def load_builtin() -> None:
    """Register huref's own sections (each module registers itself once, when imported)."""
    global _builtin_loading
    if _builtin_loading:  # loaded, or loading: their own register() calls come back here
        return
    _builtin_loading = True
    try:
        for module in builtin_modules():
            importlib.import_module(module)
    except BaseException:
        _builtin_loading = False
        raise


def in_slot(slot: str) -> list[Section]:
    """The registered sections of one slot, huref's own included, in order."""
    load_builtin()
    return SECTIONS.in_slot(slot)


# -- what the consumers derive from the registry -----------------------------------------------


def gather_all(inputs: AuditInputs) -> dict[str, dict[str, Any]]:
    """Every section's value, by slot and then by name, in order; each section sees the values of
    those gathered before it."""
    gathered: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for slot in SLOTS:
        out[slot] = {}
        for s in in_slot(slot):
            value = s.gather(replace(inputs, gathered=dict(gathered)))
            gathered[s.name] = out[slot][s.name] = value
    return out


def merge_schema(core: Mapping[str, Any]) -> dict[str, Any]:
    """The core schema with every registered section's fragment and $defs merged in (a copy)."""
    doc = copy.deepcopy(dict(core))
    defs = doc.setdefault("$defs", {})
    for slot, where in (("evidence", doc), ("verdict", doc["properties"]["verdict"])):
        for s in in_slot(slot):
            where["properties"][s.name] = copy.deepcopy(dict(s.schema))
            if slot == "evidence":
                where["required"].append(s.name)
            for name, d in s.defs.items():
                if name in defs:
                    raise ValueError(f"report section {s.name!r}: schema $defs {name!r} is the core's")
                defs[name] = copy.deepcopy(d)
    return doc
