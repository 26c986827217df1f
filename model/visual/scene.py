"""Scene words: what the ImageNet classifier cannot say about a whole photo, read from where its colours are.

ImageNet names objects, not the sky above them, and no class says that a photo has no colour at all. Photo
collections are full of both, so their searches ("blue sky", "black and white photo") found
nothing. Two rules over a small thumbnail, each about the pixels alone (numpy, about a millisecond a photo):

- **sky**: the top third of the frame is mostly smooth blue (sky hues, no texture at the thumbnail's scale)
  and its top rows are sky-coloured (blue, or pale where haze or clouds are). An overcast sky alone is not
  named: a pale top is as often a white wall, a studio background or a page. A blue illustration background
  is named "sky" too; the tokenizer drops scene words on pictures with readable text (screenshots, slides).
  "Clouds" was tried and left out: pale pixels in a blue sky are as often its bright horizon.
- **black and white**: nearly every pixel is without colour (the 99th percentile of chroma below 0.08), and
  there is some light and shade (a plain white, grey or black frame is not a photo).

Each word carries the coverage mask of the pixels it stands for, so the app can paint it over the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .colours import ANALYSIS_SIZE, MASK_SIZE, coverage, rgb_to_hsv, thumbnail_rgb

SMOOTH_MAX_STEP = 0.04  # |d luma| to the right + below neighbour: above it a pixel is texture, not sky
SKY_HUES = (190.0, 255.0)  # degrees: from cyan-blue to blue-violet
SKY_MIN_SATURATION = 0.15
SKY_MIN_VALUE = 0.35
PALE_MAX_CHROMA = 0.2  # haze or a cloud: bright and with little colour (white clouds on blue read ~0.15)
PALE_MIN_VALUE = 0.6
NEUTRAL_MAX_CHROMA = 0.04  # white without a tint: a cloud's, not sunlit stone's
SKY_MIN_TOP_SHARE = 0.35  # of the top third: smooth blue
SKY_MIN_EDGE_SHARE = 0.5  # of the top rows: sky-coloured (blue or pale)
EDGE_ROWS = 4  # the top rows, not the top row alone: a vignette darkens the very edge
MONO_MAX_CHROMA = 0.08  # 99th percentile of max(r, g, b) - min(r, g, b)
MONO_MIN_CONTRAST = 0.1  # 1st to 99th percentile of luma: a plain grey, white or black frame is not a photo


@dataclass
class SceneWord:
    """text: the words ("sky"); weight: the share of the frame they stand for, 0..1; mask: float32
    [MASK_SIZE, MASK_SIZE] coverage of those pixels over the whole frame."""

    text: str
    weight: float
    mask: np.ndarray


def scene_words(img: Image.Image, thumbnail: np.ndarray | None = None) -> list[SceneWord]:
    """The scene words of one image: "sky", or "black and white, monochrome", or [] when neither applies.
    thumbnail: `colours.thumbnail_rgb(img)`, when the caller already has it (the rules read nothing else)."""
    rgb = thumbnail_rgb(img) if thumbnail is None else thumbnail
    hue, sat, val = rgb_to_hsv(rgb)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if float(np.quantile(chroma, 0.99)) < MONO_MAX_CHROMA:
        # A photo without colour has no blue sky to find either; a blank frame is no black-and-white photo.
        lo, hi = np.quantile(luma, [0.01, 0.99])
        if hi - lo < MONO_MIN_CONTRAST:
            return []
        return [SceneWord("black and white, monochrome", 1.0, np.ones((MASK_SIZE, MASK_SIZE), np.float32))]
    words: list[SceneWord] = []
    step = np.zeros_like(luma)
    step[:, :-1] += np.abs(np.diff(luma, axis=1))
    step[:-1, :] += np.abs(np.diff(luma, axis=0))
    bluish = (hue >= SKY_HUES[0]) & (hue < SKY_HUES[1]) & (sat >= SKY_MIN_SATURATION) & (val >= SKY_MIN_VALUE)
    blue = bluish & (step < SMOOTH_MAX_STEP)
    pale = (chroma < PALE_MAX_CHROMA) & (val >= PALE_MIN_VALUE)
    third = ANALYSIS_SIZE // 3
    edge = blue[:EDGE_ROWS] | pale[:EDGE_ROWS]
    if blue[:third].mean() >= SKY_MIN_TOP_SHARE and edge.mean() >= SKY_MIN_EDGE_SHARE:
        # Texture allowed in blue and in cool or neutral white (clouds and their edges are sky too), not in warm
        # white (a marble wall in the sun is not).
        cool = ((hue >= SKY_HUES[0] - 10) & (hue < SKY_HUES[1])) | (chroma < NEUTRAL_MAX_CHROMA)
        sky = _from_the_top(bluish | (pale & ((step < SMOOTH_MAX_STEP) | cool)), paint=bluish | pale)
        words.append(SceneWord("sky", float(sky.mean()), coverage(sky)))
    return words


def _from_the_top(sky_coloured: np.ndarray, paint: np.ndarray) -> np.ndarray:
    """The sky: in each column, from the top edge down to where the column stops being `sky_coloured` (two
    pixels in a row that are not), so it follows the horizon, stops at what stands in front of it, and leaves
    a lake below alone; each column's depth is the median of its 5 neighbours' (one cloud's edge does not cut
    a column short), and within that depth the `paint` pixels are the sky's."""
    rows, cols = sky_coloured.shape
    not_sky = ~sky_coloured
    stops = np.zeros_like(not_sky)
    stops[:-1] = not_sky[:-1] & not_sky[1:]
    stops[-1] = not_sky[-1]
    depth = np.where(stops.any(axis=0), stops.argmax(axis=0), rows)  # per column: the first stop's row
    padded = np.pad(depth, 2, mode="edge")
    depth = np.median(np.stack([padded[i:i + cols] for i in range(5)]), axis=0)
    return (np.arange(rows)[:, None] < depth[None, :]) & paint
