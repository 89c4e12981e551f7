"""StyleGAN2 mapping network: z -> w, with the equalised-learning-rate dense layers.

Names equal those of the official stylegan2-ada-pytorch modules (``mapping.fc0.weight``...);
each module records the official class name it stands for and the plain attributes the
official module stores, so the loader can check a checkpoint against the structure both ways.
Weights start at zero: they are always loaded from a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from huref.errors import RenderError
from huref.render.stylegan2 import ops


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate (runtime weight scaling)."""

    official_name = "FullyConnectedLayer"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        ops.activation_default_gain(activation)  # fail early on an unknown name
        self.activation = activation
        self.weight = nn.Parameter(torch.zeros([out_features, in_features]))
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def official_attrs(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "weight_gain": self.weight_gain,
            "bias_gain": self.bias_gain,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.fully_connected(
            x, self.weight, self.bias, self.weight_gain, self.bias_gain, self.activation
        )


class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalisation, ``num_layers`` dense layers, broadcast to ``num_ws``."""

    official_name = "MappingNetwork"
    w_avg: torch.Tensor  # running mean of w during training: the truncation centre

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        if c_dim != 0:
            raise RenderError(
                f"conditional generators (c_dim={c_dim}) are not supported: "
                "a dog renderer has no class label to give"
            )
        if z_dim <= 0 or num_layers < 1:
            raise RenderError(
                f"mapping network needs z_dim > 0 and num_layers >= 1, got "
                f"z_dim={z_dim}, num_layers={num_layers}"
            )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        if w_avg_beta is not None:  # without it the checkpoint tracked no average w
            self.register_buffer("w_avg", torch.zeros([w_dim]))
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)

    def official_attrs(self) -> dict[str, Any]:
        return {
            "z_dim": self.z_dim,
            "c_dim": self.c_dim,
            "w_dim": self.w_dim,
            "num_ws": self.num_ws,
            "num_layers": self.num_layers,
        }

    def forward(
        self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> torch.Tensor:
        """[N, z_dim] -> [N, num_ws, w_dim]; truncation pulls the first ``cutoff`` w's towards
        ``w_avg`` (all of them when cutoff is None): ``w_avg + psi * (w - w_avg)``."""
        x = ops.normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            layer: FullyConnectedLayer = getattr(self, f"fc{idx}")
            x = layer(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, w_dim] -> [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise RenderError("truncation needs w_avg, which this generator does not track")
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cut] = self.w_avg.lerp(x[:, :cut], truncation_psi)
        return x
