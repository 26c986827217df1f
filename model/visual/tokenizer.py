"""Visual tokenizer: an image becomes a short text document (concepts, colours, OCR words) for MiniLM.

    doc = VisualTokenizer().tokenize([img])[0]
    doc.text    -> "tabby, tabby cat, domestic cat, cat, animal. colors: gray, white"
    doc.tokens  -> one VisualToken per concept / people word / colour / OCR word, with its char span in doc.text
                   and where it is in the image (a heat map over the whole image, or boxes)

People: ImageNet has no class for a person, so faces found by `people.py` (RetinaFace) add words such as
"person", "face", "two people", "group of people", "crowd", "portrait" after the concepts, each carrying the
face boxes it stands for. `VisualTokenizer(people=False)` or METAEMBED_PEOPLE=0 turns them off.

Scene: what no ImageNet class says about the whole frame ("sky", "black and white, monochrome"), from where its
colours are (`scene.py`), written after the people with the pixels they stand for as their region; never on a
picture with readable text. A checkpoint asks for them in its config (`scene_words`, model/backbones passes it
on), and METAEMBED_SCENE=0 / 1 overrides the checkpoint; `VisualTokenizer(scene=...)` sets them directly
(None: $METAEMBED_SCENE, else on).

Entry-level names: with `VisualTokenizer(entry_names=True)` each concept also says what people call it ("drake,
duck, ..."; vocab.py, `concept_terms`). A checkpoint asks for them in its config (`entry_names`), and
METAEMBED_ENTRY_NAMES=0 / 1 overrides it (MetaEmbedConfig.reads_entry_names, which the class prior reads too).

The text format is produced by ONE function, `render_doc` (render.py), which both this tokenizer and the
synthetic training-data generator (model/recipes/mini/photo_pairs.py) call, so training sees the format the
app indexes (scene words and entry-level names excepted: the generator does not make them).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from ..class_prior import TOP_CLASSES
from ..config import env_switch, image_threads
from .classifier import (
    INPUT_SIZE,
    classifier_crops,
    get_classifier,
    predict_crops,
    preprocess,
    reads_an_object,
)
from .colours import MASK_SIZE, dominant_colours, thumbnail_rgb
from .images import to_rgb
from .ocr import ocr_image, text_gate, text_stroke_score
from .people import PeopleDetectorUnavailable, get_face_detector, people_terms
from .render import render_doc
from .scene import scene_words
from .vocab import ImageNetVocab, load_vocab

log = logging.getLogger(__name__)

TokenKind = Literal["concept", "people", "scene", "colour", "ocr"]

CANDIDATE_CONCEPTS = 8  # top-k classes handed to render_doc, which applies the threshold and cap


@dataclass
class VisualToken:
    """One unit of a visual doc.

    text: exactly doc.text[span[0]:span[1]].
    kind: "concept" (an ImageNet class with its synonyms/hypernyms), "people" (a people word: "person",
      "group of people", ...), "scene" ("sky", "black and white, monochrome"), "colour" or "ocr" (one word).
    weight: class probability, mean face score, scene or colour area fraction, or OCR confidence.
    region: float16 heat map over the WHOLE image (rows top->bottom, cols left->right), values 0..1, or None.
      Concepts: the class-activation maps (7x7 over each of the classifier's square crops) resampled to
      MASK_SIZE x MASK_SIZE over the full frame, each scaled by how sure its crop is of the class relative to
      the surest crop, the maximum where crops overlap. Scene words and colours: area coverage at MASK_SIZE x MASK_SIZE.
    box: OCR words, and people words that stand for one face: (x0, y0, x1, y1) normalised to 0..1 of the image.
    boxes: people words: every face box the word stands for (same format), or None.
    class_index: concepts only: the ImageNet class.
    """

    text: str
    kind: TokenKind
    weight: float
    span: tuple[int, int]
    region: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    class_index: int | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None


@dataclass
class VisualDoc:
    """An image as text: `text` goes to MiniLM, `tokens` explain which part of the image each span is."""

    text: str
    tokens: list[VisualToken] = field(default_factory=list)
    ocr_ran: bool = False
    size: tuple[int, int] = (0, 0)  # original (width, height)
    # The classifier's TOP_CLASSES most probable classes, (class index, probability), most probable first,
    # including those below the naming threshold: what it believed, which the class prior reads.
    class_probs: tuple[tuple[int, float], ...] = ()


WORK_LONG_SIDE = 640  # the text gate's resolution
WORK_SHORT_SIDE = 224  # the classifier's input (lite0; larger variants ask for more)


def _draft_decode(img: Image.Image, short_side: int = WORK_SHORT_SIDE) -> Image.Image | None:
    """A reduced-scale decode of a not-yet-loaded JPEG file (libjpeg scales in the DCT domain: 4x cheaper
    than a full 1600x1200 decode), from a second handle on the file, so the caller's image is untouched and
    is fully decoded later only if OCR needs it."""
    filename = getattr(img, "filename", "")
    if img.format != "JPEG" or not filename or not getattr(img, "tile", None):
        return None
    w, h = img.size
    scale = max(WORK_LONG_SIDE / max(w, h), short_side / min(w, h))
    if scale >= 0.5:
        return None
    try:
        small = Image.open(filename)
        if small.size != img.size:
            return None
        small.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        small.load()
        return small
    except OSError:
        return None


def _working_copy(img: Image.Image, short_side: int = WORK_SHORT_SIDE) -> Image.Image:
    """RGB copy, reduced while it stays >= 640 px on the long and >= `short_side` px (the classifier's input)
    on the short side (what the text gate and the classifier need); much cheaper than resizing a full photo
    several times."""
    short_side = max(short_side, WORK_SHORT_SIDE)
    src = _draft_decode(img, short_side) or img
    src.load()
    rgb = to_rgb(src)
    factor = max(1, min(max(rgb.size) // WORK_LONG_SIDE, min(rgb.size) // short_side))
    return rgb.reduce(factor) if factor > 1 else rgb


SIDE_FADE_CELLS = 1.5  # CAM cells (of 7 across the square) over which a one-crop map fades beyond it


def _cam_to_frame(cam: np.ndarray, crop_box: tuple[float, float, float, float], size: int = MASK_SIZE,
                  fade: float = 0.0) -> np.ndarray:
    """Resample a [g, g] map covering `crop_box` (normalised) onto a [size, size] grid over the whole image
    (bilinear, cell centres). Zero outside the crop; with `fade` > 0, the crop's edge values fade linearly to
    zero over `fade` CAM cells beyond it instead."""
    g = cam.shape[0]
    centres = (np.arange(size) + 0.5) / size

    def weights(lo: float, hi: float) -> np.ndarray:
        pos = (centres - lo) / max(hi - lo, 1e-9) * g - 0.5  # position in CAM cell units; the crop is -0.5..g-0.5
        beyond = np.maximum(np.maximum(-0.5 - pos, pos - (g - 0.5)), 0.0)  # cells outside the crop's edge
        keep = np.clip(1.0 - beyond / fade, 0.0, 1.0) if fade > 0 else (beyond == 0).astype(np.float32)
        pos = np.clip(pos, 0, g - 1)
        left = np.floor(pos).astype(int)
        right = np.minimum(left + 1, g - 1)
        frac = pos - left
        w = np.zeros((size, g), np.float32)
        w[np.arange(size), left] += 1 - frac
        w[np.arange(size), right] += frac
        return w * keep[:, None]

    x0, y0, x1, y1 = crop_box
    return np.clip(weights(y0, y1) @ cam @ weights(x0, x1).T, 0.0, 1.0)


@dataclass
class _Prepared:
    inputs: np.ndarray  # classifier inputs [K, 3, S, S], one per square crop
    crop_boxes: list[tuple[float, float, float, float]]
    colours: list
    stroke: float
    faces: list = field(default_factory=list)  # people.Face, when people detection is on
    scene: list = field(default_factory=list)  # scene.SceneWord, when scene words are on


PEOPLE_ENV = "METAEMBED_PEOPLE"
SCENE_ENV = "METAEMBED_SCENE"


def _people_detector(people: bool | None):
    """The face detector the tokenizer uses (see VisualTokenizer's `people`), or None when people are off."""
    if people is None:
        people = env_switch(PEOPLE_ENV)  # unset: on when installed
    if people is False:
        return None
    try:
        return get_face_detector()
    except PeopleDetectorUnavailable as exc:
        if people:
            raise
        _warn_no_people(str(exc))
        return None


@functools.lru_cache(maxsize=1)
def _warn_no_people(message: str) -> None:
    log.warning("visual tokenizer: no people words: %s", message)


class VisualTokenizer:
    """Images -> VisualDocs. Loads the classifier on construction; OCR models load on first OCR.

    overlap: prepare (decode, resize, colours, text statistic) the next chunk of `classifier.batch_size`
    images in a worker thread while the classifier runs on the current one. Off by default: on 2 cores the
    classifier already keeps both busy and the extra thread measured no faster (bench/visual.py).
    people: find faces and write people words (people.py). True = required (PeopleDetectorUnavailable, an
    ImportError naming the pip package, when it is missing), False = off, None = $METAEMBED_PEOPLE ("0" off,
    "1" required), else on when its package is installed (a warning once when it is not).
    scene: write scene words (scene.py). None = $METAEMBED_SCENE ("0" off), else on.
    entry_names: each concept also says its entry-level name ("duck" for a drake; vocab.concept_terms).
    classifier: the ImageNet classifier; by default the shared one, whose variant $METAEMBED_CLASSIFIER picks.
    """

    def __init__(self, classifier=None, vocab: ImageNetVocab | None = None, ocr_fn=None, overlap: bool = False,
                 people: bool | None = None, face_detector=None, scene: bool | None = None,
                 entry_names: bool = False):
        self.classifier = classifier or get_classifier()
        self.vocab = vocab or load_vocab()
        self.ocr_fn = ocr_image if ocr_fn is None else ocr_fn
        self.overlap = overlap
        self.face_detector = face_detector if face_detector is not None else _people_detector(people)
        # The words OCR read in the last images, by their pixels: the app reads a screenshot again to explain a
        # match, and its OCR (about a second) was most of that wait.
        self._ocr_memo: OrderedDict[tuple, list] = OrderedDict()
        self._ocr_lock = threading.Lock()
        self.scene = env_switch(SCENE_ENV) is not False if scene is None else bool(scene)
        self.entry_names = entry_names

    def tokenize(self, images: list[Image.Image], ocr: bool | Literal["auto"] = "auto") -> list[VisualDoc]:
        """One VisualDoc per image. ocr: True = always, False = never, "auto" = where the text gate fires
        (ocr.text_gate: stroke statistic or classifier mass on text-bearing classes)."""
        if ocr not in (True, False, "auto"):
            raise ValueError(f"tokenize: ocr must be True, False or 'auto', got {ocr!r}")
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"tokenize: images must be a list of PIL images, got {type(images).__name__}")
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise ValueError(f"tokenize: images[{i}] is a {type(img).__name__}, not a PIL.Image.Image")
        chunk = self.classifier.batch_size
        starts = list(range(0, len(images), chunk))
        docs: list[VisualDoc] = []
        if not self.overlap or len(starts) < 2:
            for start in starts:
                prepared = self._prepare(images, start, start + chunk, ocr == "auto")
                docs += self._finish(images, start, prepared, ocr)
            return docs
        # Decode/resize the next chunk (PIL and numpy release the GIL) while the classifier runs this one.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="visual-prep") as pool:
            pending = pool.submit(self._prepare, images, 0, chunk, ocr == "auto")
            for n, start in enumerate(starts):
                prepared = pending.result()
                if n + 1 < len(starts):
                    pending = pool.submit(self._prepare, images, starts[n + 1], starts[n + 1] + chunk, ocr == "auto")
                docs += self._finish(images, start, prepared, ocr)
        return docs

    def _prepare(self, images, start: int, stop: int, want_stroke: bool) -> list[_Prepared]:
        size = getattr(self.classifier, "input_size", INPUT_SIZE)
        indices = range(start, min(stop, len(images)))
        # Each distinct image once: the same object twice in a batch must not be decoded by two threads at once.
        first = {id(images[i]): i for i in reversed(indices)}
        todo = sorted(first.values())
        threads = min(len(todo), image_threads())
        if threads < 2:
            done = [self._prepare_one(images[i], i, size, want_stroke) for i in todo]
        else:
            # One photo per thread: decoding, resizing, the text statistic, colours and the face detector
            # release the GIL, and together they are the largest share of a photo's encoding time (~33 of
            # ~100 ms of CPU in the upload path; docs/benchmarks.md, "Photo indexing speed").
            with ThreadPoolExecutor(threads, thread_name_prefix="visual-prepare") as pool:
                done = list(pool.map(lambda i: self._prepare_one(images[i], i, size, want_stroke), todo))
        prepared = dict(zip(todo, done, strict=True))
        return [prepared[first[id(images[i])]] for i in indices]

    def _prepare_one(self, img, i: int, size: int, want_stroke: bool) -> _Prepared:
        try:
            work = _working_copy(img, size)
        except (OSError, ValueError) as exc:
            raise ValueError(f"tokenize: images[{i}] cannot be decoded: {exc}") from exc
        if work.width < 1 or work.height < 1:
            raise ValueError(f"tokenize: images[{i}] is empty ({img.size})")
        crops = classifier_crops(work)
        inputs, boxes = preprocess(work, size, crops)
        stroke = text_stroke_score(work) if want_stroke else 0.0
        faces = self.face_detector.detect(work) if self.face_detector is not None else []
        # A product shot's colours are its object's, not the plain background's that fills most of the frame.
        thumb = thumbnail_rgb(work)  # what the colour and scene rules read
        colours = dominant_colours(work, within=boxes[0] if reads_an_object(work, crops) else None, thumbnail=thumb)
        scene = scene_words(work, thumbnail=thumb) if self.scene else []
        return _Prepared(inputs, boxes, colours, stroke, faces, scene)

    def _finish(self, images, start: int, prepared: list[_Prepared], ocr) -> list[VisualDoc]:
        merged, crop_probs, features = predict_crops(self.classifier.predict, [p.inputs for p in prepared])
        docs = []
        for k, prep in enumerate(prepared):
            run_ocr = ocr is True or (ocr == "auto" and text_gate(prep.stroke, merged[k]))
            docs.append(self._doc(images[start + k], prep, merged[k], crop_probs[k], features[k], run_ocr))
        return docs

    def _read_text(self, img: Image.Image) -> list:
        """`ocr_fn(img)`, remembered for the last OCR_MEMO_SIZE images by their pixels."""
        key = _pixels_key(img)
        with self._ocr_lock:
            if key in self._ocr_memo:
                self._ocr_memo.move_to_end(key)
                return list(self._ocr_memo[key])
        words = self.ocr_fn(img)
        with self._ocr_lock:
            self._ocr_memo[key] = list(words)
            while len(self._ocr_memo) > OCR_MEMO_SIZE:
                self._ocr_memo.popitem(last=False)
        return words

    def _doc(self, img, prep: _Prepared, probs, crop_probs, features, run_ocr: bool) -> VisualDoc:
        ranked = np.argsort(-probs, kind="stable")[:max(CANDIDATE_CONCEPTS, TOP_CLASSES)]  # one sort for both
        concepts = [(int(c), float(probs[c])) for c in ranked[:CANDIDATE_CONCEPTS]]
        colours = prep.colours
        words = []
        if run_ocr:
            try:
                words = self._read_text(img)
            except Exception as exc:  # OCR is best-effort: a failure must not lose the image's other words
                log.warning("OCR failed on a %sx%s image: %s", img.width, img.height, exc)
                words = []
        people = people_terms(prep.faces)
        # A picture with readable text is a screenshot, a slide or a page: its blue is not a sky.
        scene = [] if words else prep.scene
        text, spans = render_doc(
            concepts, [(c.name, c.fraction) for c in colours], [w.text for w in words], vocab=self.vocab,
            people=[t.text for t in people], scene=[w.text for w in scene], entry_names=self.entry_names,
        )
        concept_spans = [s for s in spans if s.kind == "concept"]
        cams = {}
        if concept_spans:
            classes = [concepts[s.item][0] for s in concept_spans]
            maps = self.classifier.cams(features, [classes] * len(features))  # per crop: [len(classes), 7, 7]
            class_probs = crop_probs[:, classes]
            sureness = class_probs / np.maximum(class_probs.max(axis=0), 1e-12)
            # A photo read through its centre square alone: the strips beside it were not seen, so the map fades
            # out across them instead of stopping at a hard edge that looked like a frame drawn on the photo.
            fade = SIDE_FADE_CELLS if len(prep.crop_boxes) == 1 else 0.0
            for j, c in enumerate(classes):
                cams[c] = np.max([_cam_to_frame(m[j], box, fade=fade) * sure[j]
                                  for m, box, sure in zip(maps, prep.crop_boxes, sureness, strict=True)], axis=0)
        tokens = []
        for s in spans:
            piece = text[s.start : s.end]
            if s.kind == "concept":
                cls, prob = concepts[s.item]
                tokens.append(VisualToken(piece, "concept", prob, (s.start, s.end),
                                          region=cams[cls].astype(np.float16), class_index=cls))
            elif s.kind == "people":
                term = people[s.item]
                tokens.append(VisualToken(piece, "people", term.weight, (s.start, s.end),
                                          box=term.boxes[0] if len(term.boxes) == 1 else None, boxes=term.boxes))
            elif s.kind == "scene":
                w = scene[s.item]
                tokens.append(VisualToken(piece, "scene", w.weight, (s.start, s.end),
                                          region=w.mask.astype(np.float16)))
            elif s.kind == "colour":
                c = colours[s.item]
                tokens.append(VisualToken(piece, "colour", c.fraction, (s.start, s.end),
                                          region=c.mask.astype(np.float16)))
            else:
                w = words[s.item]
                tokens.append(VisualToken(piece, "ocr", float(w.score), (s.start, s.end), box=tuple(w.box)))
        return VisualDoc(text=text, tokens=tokens, ocr_ran=run_ocr, size=img.size,
                         class_probs=tuple((int(c), float(probs[c])) for c in ranked[:TOP_CLASSES]))


OCR_MEMO_SIZE = 64  # images whose words are kept (a few KB each)


def _pixels_key(img: Image.Image) -> tuple:
    """The image's pixels as a key: size, mode and a 128-bit hash of every byte, and of the palette of a
    palette image (two screenshots that differ in one word must not share their words)."""
    digest = hashlib.blake2b(img.tobytes(), digest_size=16)
    if img.mode in ("P", "PA"):
        digest.update(bytes(img.getpalette() or []))
    return img.size, img.mode, digest.digest()


def image_class_probabilities(img: Image.Image) -> np.ndarray:
    """The classifier's [1000] probabilities for one image, preprocessed and merged over its crops exactly
    as tokenize() does (for calibrating the synthetic training-data generator)."""
    classifier = get_classifier()
    inputs, _ = preprocess(_working_copy(img, classifier.input_size), classifier.input_size)
    return predict_crops(classifier.predict, [inputs])[0][0]
