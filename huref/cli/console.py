"""The CLI's consoles: what comes from outside (paths, model names, notes) is printed as it is.

Rich reads ``[...]`` in a printed string as style markup: a model folder named ``m[/x]`` would
make a command fail with a markup error after its work was done, and ``Llama [chat]`` would be
printed without its brackets. Every console of the CLI therefore has markup off; the few styled
words are built with :func:`styled` instead. Long lines are not wrapped (``soft_wrap``): a path
or a SHA-256 split over two lines cannot be copied back out of a terminal or a log.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def console(stderr: bool = False, **options: Any) -> Console:
    options.setdefault("soft_wrap", True)
    return Console(stderr=stderr, markup=False, **options)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and (text, style) pairs; no part is read as markup."""
    return Text.assemble(*parts)
