"""Text cards: the thumbnails of text passages in the result and collection galleries."""

import numpy as np
import pytest
from PIL import Image

from app.service.thumbnails import _font_files, card_font, text_card


def glyph(font, ch: str) -> bytes:
    mask = font.getmask(ch)
    return bytes(np.asarray(mask)) + bytes(str(mask.size), "ascii")


def test_accented_letters_and_dashes_are_drawn_not_boxed():
    """UX review: a German file's card read "Gr��e": Pillow's own font has no ü, ß, é, — or …."""
    if not any(p.is_file() for p in _font_files()):
        pytest.skip("no DejaVu Sans here (opencv-python's wheel or fonts-dejavu-core carry it)")
    font = card_font(15)
    missing = glyph(font, "\ue000")  # a private-use code point: no font draws it, so this is the box
    assert all(glyph(font, ch) != missing for ch in "üßé—…Ωж"), "a letter was drawn as the missing-glyph box"
    card = text_card("Grüße.txt", "Grüße aus Köln — café au lait.")
    assert isinstance(card, Image.Image) and card.size == (320, 320)
