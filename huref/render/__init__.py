"""Dog images: renderers that turn a Gaussian vector into a portrait."""

from __future__ import annotations

import importlib
from typing import Any

from huref.errors import RenderError
from huref.render.base import RENDERERS, Renderer

# Renderers register themselves when their module is imported; importing lazily keeps
# ``import huref.render`` free of the StyleGAN2 network code.
RENDERER_MODULES = {
    "sketch": "huref.render.sketch",
    "stylegan2": "huref.render.stylegan2",
}


def get_renderer(name: str, **opts: Any) -> Renderer:
    """The renderer registered as name, built with opts (e.g. checkpoint=PATH for stylegan2)."""
    wanted = [RENDERER_MODULES[name]] if name in RENDERER_MODULES else list(RENDERER_MODULES.values())
    for module in wanted:  # an unknown name imports them all, so the error lists every renderer
        importlib.import_module(module)
    factory = RENDERERS.get(name)
    try:
        return factory(**opts)
    except TypeError as e:  # missing or unknown keyword options
        raise RenderError(f"renderer {name!r} cannot be built with options {sorted(opts)}: {e}") from None


__all__ = ["RENDERERS", "RENDERER_MODULES", "get_renderer"]
