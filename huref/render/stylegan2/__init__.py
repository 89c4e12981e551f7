"""StyleGAN2(-ADA) generator written in huref, with a safe loader for official ``.pkl`` files.

Importing this package registers the ``"stylegan2"`` renderer in ``huref.render.base.RENDERERS``.

- :func:`generator_from_pickle` reads an official stylegan2-ada-pytorch checkpoint with a
  restricted unpickler (nothing in the pickle is executed) and rebuilds the network;
- :func:`convert_pickle_to_safetensors` / :func:`load_generator_safetensors` store and reload it
  without pickle; :func:`load_generator` accepts either format;
- :class:`StyleGAN2Renderer` turns a 512-d vector into a 512x512 RGB image.
"""

from __future__ import annotations

from huref.render.stylegan2.convert import (
    convert_pickle_to_safetensors,
    load_generator,
    load_generator_safetensors,
    save_generator,
)
from huref.render.stylegan2.mapping import MappingNetwork
from huref.render.stylegan2.network import Generator
from huref.render.stylegan2.pickle_loader import (
    PersistentRecord,
    RestrictedUnpickler,
    load_stylegan_pickle,
)
from huref.render.stylegan2.rebuild import generator_from_pickle, generator_from_record
from huref.render.stylegan2.renderer import StyleGAN2Renderer, make_renderer, to_pil
from huref.render.stylegan2.synthesis import SynthesisNetwork

__all__ = [
    "Generator",
    "MappingNetwork",
    "PersistentRecord",
    "RestrictedUnpickler",
    "StyleGAN2Renderer",
    "SynthesisNetwork",
    "convert_pickle_to_safetensors",
    "generator_from_pickle",
    "generator_from_record",
    "load_generator",
    "load_generator_safetensors",
    "load_stylegan_pickle",
    "make_renderer",
    "save_generator",
    "to_pil",
]
