"""Scene words: "sky" from a smooth blue top, "black and white" from a frame without colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.visual import render as render_mod
from model.visual import tokenizer as tok_mod
from model.visual.colours import MASK_SIZE
from model.visual.scene import scene_words
from model.visual.vocab import load_vocab


def _landscape(sky=(90, 150, 230), horizon=(200, 220, 240), ground=(40, 110, 40), noise=4.0, seed=0,
               size=(800, 600)) -> Image.Image:
    """A sky gradient over a textured ground with a house on it."""
    w, h = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    top = np.array(sky) * (1 - y) + np.array(horizon) * y
    bottom = np.array(ground) * (1 - 0.5 * y)
    arr = np.where(y < 0.5, top, bottom) * np.ones((1, w, 1))
    arr[h // 2:] += rng.normal(0, 40, arr[h // 2:].shape)  # grass is texture
    arr += rng.normal(0, noise, arr.shape)  # sensor noise everywhere
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    ImageDraw.Draw(img).rectangle((w * 0.6, h * 0.35, w * 0.8, h * 0.6), fill=(150, 60, 40))
    return img


def test_a_blue_sky_is_named_and_its_mask_is_above_the_horizon():
    [word] = scene_words(_landscape())
    assert word.text == "sky"
    assert word.mask.shape == (MASK_SIZE, MASK_SIZE) and word.mask.dtype == np.float32
    assert 0.3 < word.weight < 0.55  # about the top half, less the house's roof
    assert word.mask[: MASK_SIZE // 3].mean() > 0.9  # the top third is sky...
    assert word.mask[2 * MASK_SIZE // 3:].max() == 0  # ...and nothing below the horizon is


def test_the_sky_follows_the_horizon_takes_in_its_clouds_and_leaves_out_what_stands_in_front():
    img = _landscape()
    draw = ImageDraw.Draw(img)
    draw.polygon([(0, 300), (800, 150), (800, 600), (0, 600)], fill=(50, 110, 40))  # a hill rising to the right
    draw.ellipse((60, 60, 260, 140), fill=(245, 245, 250))  # a white cloud
    draw.rectangle((420, 20, 520, 120), fill=(200, 40, 40))  # a red balloon
    draw.rectangle((40, 340, 300, 390), fill=(90, 150, 230))  # a pond on the hill, as blue as the sky
    [word] = scene_words(img)
    m = word.mask  # 32 x 32 over the 800 x 600 frame: 25 px a column, 18.75 px a row
    assert m[3:7, 3:10].mean() > 0.9  # the cloud is sky
    assert m[1:6, 17:20].max() == 0  # the balloon is not
    assert m[10:14, 1:4].mean() > 0.9 and m[6:8, 29:31].mean() > 0.9  # down to the hill on the left and right
    assert m[18:, 1:4].max() == 0 and m[10:, 29:31].max() == 0  # and not below it
    assert m[18:21, 2:12].max() == 0  # the pond below the horizon is not sky


def test_no_sky_without_one():
    grey_sky = _landscape(sky=(200, 200, 205), horizon=(215, 215, 220))  # overcast: as often a white wall
    grass_on_top = _landscape().transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # blue at the bottom: a lake
    leaves = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    blue_texture = Image.fromarray(  # blue, but textured all over (denim, waves up close)
        np.clip(np.array([60, 110, 200]) + np.random.default_rng(2).normal(0, 60, (300, 400, 3)), 0, 255).astype(np.uint8))
    for img in (grey_sky, grass_on_top, leaves, blue_texture):
        assert scene_words(img) == []


def test_a_vignette_at_the_top_edge_does_not_hide_the_sky():
    img = _landscape()
    ImageDraw.Draw(img).rectangle((0, 0, 800, 4), fill=(10, 10, 20))  # a dark first row of pixels
    assert [w.text for w in scene_words(img)] == ["sky"]


def test_a_picture_without_colour_is_black_and_white():
    grey = _landscape().convert("L").convert("RGB")
    [word] = scene_words(grey)
    assert word.text == "black and white, monochrome" and word.weight == 1.0 and word.mask.min() == 1.0
    # A blank frame (white, grey, black, a transparent picture read as black) is no black-and-white photo.
    for blank in ("white", (128, 128, 128), "black"):
        assert scene_words(Image.new("RGB", (300, 200), blank)) == []
    # A dark photo with one small coloured flower is not black and white.
    flower = grey.copy()
    ImageDraw.Draw(flower).ellipse((100, 400, 180, 480), fill=(160, 60, 200))
    assert "black and white, monochrome" not in [w.text for w in scene_words(flower)]


def test_render_doc_writes_scene_words_after_the_people():
    vocab = load_vocab()
    text, spans = render_mod.render_doc([(281, 0.6)], [("blue", 0.5)], [], vocab=vocab, people=["person", "face"],
                                        scene=["sky"])
    assert text.endswith("; person, face; sky. colors: blue")
    scene = [s for s in spans if s.kind == "scene"]
    assert [(text[s.start:s.end], s.item) for s in scene] == [("sky", 0)]
    assert render_mod.render_doc([(281, 0.6)], [("blue", 0.5)], [], vocab=vocab) == render_mod.render_doc(
        [(281, 0.6)], [("blue", 0.5)], [], vocab=vocab, scene=[])
    with pytest.raises(ValueError, match=r"scene\[0\] is empty"):
        render_mod.render_doc([], [("blue", 1.0)], [], vocab=vocab, scene=[" "])


@pytest.fixture(scope="module")
def classifier():
    from model.visual.classifier import get_classifier

    return get_classifier()


def test_the_tokenizer_writes_scene_tokens_with_their_region(classifier):
    tk = tok_mod.VisualTokenizer(classifier=classifier, people=False)
    [doc] = tk.tokenize([_landscape()], ocr=False)
    [token] = [t for t in doc.tokens if t.kind == "scene"]
    assert token.text == "sky" and doc.text[token.span[0]:token.span[1]] == "sky"
    assert token.region.dtype == np.float16 and token.region.shape == (MASK_SIZE, MASK_SIZE)
    assert "; sky. colors: " in doc.text or doc.text.startswith("sky. colors: ")
    off = tok_mod.VisualTokenizer(classifier=classifier, people=False, scene=False)
    [plain] = off.tokenize([_landscape()], ocr=False)
    assert "sky" not in plain.text and not [t for t in plain.tokens if t.kind == "scene"]


def test_no_scene_words_on_a_picture_with_readable_text(classifier):
    from model.visual.ocr import OcrWord

    def fake_ocr(img):
        return [OcrWord("Settings", (0.1, 0.1, 0.3, 0.15), 0.99)]

    tk = tok_mod.VisualTokenizer(classifier=classifier, people=False, ocr_fn=fake_ocr)
    [doc] = tk.tokenize([_landscape()], ocr=True)
    assert "text: Settings" in doc.text and "sky" not in doc.text


def test_scene_switch(monkeypatch, classifier):
    monkeypatch.setenv(tok_mod.SCENE_ENV, "0")
    assert tok_mod.VisualTokenizer(classifier=classifier, people=False).scene is False
    monkeypatch.setenv(tok_mod.SCENE_ENV, "1")
    assert tok_mod.VisualTokenizer(classifier=classifier, people=False).scene is True
    monkeypatch.setenv(tok_mod.SCENE_ENV, "maybe")
    with pytest.raises(ValueError, match="METAEMBED_SCENE"):
        tok_mod.VisualTokenizer(classifier=classifier, people=False)



def test_the_checkpoint_decides_whether_photos_get_scene_words(monkeypatch):
    """A checkpoint's config says how it reads photos (`scene_words`), so its indexes are never a mix of two
    readings; $METAEMBED_SCENE overrides it for experiments."""
    from model.backbones import LazyFrontEnd
    from model.config import MetaEmbedConfig

    monkeypatch.delenv(tok_mod.SCENE_ENV, raising=False)
    texts = {on: LazyFrontEnd("visual-tokenizer", scene_words=on).tokenize([_landscape()])[0].text for on in (False, True)}
    assert "sky" in texts[True] and "sky" not in texts[False]
    monkeypatch.setenv(tok_mod.SCENE_ENV, "0")
    assert "sky" not in LazyFrontEnd("visual-tokenizer", scene_words=True).tokenize([_landscape()])[0].text
    assert MetaEmbedConfig().scene_words is False  # older checkpoints read photos as they did
    with pytest.raises(ValueError, match="scene_words needs the visual-tokenizer front end"):
        MetaEmbedConfig(scene_words=True)
    with pytest.raises(ValueError, match="scene_words must be true or false"):
        MetaEmbedConfig(front_end="visual-tokenizer", scene_words="yes")
