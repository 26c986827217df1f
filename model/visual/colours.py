"""Dominant colours of an image as basic colour words, with area fractions and where they are (masks).

Pixels of a small thumbnail are named with HSV rules over the eleven basic colour terms (red, orange, yellow,
green, blue, purple, pink, brown, black, white, gray); chromatic colours get a "light"/"dark" modifier from
the group's mean saturation/value. Numpy only; about a millisecond per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import to_rgb

BASIC_COLOURS = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
)  # fmt: skip
_INDEX = {name: i for i, name in enumerate(BASIC_COLOURS)}
ANALYSIS_SIZE = 64  # pixels are classified at this size...
MASK_SIZE = 32  # ...and masks are reported at this size (area-averaged, so values are coverage 0..1)

# Selection: the largest colour always; others if they cover MIN_FRACTION; a small but vivid colour
# (a red car on grey asphalt) if it covers VIVID_MIN_FRACTION with mean saturation >= VIVID_SATURATION.
MAX_COLOURS = 3
MIN_FRACTION = 0.12
VIVID_MIN_FRACTION = 0.04
VIVID_SATURATION = 0.55


@dataclass
class DominantColour:
    """name: colour words ("blue", "dark green"); basic: the basic term; fraction: share of the image area;
    mask: float32 [MASK_SIZE, MASK_SIZE] coverage of this colour, 0..1."""

    name: str
    basic: str
    fraction: float
    mask: np.ndarray


def thumbnail_rgb(img: Image.Image | np.ndarray) -> np.ndarray:
    """The image squashed to ANALYSIS_SIZE x ANALYSIS_SIZE (area-averaged), float32 RGB 0..1: what the colour
    (and scene, scene.py) rules read. A caller running both makes it once."""
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"colours: array input must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr)
    elif not isinstance(img, Image.Image):
        raise ValueError(f"colours: expected a PIL.Image.Image or uint8 array, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise ValueError(f"colours: image has an empty size {img.size}")
    img = to_rgb(img)
    small = img.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX, reducing_gap=3.0)
    return np.asarray(small, dtype=np.float32) / 255.0


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[..., 3] floats in 0..1 -> hue in degrees [0, 360), saturation, value."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe_c = np.maximum(c, 1e-6)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h * 60.0, 0.0)
    return h, s, v


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Basic-colour index (into BASIC_COLOURS) of every pixel of an [..., 3] float 0..1 array."""
    h, s, v = rgb_to_hsv(rgb)
    out = np.full(h.shape, _INDEX["gray"], dtype=np.int8)
    hue_names = np.select(
        [h < 15, h < 40, h < 68, h < 165, h < 260, h < 300, h < 340],
        [_INDEX["red"], _INDEX["orange"], _INDEX["yellow"], _INDEX["green"], _INDEX["blue"],
         _INDEX["purple"], _INDEX["pink"]],
        default=_INDEX["red"],
    )  # fmt: skip
    chromatic = (s >= 0.2) & (v >= 0.2)
    out = np.where(chromatic, hue_names, out)
    # Brown is dark orange/red/yellow; pink is light, not very saturated red.
    warm = (h < 50) | (h >= 340)
    out = np.where(chromatic & warm & (v < 0.6) & (s >= 0.25), _INDEX["brown"], out)
    out = np.where(chromatic & ((h < 15) | (h >= 340)) & (s < 0.5) & (v >= 0.7), _INDEX["pink"], out)
    out = np.where(~chromatic & (v >= 0.82), _INDEX["white"], out)
    out = np.where(v < 0.2, _INDEX["black"], out)
    return out.astype(np.int8)


def _modifier(basic: str, s_mean: float, v_mean: float) -> str:
    if basic in ("black", "white", "gray", "brown", "pink"):
        return ""
    if v_mean < 0.42:
        return "dark "
    if s_mean < 0.42 and v_mean > 0.75:
        return "light "
    return ""


def dominant_colours(
    img: Image.Image | np.ndarray,
    max_colours: int = MAX_COLOURS,
    min_fraction: float = MIN_FRACTION,
    within: tuple[float, float, float, float] | None = None,
    thumbnail: np.ndarray | None = None,
) -> list[DominantColour]:
    """The image's dominant colours, largest first (at least one for any non-empty image).

    within: a box (x0, y0, x1, y1, normalised to 0..1) to name the colours of, e.g. the object of a product
    shot rather than its white background; fractions are then shares of the box, and masks are zero outside it.
    thumbnail: `thumbnail_rgb(img)`, when the caller already has it.
    """
    if max_colours < 1:
        raise ValueError(f"colours: max_colours must be >= 1, got {max_colours}")
    rgb = thumbnail_rgb(img) if thumbnail is None else thumbnail
    labels = classify_pixels(rgb)
    _, sat, val = rgb_to_hsv(rgb)
    if within is not None:
        centres = (np.arange(ANALYSIS_SIZE) + 0.5) / ANALYSIS_SIZE
        x0, y0, x1, y1 = within
        inside = ((centres[:, None] >= y0) & (centres[:, None] < y1)) & ((centres >= x0) & (centres < x1))
        if inside.any():
            labels = np.where(inside, labels, -1).astype(np.int8)
    counts = np.bincount(labels[labels >= 0], minlength=len(BASIC_COLOURS)).astype(np.float64)
    fractions = counts / counts.sum()
    order = sorted(range(len(BASIC_COLOURS)), key=lambda i: (-fractions[i], i))
    chosen: list[int] = []
    for rank, i in enumerate(order):
        if len(chosen) == max_colours or fractions[i] <= 0:
            break
        sel = labels == i
        vivid = fractions[i] >= VIVID_MIN_FRACTION and float(sat[sel].mean()) >= VIVID_SATURATION
        if rank == 0 or fractions[i] >= min_fraction or vivid:
            chosen.append(i)
    out: list[DominantColour] = []
    for i in chosen:
        sel = labels == i
        basic = BASIC_COLOURS[i]
        name = _modifier(basic, float(sat[sel].mean()), float(val[sel].mean())) + basic
        out.append(DominantColour(name=name, basic=basic, fraction=float(fractions[i]), mask=coverage(sel)))
    return out


def coverage(sel: np.ndarray) -> np.ndarray:
    """A [ANALYSIS_SIZE, ANALYSIS_SIZE] pixel selection as a [MASK_SIZE, MASK_SIZE] float32 coverage mask (0..1):
    the masks the visual tokens carry (colours here, scene words in scene.py)."""
    f = ANALYSIS_SIZE // MASK_SIZE
    return sel.astype(np.float32).reshape(MASK_SIZE, f, MASK_SIZE, f).mean(axis=(1, 3))
