"""The embedded default renderer: a parametric cartoon dog portrait that needs no weights.

Why parametric: a person compares fingerprints by eye, so nearby vectors must give nearby dogs and
unrelated vectors must give unrelated dogs. Every feature below is ``Phi(w_k . z)`` for a fixed
row ``w_k`` of an orthonormal projection, so (i) every coordinate of z moves the portrait, (ii) for
z ~ N(0, I) each feature is uniform on (0, 1), and (iii) the feature map is Lipschitz with constant
``Phi'(0) = 1/sqrt(2 pi)`` because the rows are orthonormal. Drawing then maps features to shapes
and colours through continuous functions only (colour paths, blends, opacity ramps): no feature is
ever chosen by a threshold, so no small change of z flips an ear or a colour.

Why bit-exact: the projection uses exactly rounded sums (``math.fsum``) rather than BLAS, and the
features are snapped to a 2**-16 grid before drawing, so platform-level last-bit differences in
``erf``/``cos`` cannot reach the pixels except with negligible probability.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from huref.errors import RenderError
from huref.render.base import RENDERERS, Z_DIM

# One name per projection row; the drawing code reads features by name.
FEATURES: tuple[str, ...] = (
    "head_width", "head_height", "jowls", "chin_taper",
    "ear_flop", "ear_size", "ear_spread", "ear_width", "ear_tip_round", "ear_dark", "ear_inner",
    "snout_length", "snout_width", "nose_size", "nose_colour", "smile", "tongue",
    "eye_size", "eye_spacing", "eye_height", "eye_colour", "brows",
    "coat", "coat_grey", "second", "muzzle_light",
    "blaze", "blaze_width", "mask", "patch", "patch_side", "chest", "chest_width", "spots",
    "spot_phase",
    "neck_width", "bg_hue", "halo_hue", "halo_size", "collar_hue",
)  # fmt: skip
PROJECTION_SEED = 0x5EED_D06  # fixed forever: changing it changes every dog ever rendered
LIPSCHITZ = 1.0 / math.sqrt(2.0 * math.pi)  # max |dPhi/dp|; rows of the projection are orthonormal
_GRID = 2.0**16  # features are snapped to this grid (see module docstring)

# Colour paths: a feature in (0, 1) walks along the stops, so neighbours on the path are similar.
Colour = tuple[int, int, int]
COAT_PATH: tuple[Colour, ...] = (
    (243, 230, 200), (222, 178, 112), (190, 108, 52),  # cream, tan, red
    (112, 70, 40), (38, 34, 34),  # brown, black
)  # fmt: skip
# Greys (silver, blue, charcoal) come from desaturating the coat ("coat_grey"), not from a stop
# after black: a path that folds back towards its middle makes unrelated dogs look alike.
SECOND_PATH: tuple[Colour, ...] = (
    (30, 26, 26), (92, 56, 32), (176, 96, 44), (214, 170, 104), (120, 118, 124),
)  # black, liver, red, tan, blue-grey
EYE_PATH: tuple[Colour, ...] = ((58, 34, 20), (112, 66, 30), (186, 128, 46), (96, 150, 200))
FRAME_ENDS: tuple[Colour, Colour] = ((120, 160, 214), (236, 178, 116))  # dusk blue, apricot
HALO_ENDS: tuple[Colour, Colour] = ((196, 240, 206), (250, 200, 232))  # mint, pink
LIGHT: Colour = (250, 246, 236)  # the white of blazes, chests and light muzzles
PINK: Colour = (232, 118, 136)


@lru_cache(maxsize=1)
def projection() -> np.ndarray:
    """The fixed [len(FEATURES), 512] projection with orthonormal rows (Gram-Schmidt, fsum dots).

    Gaussian rows from a constant seed spread every feature over all 512 coordinates; the
    exactly rounded dots make the matrix identical on every machine.
    """
    rows = np.random.default_rng(PROJECTION_SEED).standard_normal((len(FEATURES), Z_DIM))
    basis: list[np.ndarray] = []
    for row in rows:
        v = row.copy()
        for u in basis:
            v = v - math.fsum((v * u).tolist()) * u
        basis.append(v / math.sqrt(math.fsum((v * v).tolist())))
    return np.stack(basis)  # [K, 512]


def check_vector(z: np.ndarray) -> np.ndarray:
    """The vector as float64 [512], or RenderError naming what is wrong with it."""
    try:
        v = np.asarray(z, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RenderError(f"latent vector is not numeric: {exc}") from None
    if v.shape != (Z_DIM,):
        raise RenderError(f"latent vector must have shape ({Z_DIM},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise RenderError("latent vector contains NaN or infinite values")
    return v


def feature_vector(z: np.ndarray) -> np.ndarray:
    """Features in (0, 1), one per name in FEATURES: ``Phi(W z)`` snapped to a 2**-16 grid."""
    v = check_vector(z)
    w = projection()
    p = [math.fsum((w[k] * v).tolist()) for k in range(len(FEATURES))]
    u = [0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) for x in p]
    return np.round(np.asarray(u) * _GRID) / _GRID


def features(z: np.ndarray) -> dict[str, float]:
    """The same features by name, for the drawing code and for people reading a portrait."""
    return dict(zip(FEATURES, feature_vector(z).tolist(), strict=True))


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def _ramp(t: float, lo: float, hi: float) -> float:
    """0 below lo, 1 above hi, linear between: markings fade in instead of switching on."""
    return min(1.0, max(0.0, (t - lo) / (hi - lo)))


def _mix(c1: Sequence[float], c2: Sequence[float], t: float) -> Colour:
    r, g, b = (round(x + (y - x) * t) for x, y in zip(c1, c2, strict=True))
    return (r, g, b)


def _path(stops: Sequence[Colour], t: float) -> Colour:
    """The point at fraction t of a polyline through the stops, measured by RGB arc length.

    Arc length, not stop count: otherwise a short hop (cream to tan) and a long one (black to
    grey) would take the same step of t and the long one would change a dog too fast.
    """
    seg = [math.dist(p, q) for p, q in zip(stops, stops[1:], strict=False)]
    x = min(max(t, 0.0), 1.0) * sum(seg)
    for i, length in enumerate(seg):
        if x <= length or i == len(seg) - 1:
            return _mix(stops[i], stops[i + 1], min(1.0, x / length))
        x -= length
    raise AssertionError("unreachable")


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(255 * r), round(255 * g), round(255 * b))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # [n, 2]


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int = 24):
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


class _Canvas:
    """Supersampled drawing surface addressed in design units ([0, 1]^2)."""

    def __init__(self, size: int, background: Colour) -> None:
        self.size = size
        self.img = Image.new("RGB", (size, size), background)

    def _px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in pts * self.size]

    def _box(self, px: list[tuple[float, float]]) -> tuple[int, int, int, int]:
        xs, ys = [p[0] for p in px], [p[1] for p in px]
        x0, y0 = max(0, math.floor(min(xs)) - 1), max(0, math.floor(min(ys)) - 1)
        x1, y1 = min(self.size, math.ceil(max(xs)) + 2), min(self.size, math.ceil(max(ys)) + 2)
        return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)

    def mask(self, pts: np.ndarray, alpha: float = 1.0) -> Image.Image:
        """A full-canvas coverage mask (for clipping later shapes to this one)."""
        m = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(m).polygon(self._px(pts), fill=round(255 * alpha))
        return m

    def fill(
        self, pts: np.ndarray, colour: Colour, alpha: float = 1.0, clip: Image.Image | None = None
    ) -> None:
        """Paint a polygon at opacity alpha; only its bounding box is touched, for speed."""
        level = round(255 * alpha)
        if level <= 0:
            return
        px = self._px(pts)
        box = self._box(px)
        m = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
        ImageDraw.Draw(m).polygon([(x - box[0], y - box[1]) for x, y in px], fill=level)
        if clip is not None:
            m = ImageChops.multiply(m, clip.crop(box))
        self.img.paste(colour, box, m)

    def stroke(self, pts: np.ndarray, colour: Colour, width: float, closed: bool = False) -> None:
        px = self._px(np.concatenate([pts, pts[:1]]) if closed else pts)
        ImageDraw.Draw(self.img).line(px, fill=colour, width=max(1, round(width * self.size)), joint="curve")


class SketchRenderer:
    """Parametric dog portraits: deterministic, weight-free, smooth in z."""

    name = "sketch"

    def __init__(self, size: int = 512, supersample: int = 2) -> None:
        self.size = size
        self.supersample = supersample  # drawn this many times larger, then LANCZOS-reduced

    def render(self, z: np.ndarray) -> Image.Image:
        f = features(z)
        img = _draw(f, self.size * self.supersample)
        return img.resize((self.size, self.size), Image.Resampling.LANCZOS)


def _draw(f: dict[str, float], size: int) -> Image.Image:
    """The portrait for one feature dict; all geometry in design units ([0, 1]^2)."""
    # Backgrounds blend along straight lines in RGB (a hue circle bends back on itself, so far
    # hues would look no further apart than middling ones). The frame and the halo behind the
    # head take one feature each: features that share no pixels add up in a pixel distance,
    # where several stacked on the same pixels would mask one another.
    cv = _Canvas(size, _mix(FRAME_ENDS[0], FRAME_ENDS[1], f["bg_hue"]))
    halo = _ellipse(0.5, 0.5, _lerp(0.36, 0.47, f["halo_size"]), _lerp(0.36, 0.47, f["halo_size"]), 120)
    cv.fill(halo, _mix(HALO_ENDS[0], HALO_ENDS[1], f["halo_hue"]))

    coat = _path(COAT_PATH, f["coat"])
    luma = 0.3 * coat[0] + 0.59 * coat[1] + 0.11 * coat[2]
    coat = _mix(coat, (luma, luma, luma + 6), 0.9 * _ramp(f["coat_grey"], 0.4, 1.0))
    second = _path(SECOND_PATH, f["second"])
    ink = _mix(coat, (20, 16, 16), 0.72)  # outlines: a darker shade of the coat, not pure black
    line = 0.006

    cx, cy = 0.5, 0.46
    a = _lerp(0.19, 0.27, f["head_width"])  # head half-width
    b = _lerp(0.18, 0.25, f["head_height"])  # head half-height

    def head_point(theta: np.ndarray) -> np.ndarray:
        c, s = np.cos(theta), np.sin(theta)
        low = np.clip(s, 0.0, None)  # jowls and chin act on the lower half only
        xf = 1.0 - 0.32 * f["chin_taper"] * low**2 + 0.24 * f["jowls"] * np.sin(2 * theta) ** 2 * low
        return np.stack([cx + a * c * xf, cy + b * s * (1.0 + 0.1 * low)], axis=-1)

    head = head_point(np.linspace(-math.pi / 2, 1.5 * math.pi, 180, endpoint=False))

    # Neck and shoulders, with collar and chest patch clipped to them.
    nw = a * _lerp(0.5, 0.8, f["neck_width"])
    top, bottom = cy + 0.3 * b, 1.02
    left = _bezier(*(np.array(p) for p in [(cx - nw, top), (cx - nw, cy + b + 0.1), (cx - 0.3, bottom - 0.14), (cx - 0.38, bottom)]))
    body = np.concatenate([left, left[::-1] * [-1, 1] + [2 * cx, 0]])
    cv.fill(body, coat)
    body_mask = cv.mask(body)
    yc = cy + b + 0.02
    bib_w = _lerp(0.06, 0.16, f["chest_width"])
    bib = _bezier(*(np.array(p) for p in [(cx, yc), (cx - bib_w * 0.6, yc), (cx - bib_w, bottom - 0.1), (cx - bib_w * 1.1, bottom)]))
    bib = np.concatenate([bib, bib[::-1] * [-1, 1] + [2 * cx, 0]])
    cv.fill(bib, LIGHT, _ramp(f["chest"], 0.35, 0.95), body_mask)
    collar = np.concatenate([_ellipse(cx, yc, nw * 1.3, 0.06, 60)[30:], _ellipse(cx, yc + 0.035, nw * 1.3, 0.06, 60)[:30]])
    cv.fill(collar, _hsv(0.8 * f["collar_hue"], 0.72, 0.78), 1.0, body_mask)
    cv.stroke(left, ink, line)
    cv.stroke(left * [-1, 1] + [2 * cx, 0], ink, line)

    # Head, then markings clipped to it.
    cv.fill(head, coat)
    head_mask = cv.mask(head)
    eye_dx = a * _lerp(0.32, 0.52, f["eye_spacing"])
    eye_y = cy - b * _lerp(0.02, 0.3, f["eye_height"])
    eye_r = a * _lerp(0.10, 0.17, f["eye_size"])
    phase = f["spot_phase"] * 2 * math.pi
    for i in range(9):  # fixed spot sites that drift and swell with spot_phase
        ang = i * 2.4 + 0.9 * math.sin(phase + i)
        rad = 0.55 + 0.3 * math.sin(i * 1.9 + 0.8 * math.cos(phase - i))
        r = a * (0.07 + 0.05 * math.sin(phase * 2 + i * 1.3) ** 2)
        cv.fill(_ellipse(cx + a * rad * math.cos(ang), cy + b * rad * math.sin(ang), r, r * 0.85, 36), second, _ramp(f["spots"], 0.55, 0.85), head_mask)
    patch_a = _ramp(f["patch"], 0.5, 0.8)
    for side, w in ((-1, min(1.0, max(0.0, 1.5 - 2 * f["patch_side"]))), (1, min(1.0, max(0.0, 2 * f["patch_side"] - 0.5)))):
        cv.fill(_ellipse(cx + side * eye_dx * 1.05, eye_y - 0.01, eye_r * 2.4, eye_r * 2.1), second, patch_a * w, head_mask)
    bw = a * _lerp(0.06, 0.22, f["blaze_width"])
    blaze = np.array([(cx - bw * 0.5, cy - b * 1.05), (cx + bw * 0.5, cy - b * 1.05), (cx + bw, cy + 0.2 * b), (cx - bw, cy + 0.2 * b)])
    cv.fill(blaze, LIGHT, _ramp(f["blaze"], 0.45, 0.8), head_mask)
    for side in (-1, 1):  # tan "eyebrow" spots, as on rottweilers and dobermanns
        cv.fill(_ellipse(cx + side * eye_dx * 0.95, eye_y - eye_r * 2.0, eye_r * 0.75, eye_r * 0.5, 36), (200, 138, 70), _ramp(f["brows"], 0.55, 0.85), head_mask)

    cv.stroke(head, ink, line, closed=True)

    # Ears, drawn over the head outline: one construction whose control points blend from erect-pointed to floppy-hanging.
    flop = f["ear_flop"]
    ear_len = b * _lerp(0.8, 1.35, f["ear_size"]) * (1.15 - 0.15 * flop)
    phi = _lerp(0.45, 0.9, f["ear_spread"]) + 0.3 * flop  # base: radians from the head's top
    delta = _lerp(0.22, 0.38, f["ear_width"])
    ear_rgb = _mix(coat, second, 0.8 * f["ear_dark"])
    roundness = min(1.0, _lerp(0.0, 0.4, f["ear_tip_round"]) + 0.8 * flop)  # erect ears: pointed
    for s in (-1.0, 1.0):
        theta = -math.pi / 2 + s * phi
        b_in, b_out = head_point(np.array([theta - s * delta, theta + s * delta]))
        mid = (b_in + b_out) / 2
        psi = s * _lerp(0.2, 0.6, f["ear_spread"])
        tip_up = mid + ear_len * np.array([math.sin(psi), -math.cos(psi)])
        tip_down = np.array([b_out[0] + s * a * 0.06, mid[1] + ear_len * 1.3])
        tip = tip_up + (tip_down - tip_up) * flop
        u = (tip - mid) / np.linalg.norm(tip - mid)
        half = np.linalg.norm(b_out - b_in) / 2 * (0.85 + 0.75 * flop)
        n_in, n_out = (b_in - mid) / np.linalg.norm(b_in - mid), (b_out - mid) / np.linalg.norm(b_out - mid)
        bulge = half * (0.3 + 0.6 * flop)

        def edge(scale: float, centre: np.ndarray) -> np.ndarray:
            p = [b_in, b_in + u * 0.45 * ear_len + n_in * bulge, tip + (-u * 0.2 * ear_len) * (1 - roundness) + n_in * half * roundness]
            q = [tip + (-u * 0.2 * ear_len) * (1 - roundness) + n_out * half * roundness, b_out + u * 0.45 * ear_len + n_out * bulge, b_out]
            pts = np.concatenate([_bezier(p[0], p[1], p[2], tip), _bezier(tip, q[0], q[1], q[2])])
            return centre + (pts - centre) * scale

        outer = edge(1.0, mid)
        cv.fill(outer, ear_rgb)
        inner_alpha = (1 - flop) ** 2 * _lerp(0.35, 0.9, f["ear_inner"])
        cv.fill(edge(0.6, mid + u * 0.4 * ear_len), _mix(PINK, ear_rgb, 0.45), inner_alpha)
        cv.stroke(outer, ink, line)

    # Eyes: dark rim, coloured iris, pupil and a highlight.
    iris = _path(EYE_PATH, f["eye_colour"])
    for side in (-1, 1):
        ex = cx + side * eye_dx
        cv.fill(_ellipse(ex, eye_y, eye_r, eye_r * 1.08), (24, 18, 16))
        cv.fill(_ellipse(ex, eye_y, eye_r * 0.78, eye_r * 0.85), iris)
        cv.fill(_ellipse(ex, eye_y + eye_r * 0.05, eye_r * 0.45, eye_r * 0.5), (16, 12, 12))
        cv.fill(_ellipse(ex - eye_r * 0.3, eye_y - eye_r * 0.35, eye_r * 0.22, eye_r * 0.22, 24), (255, 255, 255))

    # Muzzle, mask, nose, mouth, tongue.
    my = cy + b * _lerp(0.42, 0.68, f["snout_length"])
    mw = a * _lerp(0.4, 0.62, f["snout_width"])
    mh = b * _lerp(0.36, 0.6, f["snout_length"])
    muzzle = _ellipse(cx, my, mw, mh)
    cv.fill(muzzle, _mix(coat, LIGHT, _lerp(0.0, 0.85, f["muzzle_light"])))
    cv.fill(_ellipse(cx, my - mh * 0.1, mw * 1.12, mh * 1.12), second, 0.9 * _ramp(f["mask"], 0.5, 0.85))
    cv.stroke(muzzle[8:29], ink, line * 0.8)
    mouth_y = my + mh * 0.32
    curl = _lerp(0.1, 0.55, f["smile"]) * mh
    tongue_len = mh * 1.1 * _ramp(f["tongue"], 0.3, 1.0)
    if tongue_len > 0:
        tw = mw * 0.34
        tongue = np.concatenate([[(cx - tw, mouth_y)], _ellipse(cx, mouth_y + tongue_len * 0.55, tw, tongue_len * 0.55 + 0.004)[:37], [(cx + tw, mouth_y)]])
        cv.fill(tongue, PINK)
        cv.stroke(np.array([(cx, mouth_y), (cx, mouth_y + tongue_len * 0.7)]), (196, 80, 100), line * 0.6)
    for s in (-1, 1):
        cv.stroke(_bezier(*(np.array(p) for p in [(cx, mouth_y), (cx + s * mw * 0.2, mouth_y + curl), (cx + s * mw * 0.55, mouth_y + curl), (cx + s * mw * 0.7, mouth_y - curl * 0.2)])), (28, 20, 20), line)
    nose_y = my - mh * 0.42
    nr = a * _lerp(0.13, 0.26, f["nose_size"])
    nose_rgb = _mix((22, 18, 18), (112, 62, 44), f["nose_colour"] ** 2)  # mostly black, some liver
    nose = _bezier(np.array([cx - nr, nose_y - nr * 0.35]), np.array([cx - nr * 1.1, nose_y + nr * 0.7]), np.array([cx - nr * 0.3, nose_y + nr * 0.75]), np.array([cx, nose_y + nr * 0.75]))
    nose = np.concatenate([nose, nose[::-1] * [-1, 1] + [2 * cx, 0], _bezier(np.array([cx + nr, nose_y - nr * 0.35]), np.array([cx + nr * 0.6, nose_y - nr * 0.75]), np.array([cx - nr * 0.6, nose_y - nr * 0.75]), np.array([cx - nr, nose_y - nr * 0.35]))])
    cv.fill(nose, nose_rgb)
    cv.stroke(np.array([(cx, nose_y + nr * 0.7), (cx, mouth_y)]), (28, 20, 20), line)
    cv.fill(_ellipse(cx - nr * 0.35, nose_y - nr * 0.3, nr * 0.3, nr * 0.16, 24), (236, 236, 236), 0.75)
    return cv.img


if "sketch" not in RENDERERS:  # the module may be imported under two names in tests
    RENDERERS.add("sketch", SketchRenderer)
