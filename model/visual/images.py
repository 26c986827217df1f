"""Image mode handling shared by the visual tokenizer's stages and by the app's ingest, so a photo reads the
same to both (no torch here: OCR imports it)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any PIL image.

    Transparency is composited onto white: transparent pixels are background, and RGBA's hidden colour
    channels are often junk. Integer samples deeper than 8 bits (modes I, I;16*) are read as 16-bit and
    divided by 257, the standard 16->8 bit mapping (65535 -> 255), so the picture looks as it was taken: a
    dark scan stays dark rather than being stretched to its own range, and a plain convert would clip
    everything above 255 to white. Float images (mode F) have no fixed scale, so they are stretched over
    their finite range, NaN reading as black.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = np.nan_to_num((arr - lo) / max(hi - lo, 1e-12) * 255.0, nan=0.0)
        return _grey_to_rgb(scaled)
    if img.mode == "I" or img.mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    return img.convert("RGB")


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    """Grey levels on the 0..255 scale (out-of-range values clipped) as an RGB image."""
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L").convert("RGB")
