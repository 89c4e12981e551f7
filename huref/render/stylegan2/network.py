"""StyleGAN2 generator: the mapping network then the synthesis network, float32.

Built from the official ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels,
mapping_kwargs, synthesis_kwargs)`` arguments, so a checkpoint's ``_init_kwargs`` configure it
directly; fp16 options of the checkpoint are accepted and ignored (huref runs float32). The
arguments are checked first (config.py), and loaders build a meta-device skeleton
(:func:`generator_skeleton`) to compare with a checkpoint before allocating anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from huref.errors import RenderError
from huref.render.stylegan2.config import MAX_PARAMETERS, check_generator_config
from huref.render.stylegan2.mapping import MappingNetwork
from huref.render.stylegan2.synthesis import NoiseMode, SynthesisNetwork


class Generator(nn.Module):
    """Mapping network then synthesis network, built from the official ``_init_kwargs``."""

    official_name = "Generator"

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        synthesis_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_generator_config(
            z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs
        )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        synthesis_kwargs.pop("fp16_channels_last", None)  # a memory layout, not a value
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)
        self.init_kwargs: dict[str, Any] = {
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "mapping_kwargs": mapping_kwargs,
            "synthesis_kwargs": synthesis_kwargs,
        }

    def official_attrs(self) -> dict[str, Any]:
        return {
            "z_dim": self.z_dim,
            "c_dim": self.c_dim,
            "w_dim": self.w_dim,
            "img_resolution": self.img_resolution,
            "img_channels": self.img_channels,
            "num_ws": self.num_ws,
        }

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """z [N, z_dim] -> image [N, img_channels, R, R] (raw synthesis output)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise RenderError(f"z has shape {tuple(z.shape)}, expected [N, {self.z_dim}]")
        ws = self.mapping(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, rng=rng)


def generator_skeleton(kwargs: dict[str, Any], where: str = "generator") -> Generator:
    """The Generator of a configuration on the meta device: every name and shape, no memory.

    The loaders compare it with a checkpoint's tensors before anything is allocated, so a tiny
    file that declares a huge network costs nothing; any failure of the constructors on a
    malformed configuration becomes one RenderError.
    """
    try:
        with torch.device("meta"):
            generator = Generator(**kwargs)
    except RenderError as exc:
        raise RenderError(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError, RuntimeError) as exc:
        raise RenderError(f"{where}: bad generator configuration ({type(exc).__name__}: {exc})") from None
    count = sum(t.numel() for t in generator.state_dict().values())
    if count > MAX_PARAMETERS:
        raise RenderError(
            f"{where}: the configuration implies {count:,} parameters, more than {MAX_PARAMETERS:,}"
        )
    return generator


def materialise(skeleton: Generator) -> Generator:
    """Give a skeleton real CPU storage, uninitialised: the caller overwrites every tensor from
    a checkpoint that it has checked holds each one with this shape."""
    return skeleton.to_empty(device="cpu")
