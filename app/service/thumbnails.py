"""Thumbnails for the result gallery: photos and pages as stored, text passages as a rendered card."""

from __future__ import annotations

import functools
import importlib.util
import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Pillow's own font (Aileron) draws no ü, ß, é, — or …: a German or French file's card showed boxes. DejaVu
# Sans draws them (and Greek and Cyrillic); it ships inside opencv-python's wheel (a dependency of RapidOCR)
# and in Debian's fonts-dejavu-core. Without either, Pillow's font as before.
_SYSTEM_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font_files() -> list[Path]:
    spec = importlib.util.find_spec("cv2")  # found, not imported
    cv2_dir = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return [d / "qt" / "fonts" / "DejaVuSans.ttf" for d in cv2_dir] + [_SYSTEM_DEJAVU]


@functools.lru_cache(maxsize=4)
def card_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The text cards' font at `size` px: DejaVu Sans where it is installed, else Pillow's default."""
    for path in _font_files():
        if path.is_file():
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:  # a damaged file: try the next
                continue
    return ImageFont.load_default(size=size)


def text_card(title: str, text: str, size: tuple[int, int] = (320, 320)) -> Image.Image:
    """A thumbnail for a text passage: its file name and first lines."""
    img = Image.new("RGB", size, (248, 250, 252))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0] - 1, 36], fill=(226, 232, 240))
    title_font, body_font = card_font(17), card_font(15)
    draw.text((12, 9), _ellipsis(title, 30), fill=(30, 41, 59), font=title_font)
    y = 48
    for line in textwrap.wrap(" ".join(text.split()), width=34)[:12]:
        draw.text((12, y), line, fill=(51, 65, 85), font=body_font)
        y += 21
    return img


def _ellipsis(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def page_top(jpeg: bytes) -> bytes:
    """The top of a portrait page as a square: the gallery crops to squares, and a page's middle says little."""
    try:
        img = Image.open(io.BytesIO(jpeg))
        img.load()
    except OSError:
        return jpeg
    w, h = img.size
    if h <= 1.15 * w:
        return jpeg
    buf = io.BytesIO()
    img.convert("RGB").crop((0, 0, w, w)).save(buf, "JPEG", quality=85)
    return buf.getvalue()
