"""The renderer plug-in kind: a Gaussian vector in, a dog portrait out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from huref.plugins import Registry

if TYPE_CHECKING:  # annotations only: Z_DIM is read by the numpy-only encoder (encoder/infer.py)
    import numpy as np
    from PIL import Image

Z_DIM = 512  # the encoder's output size; every renderer takes a vector of this length


class Renderer(Protocol):
    """Turns one standard-normal vector into one RGB image (512 x 512 unless stated)."""

    name: str

    def render(self, z: np.ndarray) -> Image.Image:  # z: [512] float
        ...


# name -> factory taking keyword options (e.g. checkpoint=PATH) and returning a Renderer
RENDERERS: Registry = Registry("renderer")
