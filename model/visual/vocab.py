"""ImageNet-1k class vocabulary (names, gloss, WordNet hypernyms) from assets/vocab/imagenet_wordnet.json.

Rebuild the asset with `python -m model.recipes.mini.build_vocab`; its README says where the data comes from.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

ASSET_PATH = Path(__file__).resolve().parents[2] / "assets" / "vocab" / "imagenet_wordnet.json"
SUPPORTED_VERSION = 1

# Hypernym choice for rendering (see ImageNetVocab.concept_terms).
MAX_HYPERNYMS = 3
MIN_HYPERNYM_SCORE = 2.0
HEAD_WORD_DISCOUNT = 0.25


@dataclass(frozen=True)
class HypernymNode:
    wnid: str
    names: tuple[str, ...]
    freq: int
    head_freq: int
    common: bool = False  # every word of its name is an everyday English word (SCOWL size 35; build_vocab)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def score(self) -> float:
        """How likely a person is to use this word: the synset's own tag count or, when this sense was never
        tagged, a discounted count of its head word in any sense ("domestic cat" inherits from "cat")."""
        return float(self.freq) if self.freq > 0 else HEAD_WORD_DISCOUNT * self.head_freq


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    names: tuple[str, ...]
    scientific: tuple[str, ...]
    gloss: str
    hypernym_ids: tuple[str, ...]
    hypernyms: tuple[str, ...]  # head names of hypernym_ids, nearest first

    @property
    def name(self) -> str:
        return self.names[0]


class ImageNetVocab:
    """The 1000 classes in classifier output order, plus the hypernym nodes their chains pass through."""

    def __init__(self, data: dict, source: str = "<dict>"):
        if data.get("version") != SUPPORTED_VERSION:
            raise ValueError(f"{source}: vocab version {data.get('version')!r}, expected {SUPPORTED_VERSION}")
        raw_classes = data.get("classes")
        if not isinstance(raw_classes, list) or len(raw_classes) != 1000:
            raise ValueError(f"{source}: expected 1000 classes")
        self.nodes: dict[str, HypernymNode] = {
            wnid: HypernymNode(wnid, tuple(n["names"]), int(n["freq"]), int(n["head_freq"]), bool(n.get("common")))
            for wnid, n in data["nodes"].items()
        }
        self.stop_nodes: dict[str, str] = dict(data.get("stop_nodes", {}))
        classes = []
        for i, c in enumerate(raw_classes):
            missing = [h for h in c["hypernyms"] if h not in self.nodes]
            if missing:
                raise ValueError(f"{source}: class {i} ({c['wnid']}) refers to unknown nodes {missing}")
            classes.append(
                ImageNetClass(
                    index=i,
                    wnid=c["wnid"],
                    names=tuple(c["names"]),
                    scientific=tuple(c.get("scientific", ())),
                    gloss=c["gloss"],
                    hypernym_ids=tuple(c["hypernyms"]),
                    hypernyms=tuple(self.nodes[h].name for h in c["hypernyms"]),
                )
            )
        self.classes: tuple[ImageNetClass, ...] = tuple(classes)

    def __len__(self) -> int:
        return len(self.classes)

    def index_of(self, wnid: str) -> int:
        for c in self.classes:
            if c.wnid == wnid:
                return c.index
        raise KeyError(wnid)

    def extra_nouns(self) -> list[str]:
        """Every lemma name of every hypernym node, sorted (for synthetic training text)."""
        return sorted({name for node in self.nodes.values() for name in node.names})

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - the vocab is a process-wide singleton
    def concept_terms(self, index: int, entry_names: bool = False) -> tuple[str, ...]:
        """The words a doc uses for class `index`: name, one synonym, then up to MAX_HYPERNYMS hypernyms.

        Synonym: the first other name that is not a spelling variant of one already taken. Hypernyms: the
        chain nodes with the highest `score` (>= MIN_HYPERNYM_SCORE), ties to the nearer node, emitted
        nearest-first, skipping names already used. Example: tabby -> (tabby, tabby cat, domestic cat, cat,
        animal).

        entry_names: also the class's entry-level name, what people call such a thing (Ordonez et al., ICCV
        2013, "From Large Scale Image Categorization to Entry-Level Categories"): the nearest hypernym whose
        words are all everyday words (`HypernymNode.common`), right after the class's own names, unless a
        name already says it. drake -> (drake, duck, anseriform bird, bird, animal), where the tag counts
        alone give "anseriform bird" but never "duck".
        """
        if not 0 <= index < len(self.classes):
            raise ValueError(f"class index {index} outside 0..{len(self.classes) - 1}")
        cls = self.classes[index]
        terms: list[str] = [cls.name]
        for name in cls.names[1:]:
            if not any(_same_word(name, t) for t in terms) and len(name.split()) <= 3:
                terms.append(name)
                break
        names = len(terms)
        chain = [self.nodes[h] for h in cls.hypernym_ids]
        ranked = sorted(
            (i for i, node in enumerate(chain) if node.score >= MIN_HYPERNYM_SCORE),
            key=lambda i: (-chain[i].score, i),
        )
        picked: list[int] = []
        for i in ranked:
            if len(picked) == MAX_HYPERNYMS:
                break
            if any(_same_word(chain[i].name, t) for t in terms):
                continue
            picked.append(i)
        terms.extend(chain[i].name for i in sorted(picked))
        if entry_names and (entry := _entry_level(chain, terms)) is not None:
            terms.insert(names, entry)
        return tuple(terms)

    def entry_name(self, index: int) -> str | None:
        """The word `concept_terms(index, entry_names=True)` adds to the plain terms, or None when it adds none."""
        return _entry_level([self.nodes[h] for h in self.classes[index].hypernym_ids], self.concept_terms(index))


def _entry_level(chain: list[HypernymNode], terms) -> str | None:
    """The nearest node of `chain` whose name is all everyday words, unless one of `terms` already says it."""
    entry = next((node.name for node in chain if node.common), None)
    return None if entry is None or any(_same_word(entry, t) for t in terms) else entry


def _norm(word: str) -> str:
    w = re.sub(r"[^a-z0-9]", "", word.lower())
    return w.replace("grey", "gray").replace("colour", "color").replace("aeroplane", "airplane")


def _same_word(a: str, b: str) -> bool:
    """Spelling variants count as the same word: "web site"/"website", "grey whale"/"gray whale"."""
    return _norm(a) == _norm(b)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> ImageNetVocab:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vocab asset missing: {p} (rebuild with `python -m model.recipes.mini.build_vocab`)")
    with open(p, encoding="utf-8") as fh:
        data = json.load(fh)
    return ImageNetVocab(data, source=str(p))


def load_vocab(path: str | Path | None = None) -> ImageNetVocab:
    """The ImageNet vocabulary (loaded once per path and cached)."""
    return _load(str(path or ASSET_PATH))
