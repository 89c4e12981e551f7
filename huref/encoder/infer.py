"""The dog encoder's inference in numpy: canonical stacks -> z, with no tensor library.

The trained network (model.DogEncoder) has no nonlinearity: two strided convolutions whose kernel
equals their stride (fixed, non-overlapping groupings of cells) and a linear layer, so inference is
an affine map of the stack. It is evaluated here layer by layer as three matrix products over
patches (about 2M multiply-adds per stack; composing the layers into one [6 * 32 * 32 -> 512]
matrix would cost some 470M once per process, more than the few stacks a command encodes), in
float64. The calibration (model.Calibration: centring, ZCA whitening, the radial map, the
per-coordinate quantile maps) follows with the same formulas. Torch stays for training
(train.py); a test holds this path equal to the torch ``CalibratedEncoder`` on real and synthetic
stacks, so the two cannot drift apart.

The tensor names and shapes below are the torch modules' ``state_dict`` (encoder.net.0 is the
first convolution, net.1 the second, net.3 the linear layer after the flatten at net.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from huref.encoder.canonical import CHANNELS, GRID
from huref.render.base import Z_DIM

QUANTILE_KNOTS = 257  # per-coordinate monotone map: knots at these many probability levels
PATCH1, PATCH2 = 4, 2  # kernel = stride of the two convolutions


def state_shapes(width: int, z_dim: int = Z_DIM, knots: int = QUANTILE_KNOTS) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``CalibratedEncoder(width)`` weights file."""
    w1, w2 = width, 2 * width
    side = GRID // (PATCH1 * PATCH2)
    return {
        "encoder.net.0.weight": (w1, CHANNELS, PATCH1, PATCH1),
        "encoder.net.0.bias": (w1,),
        "encoder.net.1.weight": (w2, w1, PATCH2, PATCH2),
        "encoder.net.1.bias": (w2,),
        "encoder.net.3.weight": (z_dim, w2 * side * side),
        "encoder.net.3.bias": (z_dim,),
        "calibration.mean": (z_dim,),
        "calibration.whiten": (z_dim, z_dim),
        "calibration.radius_in": (knots,),
        "calibration.radius_out": (knots,),
        "calibration.knots_in": (z_dim, knots),
        "calibration.knots_out": (knots,),
    }


def interp(w: np.ndarray, xk: np.ndarray, yk: np.ndarray) -> np.ndarray:
    """Per-coordinate piecewise-linear map of w [B, z] through knots (xk[j] [k], yk [k]), linear
    beyond the end knots (xk: [z, k] or [1, k] shared by every coordinate)."""
    b, z = w.shape
    k = yk.size
    rows = np.broadcast_to(xk, (z, xk.shape[-1]))
    # first knot >= w (searchsorted side "left", as torch.searchsorted(right=False))
    idx = np.empty((b, z), dtype=np.int64)
    for j in range(z):
        idx[:, j] = np.searchsorted(rows[j], w[:, j], side="left")
    idx = np.clip(idx, 1, k - 1)
    col = np.arange(z)[None, :]
    x0, x1 = rows[col, idx - 1], rows[col, idx]
    y0, y1 = yk[idx - 1], yk[idx]
    t = (w - x0) / np.maximum(x1 - x0, 1e-12)
    return y0 + t * (y1 - y0)


@dataclass(frozen=True)
class NumpyEncoder:
    """The weights of a calibrated encoder as float64 arrays (see :func:`state_shapes`)."""

    conv1_w: np.ndarray  # [w1, C, 4, 4]
    conv1_b: np.ndarray  # [w1]
    conv2_w: np.ndarray  # [w2, w1, 2, 2]
    conv2_b: np.ndarray  # [w2]
    linear_w: np.ndarray  # [z, w2 * side * side], input flattened as (channel, row, column)
    linear_b: np.ndarray  # [z]
    mean: np.ndarray  # [z]
    whiten: np.ndarray  # [z, z]
    radius_in: np.ndarray  # [k]
    radius_out: np.ndarray  # [k]
    knots_in: np.ndarray  # [z, k]
    knots_out: np.ndarray  # [k]

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> NumpyEncoder:
        """From a weights file's tensors (names and shapes already checked against state_shapes)."""
        get = lambda name: np.asarray(state[name], dtype=np.float64)  # noqa: E731
        return cls(
            conv1_w=get("encoder.net.0.weight"),
            conv1_b=get("encoder.net.0.bias"),
            conv2_w=get("encoder.net.1.weight"),
            conv2_b=get("encoder.net.1.bias"),
            linear_w=get("encoder.net.3.weight"),
            linear_b=get("encoder.net.3.bias"),
            mean=get("calibration.mean"),
            whiten=get("calibration.whiten"),
            radius_in=get("calibration.radius_in"),
            radius_out=get("calibration.radius_out"),
            knots_in=get("calibration.knots_in"),
            knots_out=get("calibration.knots_out"),
        )

    def raw(self, x: np.ndarray) -> np.ndarray:
        """[B, C, S, S] stacks -> [B, z] uncalibrated outputs (DogEncoder.forward)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 4 or x.shape[1:] != (CHANNELS, GRID, GRID):
            raise ValueError(f"expected [B, {CHANNELS}, {GRID}, {GRID}] stacks, got {x.shape}")
        b, c, s = x.shape[0], CHANNELS, GRID
        s1, s2 = s // PATCH1, s // (PATCH1 * PATCH2)
        w1, w2 = self.conv1_w.shape[0], self.conv2_w.shape[0]
        # conv 1: [B, C, s1, 4, s1, 4] -> patches [B, s1, s1, C, 4, 4] (the kernel's index order)
        p1 = x.reshape(b, c, s1, PATCH1, s1, PATCH1).transpose(0, 2, 4, 1, 3, 5)
        h1 = p1.reshape(b * s1 * s1, -1) @ self.conv1_w.reshape(w1, -1).T + self.conv1_b
        h1 = h1.reshape(b, s1, s1, w1)  # [B, row, col, w1]
        # conv 2: [B, s2, 2, s2, 2, w1] -> patches [B, s2, s2, w1, 2, 2]
        p2 = h1.reshape(b, s2, PATCH2, s2, PATCH2, w1).transpose(0, 1, 3, 5, 2, 4)
        h2 = p2.reshape(b * s2 * s2, -1) @ self.conv2_w.reshape(w2, -1).T + self.conv2_b
        flat = h2.reshape(b, s2, s2, w2).transpose(0, 3, 1, 2).reshape(b, -1)  # torch's Flatten order
        return flat @ self.linear_w.T + self.linear_b

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """[B, z] raw outputs -> [B, z] z (Calibration.forward)."""
        w = (np.asarray(raw, dtype=np.float64) - self.mean) @ self.whiten
        r = np.linalg.norm(w, axis=1, keepdims=True)
        w = w * interp(r, self.radius_in[None], self.radius_out) / np.maximum(r, 1e-12)
        return interp(w, self.knots_in, self.knots_out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[B, C, S, S] canonical stacks -> [B, z] float64 dog vectors."""
        return self.calibrate(self.raw(x))

    def encode(self, stack: np.ndarray) -> np.ndarray:
        """One canonical stack [C, S, S] -> z [z_dim] float64."""
        return self(np.asarray(stack)[None])[0]
