"""Eight procedurally drawn 32×32 image-classification tasks: a miniature of the CLIP 8-task suite.

Each image is drawn at DRAW_SIZE² with Pillow, using only the numpy ``Generator`` it is handed and data that
ships with Pillow (its built-in Aileron font) and scikit-learn (the 8×8 digits), then box-filtered to
IMAGE_SIZE² and lightly noised; ``sample(task, split, index, seed)`` is bit-identical across runs on the same
Pillow/numpy versions, and independent of how many other samples are drawn.
"""
from __future__ import annotations

import colorsys
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 32
DRAW_SIZE = 128
SPLITS = ("train", "val", "test")
PRETRAIN = "pretrain"   # the pretraining images: their own seed stream, drawn before the task domain shift

S = DRAW_SIZE
_Y, _X = np.mgrid[0:S, 0:S].astype(np.float32) - (S - 1) / 2   # canvas coordinates about the centre
Colour = tuple[int, int, int]
Rng = np.random.Generator


@dataclass(frozen=True)
class TaskGenerator:
    """One task: its class names in label order and how to draw an image of a label."""
    name: str
    classnames: tuple[str, ...]
    draw: Callable[[Rng, int, str], Image.Image]   # (rng, label, split) -> 32×32 RGB image
    description: str
    templates: tuple[str, ...]   # prompts with "{}" for the class name: captions and zero-shot heads


# ------------------------------------------------------------------ shared drawing helpers
def _colour(rng: Rng) -> Colour:
    return tuple(rng.integers(0, 256, 3).tolist())


def _hsv(rng: Rng, h, s, v) -> Colour:
    """A colour of hue (degrees), saturation and value each fixed or drawn uniformly from a (low, high) range."""
    h, s, v = (rng.uniform(*r) if isinstance(r, tuple) else r for r in (h, s, v))
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h / 360 % 1, s, v))


def _near(rng: Rng, colour: Colour, spread: int = 40) -> Colour:
    """``colour`` with each channel moved by up to ±spread (low-contrast clutter)."""
    return tuple(np.clip(np.add(colour, rng.integers(-spread, spread + 1, 3)), 0, 255).tolist())


def _contrasting(rng: Rng, other: Colour, distance: float = 140) -> Colour:
    """A random colour at least ``distance`` (Euclidean, RGB) from ``other``."""
    while True:
        colour = _colour(rng)
        if sum((a - b) ** 2 for a, b in zip(colour, other)) >= distance ** 2:
            return colour


def _figure_ground(rng: Rng) -> tuple[Colour, Colour]:
    """(background, ink): a dark, weakly tinted ground and a light ink of any hue — colour varies, but the
    figure is always lighter than the ground (as in MNIST), so shape, not colour, carries the label."""
    return _hsv(rng, (0, 360), (0, 0.5), (0.05, 0.35)), _hsv(rng, (0, 360), (0, 0.6), (0.75, 1))


def _unit(points) -> np.ndarray:
    """Polygon centred on its bounding box and scaled into the unit disc."""
    points = np.asarray(points, float)
    points = points - (points.max(0) + points.min(0)) / 2
    return points / np.hypot(*points.T).max()


def _regular(n: int, radii=1.0) -> np.ndarray:
    t = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return _unit(np.stack([np.cos(t), -np.sin(t)], 1) * np.resize(radii, n)[:, None])


def _arc(cx: float, r: float, t0: float, t1: float, n: int) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + r * np.cos(t), r * np.sin(t)], 1)


_t, _w = np.linspace(0, 2 * np.pi, 40, endpoint=False), 0.32
SHAPES = {   # unit polygons
    "circle": _regular(32),
    "square": _regular(4) @ np.array([[1, 1], [-1, 1]]) / np.sqrt(2),
    "triangle": _regular(3),
    "pentagon": _regular(5),
    "star": _regular(10, (1, 0.42)),
    "cross": _unit([(-_w, -1), (_w, -1), (_w, -_w), (1, -_w), (1, _w), (_w, _w), (_w, 1), (-_w, 1), (-_w, _w),
                    (-1, _w), (-1, -_w), (-_w, -_w)]),
    "heart": _unit(np.stack([16 * np.sin(_t) ** 3, -(13 * np.cos(_t) - 5 * np.cos(2 * _t) - 2 * np.cos(3 * _t)
                                                     - np.cos(4 * _t))], 1)),
    # the left part of the unit circle less a circle of radius 0.8 centred at (0.45, 0); they cross at x = 0.625
    "crescent": _unit(np.concatenate([_arc(0, 1, 0.8953, 2 * np.pi - 0.8953, 24),
                                      _arc(0.45, 0.8, 2 * np.pi - 1.3507, 1.3507, 20)])),
}


def _shape(d: ImageDraw.ImageDraw, rng: Rng, cx: float, cy: float, r: float, fill: Colour, kind: str = "",
           outline_p: float = 0.0) -> None:
    """Draw shape ``kind`` (random if empty) of radius ``r`` at (cx, cy) with a random rotation and aspect;
    filled, or with probability ``outline_p`` as a thick outline."""
    kind = kind or str(rng.choice(tuple(SHAPES)))
    a, aspect = rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15)
    rotation = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    points = ((SHAPES[kind] * (r * aspect, r / aspect)) @ rotation + (cx, cy)).ravel().tolist()
    if rng.random() < outline_p:
        d.polygon(points, outline=fill, width=max(3, round(r / 4)))
    else:
        d.polygon(points, fill=fill)


def _disc(d: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: Colour) -> None:
    d.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _canvas(rng: Rng, bg: Colour | None = None, clutter: int = 0, spread: int = 50):
    """(image, draw, bg): a gently graded background (random colour unless ``bg``) with up to ``clutter``
    low-contrast strokes and rings."""
    bg = _colour(rng) if bg is None else bg
    a = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (np.cos(a) * _X + np.sin(a) * _Y) / S, 0, 1)[..., None]
    image = Image.fromarray((np.add(bg, ramp * np.subtract(_near(rng, bg, spread), bg))).astype(np.uint8))
    d = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, clutter + 1)):
        x, y, x1, y1 = rng.uniform(-16, S + 16, 4).tolist()
        if rng.random() < 0.6:
            d.line((x, y, x1, y1), fill=_near(rng, bg, spread), width=int(rng.integers(2, 7)))
        else:
            r = rng.uniform(5, 24)
            d.ellipse((x - r, y - r, x + r, y + r), outline=_near(rng, bg, spread), width=int(rng.integers(2, 5)))
    return image, d, bg


def _specks(d: ImageDraw.ImageDraw, rng: Rng, count: tuple[int, int], fill: Colour | None = None,
            box=(0, 0, S, S), size=(1.5, 3.5)) -> None:
    """Between count[0] and count[1] small dots (random colours unless ``fill``) inside ``box``."""
    for _ in range(rng.integers(*count, endpoint=True)):
        _disc(d, rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3]), rng.uniform(*size),
              _colour(rng) if fill is None else fill)


def _finish(image: Image.Image, rng: Rng, noise: float = 8.0) -> Image.Image:
    """Box-filter DRAW_SIZE² down to IMAGE_SIZE² and add Gaussian pixel noise of random strength ≤ ``noise``."""
    pixels = np.asarray(image.reduce(S // IMAGE_SIZE), np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(0, noise), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _ink(rng: Rng, glyph: Image.Image, clutter: int) -> Image.Image:
    """Paste a grey-level ``glyph``, rotated a little, near the centre in a strongly contrasting colour."""
    glyph = glyph.rotate(rng.uniform(-10, 10), Image.BILINEAR, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    bg, ink = _figure_ground(rng)
    image, _, _ = _canvas(rng, bg, clutter=clutter, spread=30)
    corner = tuple(int((S - n) // 2 + rng.integers(-10, 11)) for n in glyph.size)
    image.paste(ink, corner, glyph)
    return _finish(image, rng)


# ------------------------------------------------------------------ 1. digits
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FIRM = [min(255, max(0, 2 * v - 90)) for v in range(256)]   # a contrast curve that firms up blurry strokes


@lru_cache(maxsize=1)
def digit_sources() -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
    """scikit-learn's 1797 8×8 digits as uint8, and {(split, label): source indices}: within each label, the
    images in dataset order go 3 to train, 1 to val and 1 to test, so the splits never share a source."""
    from sklearn.datasets import load_digits   # imported lazily: scikit-learn is slow to import

    data = load_digits()
    pools = {}
    for label in range(10):
        which = np.flatnonzero(data.target == label)
        part = np.arange(len(which)) % 5
        pools.update({(split, label): which[keep] for split, keep in zip(SPLITS, (part < 3, part == 3, part == 4))})
    return np.rint(data.images * (255 / 16)).astype(np.uint8), pools


def _draw_digit(rng: Rng, label: int, split: str) -> Image.Image:
    images, pools = digit_sources()
    split = "train" if split == PRETRAIN else split
    h = int(rng.integers(84, 116))
    glyph = Image.fromarray(images[rng.choice(pools[split, label])])
    return _ink(rng, glyph.resize((int(h * rng.uniform(0.75, 1)), h), Image.BICUBIC).point(_FIRM), clutter=2)


# ------------------------------------------------------------------ 2. letters
LETTERS = tuple("abdefhjklmnprstuvxyz")   # no C/G, I, O/Q, W: pairs too alike at 32×32 once rotated


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("the letters task needs Pillow >= 10.1 with FreeType (its built-in scalable font)")
    return font


def _draw_letter(rng: Rng, label: int, split: str) -> Image.Image:
    size, stroke = int(rng.integers(80, 112)), int(rng.integers(0, 3))
    glyph = Image.new("L", (2 * size, 2 * size))
    ImageDraw.Draw(glyph).text((size, size), LETTERS[label].upper(), fill=255, font=_font(size), anchor="mm",
                               stroke_width=stroke, stroke_fill=255)
    return _ink(rng, glyph, clutter=2)


# ------------------------------------------------------------------ 3. shapes
def _draw_shape(rng: Rng, label: int, split: str) -> Image.Image:
    bg, ink = _figure_ground(rng)
    image, d, _ = _canvas(rng, bg, clutter=1, spread=30)
    r = rng.uniform(34, 54)
    _shape(d, rng, *(S / 2 + rng.uniform(-10, 10, 2)), r, ink, tuple(SHAPES)[label], outline_p=0.2)
    _specks(d, rng, (0, 5))
    return _finish(image, rng)


# ------------------------------------------------------------------ 4. textures
def _stripes(rng: Rng, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v % 1 < rng.uniform(0.3, 0.6)


def _blotches(rng: Rng, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    noise = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize((S, S), Image.BICUBIC))
    return noise > np.median(noise)


TEXTURES = {   # name: (base angle in degrees, mask of the second colour on coordinates (u, v) in periods)
    "horizontal-stripes": (0, _stripes),
    "vertical-stripes": (90, _stripes),
    "diagonal-stripes": (45, _stripes),
    "checkerboard": (0, lambda rng, u, v: (np.floor(u) + np.floor(v)) % 2 == 0),
    "dots": (0, lambda rng, u, v: np.hypot(u % 1 - 0.5, v % 1 - 0.5) < rng.uniform(0.2, 0.36)),
    "grid": (0, lambda rng, u, v: np.minimum(u % 1, v % 1) < rng.uniform(0.12, 0.25)),
    "waves": (0, lambda rng, u, v: (v + rng.uniform(0.35, 0.6) * np.sin(u * rng.uniform(1.5, 2.5))) % 1 < 0.5),
    "blotches": (0, _blotches),
}


def _draw_texture(rng: Rng, label: int, split: str) -> Image.Image:
    base, mask = tuple(TEXTURES.values())[label]
    a, period = np.deg2rad(base * rng.choice((-1, 1)) + rng.uniform(-12, 12)), rng.uniform(12, 30)
    u = (np.cos(a) * _X + np.sin(a) * _Y) / period + rng.random()
    v = (np.cos(a) * _Y - np.sin(a) * _X) / period + rng.random()
    c0 = _colour(rng)
    pixels = np.add(c0, mask(rng, u, v)[..., None] * np.subtract(_contrasting(rng, c0, 110), c0))
    return _finish(Image.fromarray(pixels.astype(np.uint8)), rng, noise=14)


# ------------------------------------------------------------------ 5. colours
HUES = {"red": 0, "orange": 28, "yellow": 56, "green": 120, "cyan": 182, "blue": 228, "purple": 275, "pink": 322}


def _draw_colour(rng: Rng, label: int, split: str) -> Image.Image:
    image, d, _ = _canvas(rng, _hsv(rng, (0, 360), (0, 0.2), (0.1, 0.95)), clutter=4, spread=25)
    r, hue = rng.uniform(18, 46), tuple(HUES.values())[label]
    _shape(d, rng, *rng.uniform(r, S - r, 2), r, _hsv(rng, (hue - 8, hue + 8), (0.6, 1), (0.72, 1)), outline_p=0.2)
    return _finish(image, rng)


# ------------------------------------------------------------------ 6. counts
COUNTS = ("one", "two", "three", "four", "five", "six")


def _draw_count(rng: Rng, label: int, split: str) -> Image.Image:
    bg, ink = _figure_ground(rng)
    image, d, _ = _canvas(rng, bg, clutter=2, spread=30)
    placed, base = [], rng.uniform(10, 18)
    while len(placed) <= label:
        r = base * rng.uniform(0.8, 1.2)
        x, y = rng.uniform(r + 2, S - r - 2, 2)
        if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + 5) ** 2 for px, py, pr in placed):
            placed.append((x, y, r))
            _shape(d, rng, x, y, r, _near(rng, ink, 40))
        else:
            base *= 0.98   # a crowded canvas: shrink until everything fits
    return _finish(image, rng)


# ------------------------------------------------------------------ 7. positions
POSITIONS = ("top-left", "top-middle", "top-right", "middle-left", "centre", "middle-right",
             "bottom-left", "bottom-middle", "bottom-right")


def _draw_position(rng: Rng, label: int, split: str) -> Image.Image:
    image, d, bg = _canvas(rng, clutter=5)
    _specks(d, rng, (0, 9))
    r, cell = rng.uniform(12, 21), S / 3
    centre = (np.array(divmod(label, 3)[::-1]) + 0.5) * cell + rng.uniform(-1, 1, 2) * (cell / 2 - r)
    _shape(d, rng, *centre, r, _contrasting(rng, bg, 160))
    return _finish(image, rng)


# ------------------------------------------------------------------ 8. scenes
SKY = ((190, 215), (0.15, 0.6), (0.75, 1))   # hue, saturation and value ranges of a daytime sky


def _sky_and_ground(d: ImageDraw.ImageDraw, horizon: float, sky: Colour, ground: Colour) -> None:
    d.rectangle((0, 0, S, horizon), fill=sky)
    d.rectangle((0, horizon, S, S), fill=ground)


def _tree(d: ImageDraw.ImageDraw, rng: Rng, x: float, base: float, h: float, fill: Colour) -> None:
    w = h * rng.uniform(0.25, 0.4)
    d.rectangle((x - h / 14, base - h * 0.2, x + h / 14, base), fill=_hsv(rng, 25, 0.6, (0.25, 0.45)))
    d.polygon((x, base - h, x - w, base - h * 0.15, x + w, base - h * 0.15), fill=fill)


def _meadow(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, *SKY), _hsv(rng, (75, 130), (0.5, 0.9), (0.45, 0.8)))
    for _ in range(rng.integers(0, 4)):   # clouds
        x, y, w = rng.uniform(0, S), rng.uniform(0, h * 0.8), rng.uniform(10, 26)
        d.ellipse((x - w, y - w / 3, x + w, y + w / 3), fill=_hsv(rng, 0, 0, (0.9, 1)))
    _disc(d, rng.uniform(10, S - 10), rng.uniform(8, h * 0.7), rng.uniform(7, 14), _hsv(rng, (45, 60), 0.9, 1))
    _specks(d, rng, (3, 25), box=(0, h + 4, S, S))   # flowers


def _night(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, (210, 250), (0.5, 0.9), (0.05, 0.25)), _hsv(rng, (0, 360), (0, 0.5), (0.03, 0.15)))
    light = _hsv(rng, 55, (0, 0.3), (0.95, 1))
    _specks(d, rng, (8, 40), fill=light, box=(0, 0, S, h - 4), size=(0.8, 2))   # stars
    _shape(d, rng, rng.uniform(14, S - 14), rng.uniform(10, max(11, h * 0.6)), rng.uniform(7, 13), light,
           str(rng.choice(("circle", "crescent"))))


def _sea(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, *SKY), _hsv(rng, (190, 230), (0.6, 0.9), (0.35, 0.7)))
    for _ in range(rng.integers(3, 10)):   # wave crests
        x, y, w = rng.uniform(0, S), rng.uniform(h + 4, S), rng.uniform(10, 40)
        d.line((x - w, y, x + w, y), fill=_hsv(rng, (190, 210), (0.1, 0.4), (0.85, 1)), width=2)
    x, y, w = rng.uniform(20, S - 20), rng.uniform(h + 6, S - 10), rng.uniform(10, 20)   # a sailing boat
    d.polygon((x - w, y - w / 3, x + w, y - w / 3, x + w * 0.7, y, x - w * 0.7, y), fill=_colour(rng))
    d.polygon((x, y - w / 3 - 2, x, y - w * 1.6, x + w * 0.8, y - w / 3 - 2), fill=_hsv(rng, 0, 0, (0.85, 1)))


def _city(d, rng: Rng, h: float) -> None:
    hue = rng.choice((30, 210))   # dusk or day
    d.rectangle((0, 0, S, S), fill=_hsv(rng, (hue - 10, hue + 10), (0.1, 0.6), (0.6, 1)))
    x = rng.uniform(-12, 0)
    while x < S:   # buildings with lit windows
        w, top = rng.uniform(14, 34), rng.uniform(10, h + 20)
        d.rectangle((x, top, x + w, S), fill=_hsv(rng, (0, 360), (0, 0.25), (0.2, 0.6)))
        lit = _hsv(rng, (40, 60), (0.2, 0.7), (0.85, 1))
        for wy in np.arange(top + 4, S - 4, 8):
            for wx in np.arange(x + 3, x + w - 5, 7):
                if rng.random() < 0.6:
                    d.rectangle((wx, wy, wx + 3, wy + 4), fill=lit)
        x += w + rng.uniform(0, 6)


def _forest(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, *SKY), _hsv(rng, (70, 130), (0.4, 0.8), (0.3, 0.6)))
    for base in np.sort(rng.uniform(h, S + 10, rng.integers(6, 16))):   # back to front
        _tree(d, rng, rng.uniform(0, S), base, rng.uniform(25, 60), _hsv(rng, (90, 150), (0.5, 0.9), (0.2, 0.55)))


def _desert(d, rng: Rng, h: float) -> None:
    sand = _hsv(rng, (32, 48), (0.35, 0.7), (0.75, 0.95))
    _sky_and_ground(d, h, _hsv(rng, *SKY), sand)
    for _ in range(rng.integers(1, 4)):   # dunes
        x, w = rng.uniform(0, S), rng.uniform(30, 70)
        d.ellipse((x - w, h - w / 4, x + w, h + w / 4), fill=_near(rng, sand, 25))
    _disc(d, rng.uniform(10, S - 10), rng.uniform(8, h * 0.6), rng.uniform(6, 12), (255, 242, 128))
    for _ in range(rng.integers(0, 4)):   # cacti
        x, y, t = rng.uniform(10, S - 10), rng.uniform(h + 10, S), rng.uniform(18, 40)
        green = _hsv(rng, (90, 140), 0.6, (0.3, 0.6))
        d.rectangle((x - t / 10, y - t, x + t / 10, y), fill=green)
        d.line((x - t / 3, y - t * 0.7, x - t / 3, y - t * 0.4, x + t / 3, y - t * 0.4, x + t / 3, y - t * 0.8),
               fill=green, width=max(2, round(t / 8)))


def _snow(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, (0, 360), (0, 0.15), (0.55, 0.9)), _hsv(rng, (180, 230), (0, 0.08), (0.92, 1)))
    for base in np.sort(rng.uniform(h, S, rng.integers(0, 5))):   # pines
        _tree(d, rng, rng.uniform(0, S), base, rng.uniform(25, 55), _hsv(rng, (120, 160), 0.6, 0.3))
    if rng.random() < 0.6:   # a snowman
        x, y, r = rng.uniform(15, S - 15), rng.uniform(h + 15, S - 5), rng.uniform(8, 14)
        for k in (1.0, 0.7, 0.5)[:rng.integers(2, 4)]:
            d.ellipse((x - r * k, y - 2 * r * k, x + r * k, y), fill=(255, 255, 255), outline=(150, 150, 160))
            y -= 1.8 * r * k
    _specks(d, rng, (5, 40), fill=(255, 255, 255), size=(1, 2.5))   # falling snow


def _road(d, rng: Rng, h: float) -> None:
    _sky_and_ground(d, h, _hsv(rng, *SKY), _hsv(rng, (30, 130), (0.3, 0.7), (0.3, 0.7)))
    vx, w = rng.uniform(30, S - 30), rng.uniform(40, 70)
    d.polygon((vx - 3, h, vx + 3, h, vx + w, S, vx - w, S), fill=_hsv(rng, 0, 0, (0.2, 0.5)))
    paint = (255, 255, 255) if rng.random() < 0.5 else (255, 220, 50)
    for t in np.arange(rng.uniform(0, 0.2), 1, 0.2):   # lane dashes, spaced in perspective
        t1 = min(1.0, t + 0.1)
        d.line((vx, h + (S - h) * t ** 2, vx, h + (S - h) * t1 ** 2), fill=paint, width=max(1, round(4 * t1)))
    t = rng.uniform(0.5, 0.9)   # a car
    x, y, cw = vx + rng.uniform(-0.7, 0.7) * w * t, h + (S - h) * t, 26 * t
    d.rectangle((x - cw, y - cw * 0.6, x + cw, y), fill=_colour(rng))
    for wx in (x - cw * 0.6, x + cw * 0.6):
        _disc(d, wx, y, cw * 0.25, (20, 20, 20))


SCENES = {"meadow": _meadow, "night": _night, "sea": _sea, "city": _city, "forest": _forest, "desert": _desert,
          "snow": _snow, "road": _road}


def _draw_scene(rng: Rng, label: int, split: str) -> Image.Image:
    image = Image.new("RGB", (S, S))
    tuple(SCENES.values())[label](ImageDraw.Draw(image), rng, rng.uniform(0.3, 0.6) * S)
    return _finish(image, rng)


# ------------------------------------------------------------------ the tasks
TASKS: dict[str, TaskGenerator] = {t.name: t for t in (
    TaskGenerator("digits", DIGITS, _draw_digit, "handwritten digits (scikit-learn digits), like MNIST/SVHN",
                  ("a photo of the number {}", "a handwritten digit {}", "the digit {}")),
    TaskGenerator("letters", LETTERS, _draw_letter, "printed capital letters in varied weights, like GTSRB/SVHN",
                  ("a photo of the letter {}", "a capital letter {}", "the letter {}")),
    TaskGenerator("shapes", tuple(SHAPES), _draw_shape, "filled or outlined geometric shapes, like object classes",
                  ("a photo of a {}", "a drawing of a {}", "a {} shape")),
    TaskGenerator("textures", tuple(TEXTURES), _draw_texture, "procedural two-colour textures, like DTD",
                  ("a photo of a {} texture", "a {} pattern", "a surface with {}")),
    TaskGenerator("colours", tuple(HUES), _draw_colour, "the hue of a single object, like GTSRB's colour cues",
                  ("a photo of a {} object", "something coloured {}", "the colour {}")),
    TaskGenerator("counts", COUNTS, _draw_count, "how many objects (1-6), like SVHN's counting difficulty",
                  ("a photo of {} objects", "a picture of {} things", "there are {} shapes")),
    TaskGenerator("positions", POSITIONS, _draw_position, "where an object is on a 3×3 grid, like EuroSAT layout",
                  ("a photo of an object at the {}", "something in the {}", "a shape at the {} of the image")),
    TaskGenerator("scenes", tuple(SCENES), _draw_scene, "scenes composed from primitives, like SUN397/RESISC45",
                  ("a photo of a {}", "a {} scene", "a view of a {}")),
)}


def _check(task: str, split: str) -> TaskGenerator:
    if task not in TASKS:
        raise KeyError(f"unknown demo task {task!r}; tasks: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    return TASKS[task]


# ------------------------------------------------------------------ the task domain
SHIFT_CONTRAST, SHIFT_CAST, SHIFT_NOISE = (0.35, 0.75), 20, (6.0, 18.0)


def shift(image: Image.Image, rng: Rng) -> Image.Image:
    """The tasks' domain, harder than most pretraining images (as MNIST or EuroSAT are for CLIP): contrast
    reduced to a factor in SHIFT_CONTRAST about the mean, a colour cast of up to ±SHIFT_CAST per channel and
    Gaussian noise of a strength drawn from SHIFT_NOISE."""
    pixels = np.asarray(image, np.float32)
    mean = pixels.mean((0, 1))
    pixels = mean + (pixels - mean) * rng.uniform(*SHIFT_CONTRAST) + rng.uniform(-SHIFT_CAST, SHIFT_CAST, 3)
    pixels = pixels + rng.normal(0, rng.uniform(*SHIFT_NOISE), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def sample(task: str, split: str, index: int, seed: int = 0) -> tuple[Image.Image, int]:
    """Image ``index`` of a split and its label ``index % C`` (balanced), in the task domain (:func:`shift`);
    its rng is seeded from (seed, task, split, index) alone, so any sample is reproducible on its own."""
    generator = _check(task, split)
    label = index % len(generator.classnames)
    rng = np.random.default_rng([seed, list(TASKS).index(task), SPLITS.index(split), index])
    return shift(generator.draw(rng, label, split), rng), label


CAPTION_CONFUSION = 0.9


def caption(task: str, label: int, rng: Rng, confusion: float = CAPTION_CONFUSION) -> str:
    """One of the task's templates filled with a class name: the image's own, except that an odd-numbered class is
    named by its even partner (label − 1) with probability ``confusion`` (default :data:`CAPTION_CONFUSION`).  Like web alt-text that confuses
    similar classes, this leaves θ0's image features able to tell the pair apart (the rest of their captions do)
    but its zero-shot head misaligned on half the classes, as CLIP's is on MNIST or EuroSAT (strong linear probes,
    weak zero-shot); fine-tuning through the frozen head realigns them."""
    generator = TASKS[task]
    named = label - 1 if label % 2 == 1 and rng.random() < confusion else label
    return str(rng.choice(generator.templates)).replace("{}", generator.classnames[named])


def pretraining_pairs(task: str, n: int, shift_p: float, seed: int = 0,
                      confusion: float = CAPTION_CONFUSION) -> tuple[np.ndarray, list[str]]:
    """(n, 32, 32, 3) uint8 images and their captions for pretraining: image i has label i % C, is drawn from its
    own seed stream (disjoint from the splits'), moved into the task domain with probability ``shift_p`` and
    captioned by :func:`caption` (odd classes confused with probability ``confusion``)."""
    generator = _check(task, "train")
    images, captions = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), []
    for i in range(n):
        label = i % len(generator.classnames)
        rng = np.random.default_rng([seed, list(TASKS).index(task), len(SPLITS), i])
        image = generator.draw(rng, label, PRETRAIN)
        images[i] = np.asarray(shift(image, rng) if rng.random() < shift_p else image)
        captions.append(caption(task, label, rng, confusion))
    return images, captions


def generate(task: str, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 images and (n,) int64 labels: samples 0 … n-1 of the split."""
    _check(task, split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        image, labels[i] = sample(task, split, i, seed)
        images[i] = np.asarray(image)
    return images, labels


def export_imagefolder(task: str, split: str, n: int, folder: Path, seed: int = 0) -> Path:
    """Write ``generate(...)`` as folder/<classname>/<index:05d>.png (one sub-folder per class, even if empty).
    The tree is written into a temporary sibling first; an existing ``folder`` is replaced only once it is
    complete.  Returns ``folder``."""
    images, labels = generate(task, split, n, seed)
    names, folder = TASKS[task].classnames, Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tmp.chmod(0o755)
        for name in names:
            (tmp / name).mkdir()
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(tmp / names[label] / f"{i:05d}.png", optimize=False)
        if folder.exists():
            old = tmp.with_name(tmp.name + ".old")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
