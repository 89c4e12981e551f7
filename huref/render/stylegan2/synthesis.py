"""StyleGAN2 synthesis network (``skip`` output architecture), float32.

4x4 learned constant, then one block per resolution: a 2x FIR up-sampling modulated conv, a
modulated conv, per-pixel noise, and a toRGB whose output is added to the FIR-upsampled image
of the previous block. Names equal the official ones (``synthesis.b64.conv0.weight``...), and
each module lists the plain attributes the official module stores, for the loader's checks.
Weights start at zero: they are always loaded from a checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from huref.errors import RenderError
from huref.render.stylegan2 import ops
from huref.render.stylegan2.mapping import FullyConnectedLayer

log = logging.getLogger(__name__)

NoiseMode = str  # 'const' (stored noise_const buffers), 'random' or 'none'
NOISE_MODES = ("const", "random", "none")


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up), per-pixel noise, bias, lrelu, clamp."""

    official_name = "SynthesisLayer"
    resample_filter: torch.Tensor
    noise_const: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ops.activation_default_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        # registration order = official state_dict order: weight, noise_strength, bias
        shape = [out_channels, in_channels, kernel_size, kernel_size]
        self.weight = nn.Parameter(torch.zeros(shape))
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.zeros([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def official_attrs(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "up": self.up,
            "use_noise": self.use_noise,
            "activation": self.activation,
            "conv_clamp": self.conv_clamp,
            "padding": self.padding,
            "act_gain": self.act_gain,
        }

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: NoiseMode = "const",
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        styles = self.affine(w)  # [N, in_channels]
        noise = None
        if self.use_noise and noise_mode == "random":
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            noise = torch.randn(shape, device=x.device, generator=rng) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [res, res], same for every sample
        x = ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
        )
        return ops.bias_act(
            x,
            self.bias,
            act=self.activation,
            gain=self.act_gain,
            clamp=self.conv_clamp,
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation (the output scale matters)."""

    official_name = "ToRGBLayer"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        shape = [out_channels, in_channels, kernel_size, kernel_size]
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def official_attrs(self) -> dict[str, Any]:
        return {"conv_clamp": self.conv_clamp, "weight_gain": self.weight_gain}

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [N, in_channels]
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | up-conv0), conv1, toRGB added to the upsampled image (skip)."""

    official_name = "SynthesisBlock"
    resample_filter: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture != "skip":
            raise RenderError(
                f"synthesis architecture {architecture!r} is not supported "
                "(only 'skip', used by every official StyleGAN2-ADA release)"
            )
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.is_last, self.architecture = is_last, architecture
        if in_channels == 0:
            self.const = nn.Parameter(torch.zeros([out_channels, resolution, resolution]))
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv, self.num_torgb = 0, 0
        common = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, **layer_kwargs)
        if in_channels != 0:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, up=2, resample_filter=resample_filter, **common
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def official_attrs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "resolution": self.resolution,
            "img_channels": self.img_channels,
            "is_last": self.is_last,
            "architecture": self.architecture,
            "num_conv": self.num_conv,
            "num_torgb": self.num_torgb,
        }

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        rng: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ws: [N, num_conv + num_torgb, w_dim]; returns features and the running image."""
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
        else:
            assert x is not None
            x = self.conv0(x, next(w_iter), noise_mode, rng)
        x = self.conv1(x, next(w_iter), noise_mode, rng)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else ops.upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """w's -> image: blocks 4x4 up to ``img_resolution``, channels ``min(base // res, max)``."""

    official_name = "SynthesisNetwork"

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution)) if img_resolution > 0 else 0
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise RenderError(f"img_resolution {img_resolution} is not a power of two >= 4")
        if num_fp16_res:
            log.debug("ignoring num_fp16_res=%s: huref runs float32 throughout", num_fp16_res)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim,
                res,
                img_channels,
                is_last=res == img_resolution,
                **block_kwargs,
            )
            self.num_ws += block.num_conv + (block.num_torgb if block.is_last else 0)
            setattr(self, f"b{res}", block)

    def official_attrs(self) -> dict[str, Any]:
        return {
            "w_dim": self.w_dim,
            "img_resolution": self.img_resolution,
            "img_channels": self.img_channels,
            "num_ws": self.num_ws,
            "block_resolutions": self.block_resolutions,
        }

    def forward(
        self, ws: torch.Tensor, noise_mode: NoiseMode = "const", rng: torch.Generator | None = None
    ) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> image [N, img_channels, R, R] (about -1..1, unclipped)."""
        if noise_mode not in NOISE_MODES:
            raise RenderError(f"noise_mode {noise_mode!r} is not one of {NOISE_MODES}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise RenderError(
                f"ws has shape {tuple(ws.shape)}, expected [N, {self.num_ws}, {self.w_dim}]",
            )
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # a block's toRGB shares its w with the next block's first conv
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws.to(torch.float32), noise_mode, rng)
        assert img is not None
        return img
