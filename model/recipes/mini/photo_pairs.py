"""Synthetic (query, photo-doc) pairs that look like what the visual tokenizer emits on real photos.

A synthetic photo is one or two true ImageNet concepts plus the classifier's typical confusions (classes
whose output-layer rows are most similar to the true class's), with probabilities drawn from what the
classifier really outputs on photos, dominant colours, and sometimes text. It is rendered with the
tokenizer's own `render_doc` (model/visual/render.py), so training sees the format the app indexes (without
its scene words, "sky" and "black and white", which no synthetic photo has, and without entry-level names).
Queries are written the ways people search photos: a name or synonym, a more general word (dog -> animal), a
colour plus a thing, two things together, a phrase from the WordNet gloss. Hard negatives are a sibling
concept (same parent, so the query's specific word decides) or the same thing in other colours.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from ...visual.colours import BASIC_COLOURS
from ...visual.vocab import ImageNetVocab

# Quantiles (10, 25, 50, 75, 90 %) of the classifier's top-1..top-4 probabilities on 84 Debian wallpaper
# photos that are in neither the dev set nor the samples (measured 2026-11-21 with model.visual.classifier).
TOP_QUANTILES = np.array([
    [0.070, 0.036, 0.022, 0.010],
    [0.132, 0.049, 0.031, 0.020],
    [0.248, 0.080, 0.043, 0.031],
    [0.455, 0.134, 0.061, 0.047],
    [0.723, 0.183, 0.090, 0.056],
])
QUANTILE_LEVELS = np.array([0.10, 0.25, 0.50, 0.75, 0.90])

COLOURS = list(BASIC_COLOURS)

TEMPLATES_ONE = [
    "{t}", "{t}", "{t}", "a {t}", "photo of a {t}", "picture of a {t}", "my {t}", "the {t}", "{t} photo",
    "a photo with a {t}", "image of {t}", "find the {t}", "{ts}", "some {ts}", "close-up of a {t}",
]
TEMPLATES_COLOUR = ["{c} {t}", "a {c} {t}", "{t} in {c}", "{c} {t} photo", "{t} that is {c}"]
TEMPLATES_TWO = ["{t} and {u}", "{t} with {u}", "{t} next to a {u}", "{t} near {u}", "a {t} and a {u}"]
TEMPLATES_TEXT = ["{w}", "sign that says {w}", "text {w}", "{w} written on it", "picture with the word {w}"]


@dataclass
class PhotoSim:
    vocab: ImageNetVocab
    neighbours: np.ndarray  # [1000, K] most similar classes by classifier weight rows
    render: object  # model.visual.render.render_doc
    class_weights: np.ndarray  # sampling weights over classes (flattens the 120 dog breeds)
    words: list[str]  # a lexicon for synthetic OCR text
    min_prob: float = 0.08  # the tokenizer's threshold for emitting a concept (CONCEPT_MIN_PROB_OTHERS)

    @classmethod
    def build(cls, render, fc_weight: np.ndarray, vocab: ImageNetVocab, words: list[str], k: int = 12,
              min_prob: float = 0.08):
        w = fc_weight / np.linalg.norm(fc_weight, axis=1, keepdims=True)
        sim = w @ w.T
        np.fill_diagonal(sim, -1)
        neighbours = np.argsort(-sim, axis=1)[:, :k]
        # Weight classes by 1/sqrt(size of their nearest named group): ImageNet's 120 dog breeds would
        # otherwise make 12% of all photos dogs.
        parent = [c.hypernym_ids[0] if c.hypernym_ids else c.wnid for c in vocab.classes]
        counts = {p: parent.count(p) for p in set(parent)}
        weights = np.array([1 / np.sqrt(counts[p]) for p in parent])
        return cls(vocab, neighbours, render, weights / weights.sum(), words, min_prob)

    def _probs(self, rng: random.Random) -> list[float]:
        u = rng.random()
        row = [float(np.interp(u, QUANTILE_LEVELS, TOP_QUANTILES[:, j])) for j in range(4)]
        jitter = [max(1e-4, p * rng.uniform(0.7, 1.3)) for p in row]
        return sorted(jitter, reverse=True)

    def photo(self, rng: random.Random, true: list[int] | None = None, colours: list[str] | None = None,
              words: list[str] | None = None) -> tuple[str, list[int], list[str], list[str]]:
        """A synthetic photo doc. Returns (text, true classes, colour names, OCR words)."""
        nrng = np.random.default_rng(rng.randrange(2**32))
        if true is None:
            true = [int(nrng.choice(1000, p=self.class_weights))]
            if rng.random() < 0.3:
                true.append(int(nrng.choice(1000, p=self.class_weights)))
        probs = self._probs(rng)
        concepts: list[tuple[int, float]] = []
        # The true class usually wins, but not always: the classifier ranks it 2nd or 3rd fairly often.
        slots = list(range(4))
        main_slot = 0 if rng.random() < 0.75 else rng.choice([1, 2])
        assigned = {main_slot: true[0]}
        if len(true) > 1:
            assigned[rng.choice([s for s in slots if s != main_slot])] = true[1]
        confusions = [int(x) for x in self.neighbours[true[0]] if int(x) not in true]
        rng.shuffle(confusions)
        for s in slots:
            cls = assigned.get(s)
            if cls is None:
                cls = confusions.pop() if confusions and rng.random() < 0.8 else int(nrng.integers(1000))
            if cls not in [c for c, _ in concepts]:
                concepts.append((cls, probs[s]))
        # A true concept must be visible in the doc (emitted by the tokenizer), else the pair is unlearnable.
        concepts = [(c, max(p, self.min_prob * rng.uniform(1.0, 1.6)) if c in true else p) for c, p in concepts]
        concepts.sort(key=lambda cp: -cp[1])
        if colours is None:
            colours = rng.sample(COLOURS, rng.choice([1, 2, 2, 3]))
        fracs = sorted((rng.uniform(0.08, 0.7) for _ in colours), reverse=True)
        if words is None:
            words = rng.sample(self.words, rng.randint(1, 4)) if rng.random() < 0.08 else []
        # The tokenizer writes "light"/"dark" before chromatic colours; queries mostly say the plain word.
        shown = [(rng.choice(["light ", "dark ", "", "", ""]) if c not in ("black", "white", "gray") else "") + c
                 for c in colours]
        text = self.render(concepts, list(zip(shown, fracs)), words)[0]
        return text, true, colours, words

    def _term(self, cls: int, rng: random.Random) -> tuple[str, str | None, bool]:
        """A word for class `cls`, the hypernym id it names (if it is a general word), and whether it is
        a gloss phrase (which reads as a query on its own, without a template)."""
        c = self.vocab.classes[cls]
        r = rng.random()
        usable = [h for h in c.hypernym_ids if self.vocab.nodes[h].score >= 2.0]
        if r < 0.5 or not usable:
            return rng.choice(c.names[:3]), None, False
        if r < 0.9:
            h = rng.choice(usable[:4])
            return self.vocab.nodes[h].names[0], h, False
        gloss = c.gloss.split(";")[0].split()
        return " ".join(gloss[: rng.randint(3, 8)]), None, True

    def _tags(self, classes: list[int]) -> list[str]:
        return sorted({t for c in classes for t in (self.vocab.classes[c].wnid, *self.vocab.classes[c].hypernym_ids)})

    def pair(self, rng: random.Random) -> dict:
        text, true, colours, words = self.photo(rng)
        kind = rng.random()
        main = true[0]
        term, hyper, is_gloss = self._term(main, rng)
        if words and kind < 0.5:
            query = rng.choice(TEMPLATES_TEXT).format(w=" ".join(words[:2]))
            neg_text = self.photo(rng, true=[main], colours=colours, words=rng.sample(self.words, len(words)))[0]
            return {"query": query, "positive": text, "negative": neg_text, "source": "photo-text"}
        key = [hyper or self.vocab.classes[main].wnid]
        if kind < 0.25 and colours and not is_gloss:
            query = rng.choice(TEMPLATES_COLOUR).format(c=colours[0], t=term)
            other = [c for c in COLOURS if c not in colours]
            neg_text = self.photo(rng, true=[main], colours=rng.sample(other, len(colours)))[0]
            return {"query": query, "positive": text, "negative": neg_text, "source": "photo-colour",
                    "query_tags": key, "positive_tags": self._tags(true), "negative_tags": self._tags([main])}
        if kind < 0.4 and len(true) > 1:
            u = self._term(true[1], rng)[0]
            query = rng.choice(TEMPLATES_TWO).format(t=term, u=u).replace(" a a", " an a").replace(" a e", " an e")
            # Negative: only one of the two things.
            other = self._unrelated(main, hyper, rng)
            neg_text = self.photo(rng, true=[main, other])[0]
            return {"query": query, "positive": text, "negative": neg_text, "source": "photo-two",
                    "query_tags": key, "positive_tags": self._tags(true), "negative_tags": self._tags([main, other])}
        query = term if is_gloss else rng.choice(TEMPLATES_ONE).format(t=term, ts=plural(term))
        query = re.sub(r"\ba (?=[aeiou])", "an ", query)
        neg = self._sibling(main, hyper, rng)
        neg_text = self.photo(rng, true=[neg])[0]
        return {"query": query, "positive": text, "negative": neg_text, "source": "photo",
                "query_tags": key, "positive_tags": self._tags(true), "negative_tags": self._tags([neg])}

    def _sibling(self, cls: int, hyper: str | None, rng: random.Random) -> int:
        """A confusable class that the query's word does NOT cover."""
        for cand in self.neighbours[cls][rng.randint(0, 3):]:
            cand = int(cand)
            if hyper is None or hyper not in self.vocab.classes[cand].hypernym_ids:
                if self.vocab.classes[cand].names[0] != self.vocab.classes[cls].names[0]:
                    return cand
        return self._unrelated(cls, hyper, rng)

    def _unrelated(self, cls: int, hyper: str | None, rng: random.Random) -> int:
        while True:
            cand = rng.randrange(1000)
            if cand != cls and (hyper is None or hyper not in self.vocab.classes[cand].hypernym_ids):
                return cand


def plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"
