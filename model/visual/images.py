"""Image mode handling shared by the visual tokenizer's stages (no torch here: OCR imports it)."""

from __future__ import annotations

import numpy as np
from PIL import Image

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any PIL image: transparency is composited onto white (transparent pixels are
    background, and RGBA's hidden colour channels are often junk), and 16-bit / float greyscale is scaled by
    its own range (a plain convert would clip everything above 255 to white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = np.nan_to_num((arr - lo) / max(hi - lo, 1e-12) * 255.0, nan=0.0)
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")
