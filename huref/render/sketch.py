"""The embedded default renderer: a parametric cartoon dog portrait that needs no weights.

Why parametric: a person compares fingerprints by eye, so nearby vectors must give nearby dogs and
unrelated vectors must give unrelated dogs. Every feature below is ``Phi(w_k . z)`` for a fixed
row ``w_k`` of an orthonormal projection, so (i) every coordinate of z moves the portrait, (ii) for
z ~ N(0, I) each feature is uniform on (0, 1), and (iii) the feature map is Lipschitz with constant
``Phi'(0) = 1/sqrt(2 pi)`` because the rows are orthonormal. Drawing then maps features to shapes
and colours through continuous functions only (colour paths, blends, opacity ramps): no feature is
ever chosen by a threshold, so no small change of z flips an ear or a colour.

Why (nearly) bit-exact everywhere: the projection is built and applied with exactly rounded sums
(``math.fsum``) instead of BLAS, whose summation order varies between machines, and features are
snapped to a 2**-16 grid, so a last-bit difference in a C library's ``erf`` changes a feature only
if it straddles a grid point; drawing is then Pillow rasterisation of float coordinates. Pixels
are therefore identical wherever Pillow's rasteriser is; PNG bytes also need the same zlib.
"""

from __future__ import annotations

import colorsys
import itertools
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
SECOND_PATH: tuple[Colour, ...] = (  # markings: black, liver, red, tan, blue-grey
    (30, 26, 26), (92, 56, 32), (176, 96, 44), (214, 170, 104), (120, 118, 124),
)  # fmt: skip
EYE_PATH: tuple[Colour, ...] = ((58, 34, 20), (112, 66, 30), (186, 128, 46), (96, 150, 200))
FRAME_PATH: tuple[Colour, ...] = ((112, 150, 216), (110, 196, 170), (238, 176, 104))  # blue-apricot
HALO_PATH: tuple[Colour, ...] = ((192, 238, 250), (246, 244, 184), (250, 196, 226))  # ice-pink
# The nose in units of its half-width: the left half of its lower edge, then its upper edge.
NOSE_LOWER = ((-1.0, -0.35), (-1.1, 0.7), (-0.3, 0.75), (0.0, 0.75))
NOSE_UPPER = ((1.0, -0.35), (0.6, -0.75), (-0.6, -0.75), (-1.0, -0.35))
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


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(255 * r), round(255 * g), round(255 * b))


def _path(stops: Sequence[Colour], t: float) -> Colour:
    """The point at fraction t of a polyline through the stops, measured by RGB arc length.

    Arc length, not stop count: otherwise a short hop (cream to tan) and a long one (brown to
    black) would take the same step of t, and the long one would change a dog too fast.
    """
    seg = [math.dist(p, q) for p, q in itertools.pairwise(stops)]
    x = min(max(t, 0.0), 1.0) * sum(seg)
    for i, length in enumerate(seg[:-1]):
        if x <= length:
            return _mix(stops[i], stops[i + 1], x / length)
        x -= length
    return _mix(stops[-2], stops[-1], min(1.0, x / seg[-1]))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # [n, 2]


def _bezier(ctrl: Sequence[Sequence[float]] | np.ndarray, n: int = 24) -> np.ndarray:
    """Points [n, 2] along the cubic Bezier curve with 4 control points [4, 2]."""
    p = np.asarray(ctrl, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    s = 1.0 - t
    return s**3 * p[0] + 3 * s**2 * t * p[1] + 3 * s * t**2 * p[2] + t**3 * p[3]


def _mirrored(half: np.ndarray, cx: float) -> np.ndarray:
    """A left half-outline [n, 2] closed with its mirror image about x = cx."""
    return np.concatenate([half, half[::-1] * [-1, 1] + [2 * cx, 0]])


class _Canvas:
    """Supersampled drawing surface addressed in design units ([0, 1]^2)."""

    def __init__(self, size: int, background: Colour) -> None:
        self.size = size
        self.img = Image.new("RGB", (size, size), background)

    def _px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in pts * self.size]

    def mask(self, pts: np.ndarray) -> Image.Image:
        """A full-canvas coverage mask, for clipping later shapes to this one."""
        m = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(m).polygon(self._px(pts), fill=255)
        return m

    def fill(
        self, pts: np.ndarray, colour: Colour, alpha: float = 1.0, clip: Image.Image | None = None
    ) -> None:
        """Paint a polygon at opacity alpha; only its bounding box is touched, for speed."""
        level = round(255 * alpha)
        if level <= 0:
            return
        px = self._px(pts)
        xs, ys = [p[0] for p in px], [p[1] for p in px]
        x0, y0 = max(0, math.floor(min(xs)) - 1), max(0, math.floor(min(ys)) - 1)
        x1 = max(x0 + 1, min(self.size, math.ceil(max(xs)) + 2))
        y1 = max(y0 + 1, min(self.size, math.ceil(max(ys)) + 2))
        m = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(m).polygon([(x - x0, y - y0) for x, y in px], fill=level)
        if clip is not None:
            m = ImageChops.multiply(m, clip.crop((x0, y0, x1, y1)))
        self.img.paste(colour, (x0, y0, x1, y1), m)

    def stroke(self, pts: np.ndarray, colour: Colour, width: float, closed: bool = False) -> None:
        px = self._px(np.concatenate([pts, pts[:1]]) if closed else pts)
        w = max(1, round(width * self.size))
        ImageDraw.Draw(self.img).line(px, fill=colour, width=w, joint="curve")


class _Portrait:
    """One dog drawn from one feature dict, back to front; all geometry in design units."""

    LINE = 0.006  # outline width
    MOUTH: Colour = (28, 20, 20)

    def __init__(self, f: dict[str, float], size: int) -> None:
        self.f = f
        # Backgrounds follow gently bent colour paths (a hue circle bends back on itself, so far
        # hues would look no further apart than middling ones). The frame and the halo behind
        # the head take one feature each: features that share no pixels add up in a pixel
        # distance, where several stacked on the same pixels would mask one another.
        self.cv = _Canvas(size, _path(FRAME_PATH, f["bg_hue"]))
        coat = _path(COAT_PATH, f["coat"])
        luma = 0.3 * coat[0] + 0.59 * coat[1] + 0.11 * coat[2]
        self.coat = _mix(coat, (luma, luma, luma + 6), 0.9 * _ramp(f["coat_grey"], 0.4, 1.0))
        self.second = _path(SECOND_PATH, f["second"])
        self.ink = _mix(self.coat, (20, 16, 16), 0.72)  # outlines: a dark shade of the coat
        self.cx, self.cy = 0.5, 0.46
        self.a = _lerp(0.19, 0.27, f["head_width"])  # head half-width
        self.b = _lerp(0.18, 0.25, f["head_height"])  # head half-height
        self.eye_dx = self.a * _lerp(0.32, 0.52, f["eye_spacing"])
        self.eye_y = self.cy - self.b * _lerp(0.02, 0.3, f["eye_height"])
        self.eye_r = self.a * _lerp(0.10, 0.17, f["eye_size"])

    def head_point(self, theta: np.ndarray) -> np.ndarray:
        """Points [n, 2] on the head outline; theta = -pi/2 is the top, y grows downwards."""
        f, c, s = self.f, np.cos(theta), np.sin(theta)
        low = np.clip(s, 0.0, None)  # jowls and chin act on the lower half only
        jowl = 0.24 * f["jowls"] * np.sin(2 * theta) ** 2
        xf = 1.0 - 0.32 * f["chin_taper"] * low**2 + jowl * low
        return np.stack([self.cx + self.a * c * xf, self.cy + self.b * s * (1 + 0.1 * low)], -1)

    def draw(self) -> Image.Image:
        r = _lerp(0.36, 0.47, self.f["halo_size"])
        self.cv.fill(_ellipse(0.5, 0.5, r, r, 120), _path(HALO_PATH, self.f["halo_hue"]))
        self.body()
        self.head()
        for side in (-1.0, 1.0):
            self.ear(side)
        self.eyes()
        self.muzzle()
        return self.cv.img

    def body(self) -> None:
        """Neck and shoulders, with the chest bib and the collar clipped to them."""
        f, cv, cx, cy, b = self.f, self.cv, self.cx, self.cy, self.b
        nw = self.a * _lerp(0.5, 0.8, f["neck_width"])
        left = _bezier(
            [(cx - nw, cy + 0.3 * b), (cx - nw, cy + b + 0.1), (cx - 0.3, 0.88), (cx - 0.38, 1.02)]
        )
        body = _mirrored(left, cx)
        cv.fill(body, self.coat)
        clip = cv.mask(body)
        yc, bw = cy + b + 0.02, _lerp(0.06, 0.16, f["chest_width"])
        bib = _bezier([(cx, yc), (cx - bw * 0.6, yc), (cx - bw, 0.92), (cx - bw * 1.1, 1.02)])
        cv.fill(_mirrored(bib, cx), LIGHT, _ramp(f["chest"], 0.35, 0.95), clip)
        band = np.concatenate([_ellipse(cx, yc + dy, nw * 1.3, 0.06, 60) for dy in (0, 0.035)])
        cv.fill(band[30:90], _hsv(0.8 * f["collar_hue"], 0.72, 0.78), 1.0, clip)
        cv.stroke(body[: len(left)], self.ink, self.LINE)
        cv.stroke(body[len(left) :], self.ink, self.LINE)

    def head(self) -> None:
        """The head, then its markings clipped to it, then its outline."""
        f, cv, cx, cy, a, b = self.f, self.cv, self.cx, self.cy, self.a, self.b
        ex, ey, er = self.eye_dx, self.eye_y, self.eye_r
        head = self.head_point(np.linspace(-math.pi / 2, 1.5 * math.pi, 180, endpoint=False))
        cv.fill(head, self.coat)
        clip = cv.mask(head)
        phase = f["spot_phase"] * 2 * math.pi
        for i in range(9):  # fixed spot sites that drift and swell as spot_phase turns
            ang = i * 2.4 + 0.9 * math.sin(phase + i)
            rad = 0.55 + 0.3 * math.sin(i * 1.9 + 0.8 * math.cos(phase - i))
            r = a * (0.07 + 0.05 * math.sin(phase * 2 + i * 1.3) ** 2)
            x, y = cx + a * rad * math.cos(ang), cy + b * rad * math.sin(ang)
            spot = _ellipse(x, y, r, r * 0.85, 36)
            cv.fill(spot, self.second, _ramp(f["spots"], 0.55, 0.85), clip)
        # Eye patches: patch_side slides one patch from the left eye to the right one.
        sides = ((-1, 1.5 - 2 * f["patch_side"]), (1, 2 * f["patch_side"] - 0.5))
        for side, w in sides:
            patch = _ellipse(cx + side * ex * 1.05, ey - 0.01, er * 2.4, er * 2.1)
            cv.fill(patch, self.second, _ramp(f["patch"], 0.5, 0.8) * min(1.0, max(0.0, w)), clip)
        bw, top, low = a * _lerp(0.06, 0.22, f["blaze_width"]), cy - 1.05 * b, cy + 0.2 * b
        blaze = np.array([(cx - bw / 2, top), (cx + bw / 2, top), (cx + bw, low), (cx - bw, low)])
        cv.fill(blaze, LIGHT, _ramp(f["blaze"], 0.45, 0.8), clip)
        for side in (-1, 1):  # tan "eyebrow" spots, as on rottweilers and dobermanns
            brow = _ellipse(cx + side * ex * 0.95, ey - er * 2.0, er * 0.75, er * 0.5, 36)
            cv.fill(brow, (200, 138, 70), _ramp(f["brows"], 0.55, 0.85), clip)
        cv.stroke(head, self.ink, self.LINE, closed=True)

    def ear(self, s: float) -> None:
        """One ear (s = -1 left, +1 right), drawn over the head outline.

        One construction for every breed: the base sits on the head outline, and the direction,
        length, width and tip roundness blend continuously from erect-pointed (ear_flop = 0) to
        floppy-hanging (ear_flop = 1), so no value of z switches ear type abruptly.
        """
        f, a, b = self.f, self.a, self.b
        flop = f["ear_flop"]
        length = b * _lerp(0.9, 1.45, f["ear_size"]) * (1.1 + 0.2 * flop)
        half = a * _lerp(0.18, 0.3, f["ear_width"]) * (0.85 + 0.2 * flop)  # base half-width
        anchor = self.head_point(
            np.array(-math.pi / 2 + s * (_lerp(0.5, 1.0, f["ear_spread"]) + 0.45 * flop))
        )
        head_c = np.array([self.cx, self.cy])
        inward = (head_c - anchor) / np.linalg.norm(head_c - anchor)
        mid = anchor + inward * half * 0.6  # sunk into the head, so the flat base never shows
        # The ear swings outwards from up (tilted by ear_spread) to hanging down, with its base
        # turning along: a tip slid from up to down would pass the base and give stubby ears.
        psi = s * _lerp(_lerp(0.2, 0.6, f["ear_spread"]), math.pi - 0.2, flop)  # from vertical
        u = np.array([math.sin(psi), -math.cos(psi)])
        w = s * np.array([-u[1], u[0]])  # across the ear, outwards while it stands up
        tip = mid + length * u
        bulge = half * (0.3 + 0.4 * flop)
        # Round tips arrive across the ear axis, pointed ones along it.
        rnd = min(1.0, _lerp(0.0, 0.4, f["ear_tip_round"]) + 0.8 * flop)
        sides = []
        for n in (-w, w):
            base, near_tip = mid + n * half, tip - u * 0.2 * length * (1 - rnd) + n * half * rnd
            sides.append([base, base + u * 0.45 * length + n * bulge, near_tip, tip])
        outline = np.concatenate([_bezier(sides[0]), _bezier(sides[1][::-1])])
        colour = _mix(self.coat, self.second, 0.8 * f["ear_dark"])
        self.cv.fill(outline, colour)
        centre = mid + u * 0.4 * length
        inner_alpha = (1 - flop) ** 2 * _lerp(0.35, 0.9, f["ear_inner"])  # hidden as ears fold
        self.cv.fill(centre + (outline - centre) * 0.6, _mix(PINK, colour, 0.45), inner_alpha)
        self.cv.stroke(outline, self.ink, self.LINE)

    def eyes(self) -> None:
        """Dark rim, coloured iris, pupil and a highlight."""
        iris, r, y = _path(EYE_PATH, self.f["eye_colour"]), self.eye_r, self.eye_y
        for side in (-1, 1):
            x = self.cx + side * self.eye_dx
            self.cv.fill(_ellipse(x, y, r, r * 1.08), (24, 18, 16))
            self.cv.fill(_ellipse(x, y, r * 0.78, r * 0.85), iris)
            self.cv.fill(_ellipse(x, y + r * 0.05, r * 0.45, r * 0.5), (16, 12, 12))
            glint = _ellipse(x - r * 0.3, y - r * 0.35, r * 0.22, r * 0.22, 24)
            self.cv.fill(glint, (255, 255, 255))

    def muzzle(self) -> None:
        """Muzzle, dark mask, tongue, mouth and nose."""
        f, cv, cx = self.f, self.cv, self.cx
        my = self.cy + self.b * _lerp(0.42, 0.68, f["snout_length"])
        mw = self.a * _lerp(0.4, 0.62, f["snout_width"])
        mh = self.b * _lerp(0.36, 0.6, f["snout_length"])
        muzzle = _ellipse(cx, my, mw, mh)
        cv.fill(muzzle, _mix(self.coat, LIGHT, _lerp(0.0, 0.85, f["muzzle_light"])))
        mask = _ellipse(cx, my - mh * 0.1, mw * 1.12, mh * 1.12)
        cv.fill(mask, self.second, 0.9 * _ramp(f["mask"], 0.5, 0.85))
        cv.stroke(muzzle[8:29], self.ink, self.LINE * 0.8)  # the chin line
        mouth_y, curl = my + mh * 0.32, _lerp(0.1, 0.55, f["smile"])
        tongue_len = mh * 1.1 * _ramp(f["tongue"], 0.3, 1.0)
        if tongue_len > 0:
            tw = mw * 0.34
            lolling = _ellipse(cx, mouth_y + tongue_len * 0.55, tw, tongue_len * 0.55 + 0.004)[:37]
            cv.fill(np.concatenate([[(cx - tw, mouth_y)], lolling, [(cx + tw, mouth_y)]]), PINK)
            groove = np.array([(cx, mouth_y), (cx, mouth_y + tongue_len * 0.7)])
            cv.stroke(groove, (196, 80, 100), self.LINE * 0.6)
        for s in (-1, 1):
            lip = np.array([(0, 0), (0.2 * s, curl), (0.55 * s, curl), (0.7 * s, -0.2 * curl)])
            cv.stroke(_bezier(lip * [mw, mh] + [cx, mouth_y]), self.MOUTH, self.LINE)
        ny, nr = my - mh * 0.42, self.a * _lerp(0.13, 0.26, f["nose_size"])
        nose = np.concatenate([_mirrored(_bezier(NOSE_LOWER), 0.0), _bezier(NOSE_UPPER)])
        liver = f["nose_colour"] ** 2  # mostly black noses, some liver ones
        cv.fill(nose * nr + [cx, ny], _mix((22, 18, 18), (112, 62, 44), liver))
        cv.stroke(np.array([(cx, ny + nr * 0.7), (cx, mouth_y)]), self.MOUTH, self.LINE)
        shine = _ellipse(cx - nr * 0.35, ny - nr * 0.3, nr * 0.3, nr * 0.16, 24)
        cv.fill(shine, (236, 236, 236), 0.75)


class SketchRenderer:
    """Parametric dog portraits: deterministic, weight-free, smooth in z."""

    name = "sketch"

    def __init__(self, size: int = 512, supersample: int = 2) -> None:
        if size < 16 or supersample < 1:
            raise RenderError("sketch renderer needs size >= 16 and supersample >= 1")
        self.size = size
        self.supersample = supersample  # drawn this many times larger, then LANCZOS-reduced

    def render(self, z: np.ndarray) -> Image.Image:
        """The portrait of z, size x size RGB; identical pixels for identical z."""
        img = _Portrait(features(z), self.size * self.supersample).draw()
        return img.resize((self.size, self.size), Image.Resampling.LANCZOS)


if "sketch" not in RENDERERS:  # re-imports (importlib.reload in tests) must not collide
    RENDERERS.add("sketch", SketchRenderer)
