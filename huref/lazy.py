"""Package attributes imported on first use (PEP 562), so that importing a package is cheap.

``huref.invariants``, ``huref.checkpoint`` and the other packages re-export their public names;
eager re-exports would pull torch into every command that touches the package, including those
answered from caches alone. Each package declares which module holds each name, and
``lazy_exports`` gives it the module-level ``__getattr__`` and ``__dir__`` that import that
module when the name is first asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package``: name -> the module (absolute) that defines it."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups are plain attribute reads
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return getattr_, dir_
