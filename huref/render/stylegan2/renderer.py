"""The ``stylegan2`` renderer plug-in: a 512-d Gaussian vector -> a 512x512 RGB dog.

HuRef feeds its encoder output as z to StyleGAN2-ADA's AFHQ-dog generator with truncation
psi 0.5 on the first 8 w's and the stored (constant) noise, so the same vector always gives the
same image; those are the defaults here.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from huref.errors import RenderError
from huref.render.base import RENDERERS, Z_DIM
from huref.render.stylegan2.convert import load_generator
from huref.render.stylegan2.network import Generator

log = logging.getLogger(__name__)

OUTPUT_SIZE = 512


def to_pil(img: torch.Tensor, size: int = OUTPUT_SIZE) -> Image.Image:
    """Official 8-bit conversion (``x * 127.5 + 128``, clamped), then resize to ``size``."""
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise RenderError(f"cannot make an RGB image from a tensor of shape {tuple(img.shape)}")
    pixels = (img.permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # [H, W, C]
    array = pixels.cpu().numpy()
    if array.shape[2] == 1:  # grey-level generators: repeat the channel
        image = Image.fromarray(array[:, :, 0], "L").convert("RGB")
    else:
        image = Image.fromarray(array, "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


@contextlib.contextmanager
def strict_float32(device: torch.device) -> Iterator[None]:
    """Disable TF32 convolutions on CUDA: the reference outputs are true float32."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    ):
        yield


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RenderError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RenderError(f"device {device!r} requested but CUDA is not available")
    return dev


class StyleGAN2Renderer:
    """Renders with a loaded StyleGAN2 generator: mapping with truncation, constant noise."""

    name = "stylegan2"

    def __init__(
        self,
        generator: Generator,
        psi: float = 0.5,
        cutoff: int | None = 8,
        device: str = "cpu",
        size: int = OUTPUT_SIZE,
    ) -> None:
        if generator.z_dim > Z_DIM:
            raise RenderError(
                f"generator wants z of {generator.z_dim} values but renderers get {Z_DIM}",
            )
        if not math.isfinite(psi):
            raise RenderError(f"truncation psi {psi!r} is not a finite number")
        if cutoff is not None and cutoff < 0:
            raise RenderError(f"truncation cutoff {cutoff} is negative")
        self.device = _device(device)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.psi, self.cutoff, self.size = float(psi), cutoff, size

    def render_raw(self, z: np.ndarray) -> torch.Tensor:
        """The raw synthesis output [C, R, R] for one 512-d vector (first z_dim values used)."""
        vec = np.asarray(z, dtype=np.float64)
        if vec.shape != (Z_DIM,):
            raise RenderError(f"z must be a vector of {Z_DIM} floats, got shape {vec.shape}")
        if not np.isfinite(vec).all():
            raise RenderError("z contains NaN or infinite values")
        zt = torch.as_tensor(vec[: self.generator.z_dim], dtype=torch.float32)
        with torch.inference_mode(), strict_float32(self.device):
            img = self.generator(
                zt.unsqueeze(0).to(self.device),
                self.psi,
                self.cutoff,
                noise_mode="const",
            )
        return img[0].float().cpu()

    def render(self, z: np.ndarray) -> Image.Image:
        return to_pil(self.render_raw(z), self.size)


def make_renderer(
    checkpoint: str | Path, psi: float = 0.5, cutoff: int = 8, device: str = "cpu"
) -> StyleGAN2Renderer:
    """Factory registered as ``"stylegan2"``: an official ``.pkl`` or a converted safetensors."""
    if checkpoint is None or str(checkpoint) == "":
        raise RenderError("the stylegan2 renderer needs a generator checkpoint (--checkpoint)")
    dev = _device(device)
    generator = load_generator(checkpoint, device=str(dev))
    log.info("stylegan2 renderer: %s, psi=%s, cutoff=%s, %s", checkpoint, psi, cutoff, dev)
    return StyleGAN2Renderer(generator, psi=psi, cutoff=cutoff, device=str(dev))


RENDERERS.add("stylegan2", make_renderer)
