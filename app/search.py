"""The one search path of the CLI, the UI and the API: encode a query once, check a budget, rank, return Hits.

    queries = QueryCache()                                  # shared by every search of a process
    vectors = queries.vectors(query, ckpt_id, encode)       # [R_q, D], encoded once at full R_q
    budget = check_budget((8, 16), r_q_max, r_c_max, presets)
    hits = rank([("samples", idx1), ("yours", idx2)], vectors, budget, k=10)  # only="photos": photos alone

A budget only picks prefixes of vectors that were computed once, so the app's budget slider re-ranks from
cached query vectors without running the model again (the point of MetaEmbed's nested budgets).
`Searcher` bundles the three for one model and one index (the CLI, scripts and tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from model.checkpoint import checkpoint_id
from model.scoring import explain

from .store import Store
from .store.index import CheckpointMismatch, IndexedItem

Query = str | Image.Image | dict  # text, an image, or {"image": ..., "text": ...}
DEFAULT_CACHE_SIZE = 256
PAGE_DEPTH = 4  # one_per_page: items fetched per result wanted (a page has its page item plus a few passages)
CALIBRATION_NAME = "calibration.json"  # a checkpoint's weak-match threshold (bench/weak_match.py --write)
WHOLE_MATCH = (1, 1)  # the budget whose score judges a query as a whole (the weak-match flag)
# What a search can be limited to, and the kinds of item each takes (a PDF's passages are documents too).
ONLY = {"everything": None, "photos": ("image",), "documents": ("pdf_page", "text")}


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Hit:
    """One search result: where it is, its score at the budget searched, and its stored metadata."""

    rank: int  # 1-based
    id: str
    path: str  # as the caller shows it: absolute (CLI) or relative to a collection's folder (app)
    page: int | None
    score: float  # MaxSim at the budget: a sum of r_q cosine similarities
    item: IndexedItem = field(repr=False)
    collection: str | None = None  # which collection it came from, when several were searched
    budget: tuple[int, int] | None = None  # the budget it was scored at (None: not from a search)

    @property
    def comparable(self) -> float | None:
        """The score as the app shows it: comparable_score at the budget searched (None: not from a search)."""
        return comparable_score(self.score, self.budget[0]) if self.budget is not None else None

    @property
    def kind(self) -> str:
        return self.item.kind

    @property
    def title(self) -> str:
        return self.item.title

    @property
    def passage(self) -> int | None:
        return self.item.passage

    @property
    def label(self) -> str:
        """What a person reads first: the page, then the file."""
        return f"p. {self.page} · {self.title}" if self.page else self.title

    def to_json(self) -> dict:
        """The CLI's JSON entry (the app's API adds the collection and the kind: app/ui/api.py)."""
        return {"rank": self.rank, "id": self.id, "path": self.path, "page": self.page, "score": self.score,
                "comparable_score": self.comparable}


def comparable_score(score: float, r_q: int) -> float:
    """MaxSim at a budget (r_q, r_c) as the mean best similarity of the query's r_q vectors: at most 1, near 0
    or below for nothing alike (humanize.SCORE_SCALE).

    A raw MaxSim sum grows with r_q (it adds r_q similarities), so scores of different budgets, or a score
    and the checkpoint's weak-match threshold and bars (calibration.json), are compared in this form: the one the
    app shows and the CLI and the API report next to `score`.
    """
    return score / r_q


@dataclass
class SearchResults:
    query: Query
    budget: tuple[int, int]
    hits: list[Hit]
    exact: bool  # scored exactly (False: first stage + exact re-rank)
    query_vectors: torch.Tensor = field(repr=False, default=None)  # [R_q, D] float32

    def to_json(self) -> dict:
        query = self.query if isinstance(self.query, str) else f"<image {query_key(self.query)}>"
        return {"query": query, "budget": list(self.budget), "results": [h.to_json() for h in self.hits]}


# ------------------------------------------------------------------------------------------------ queries


def query_key(query: Query) -> str:
    """Cache key of a query: the text itself, or a digest of an image's mode, size and pixels (plus its text)."""
    if isinstance(query, dict):
        return query_key(query["image"]) + "+" + query_key(query["text"])
    if isinstance(query, str):
        if not query.strip():
            raise ValueError("the query is empty: type some words or give an image")
        return "text:" + query
    if isinstance(query, Image.Image):
        digest = hashlib.sha256(f"{query.mode}:{query.size}".encode())
        digest.update(query.tobytes())
        return "image:" + digest.hexdigest()[:32]
    raise ValueError(f"a query is a str or a PIL image, got {type(query).__name__}")


class QueryCache:
    """Query vectors by (checkpoint id, query): scripts calling at several budgets, every visitor typing the
    same example, and each move of the budget slider encode a query once. Thread-safe, least recently used
    entries go first."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE):
        if size < 1:
            raise ValueError(f"cache_size must be >= 1, got {size}")
        self.size = size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encodes = 0  # how many times the model ran on a query (the cache's effect, for tests)

    def vectors(self, query: Query, ckpt_id: str, encode: Callable[[list], torch.Tensor]) -> torch.Tensor:
        """[R_q, D] float32 vectors of `query`, cached or made by `encode([query])[0]` at full R_q."""
        key = (ckpt_id, query_key(query))
        with self._lock:
            vecs = self._cache.get(key)
            if vecs is not None:
                self._cache.move_to_end(key)
                return vecs
        vecs = encode([query])[0]
        with self._lock:
            self.encodes += 1
            self._cache[key] = vecs
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return vecs


# ------------------------------------------------------------------------------------------------ budgets


def default_budget(presets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The largest trained budget."""
    return tuple(max(presets, key=lambda b: (b[0] * b[1], tuple(b))))


def check_budget(budget: Any, num_query_vectors: int, num_candidate_vectors: int,
                 presets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """A validated (r_q, r_c) (None: the largest preset); ValueError naming the allowed ranges otherwise."""
    if budget is None:
        return default_budget(presets)
    try:
        r_q, r_c = budget
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a pair (r_q, r_c), got {budget!r}") from None
    for name, value, top in (("r_q", r_q, num_query_vectors), ("r_c", r_c, num_candidate_vectors)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a UI number field or JSON sends 8.0
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"budget {name}={value!r} is out of range: allowed 1..{top} "
                             f"(budget is (r_q, r_c) with r_q in 1..{num_query_vectors} and "
                             f"r_c in 1..{num_candidate_vectors})")
    return int(r_q), int(r_c)


@dataclass(frozen=True)
class Calibration:
    """A checkpoint's "no close match" flag (bench/weak_match.py --write, calibration.json).

    The flag judges the query as a whole, at every budget: no item's first vector (the whole item) is as
    similar as `weak_below` to the query's first vector (the whole query), i.e. the best score at WHOLE_MATCH =
    (1, 1) is below it. At larger budgets the best score is the mean of each query vector's best part
    anywhere, and word fragments ("qwzx" read as q·w·z·x) find parts that share them, so gibberish scored like
    a real query there (docs/benchmarks.md, "No close match"). But a short query against long pages
    ("installer") can be far from every page as a whole and still be found word for word: a search whose best
    score at its budget reaches the budget's `strong_part` bar (above 99% of gibberish searches' on the dev
    split) is not flagged.
    """

    weak_below: float  # on the whole-query score
    strong_part: dict[tuple[int, int], float] = field(default_factory=dict)  # per preset, on its comparable score

    def strong_at(self, budget: tuple[int, int]) -> float:
        """The strong-part bar at `budget`: its preset's, else that of the preset with the largest r_c not above
        it, else the lowest bar (the best score grows with r_c, so both err towards flagging less); inf without
        bars."""
        if budget in self.strong_part:
            return self.strong_part[budget]
        if not self.strong_part:
            return float("inf")
        below = [p for p in self.strong_part if p[1] <= budget[1]]
        return self.strong_part[max(below, key=lambda p: (p[1], p[0]))] if below else min(self.strong_part.values())

    def no_close_match(self, whole: float, best: float, budget: tuple[int, int]) -> bool:
        """Whether a search whose whole-query score is `whole` and whose best comparable score at `budget` is
        `best` found nothing close."""
        return whole < self.weak_below and best < self.strong_at(budget)


def load_calibration(folder: str | os.PathLike | None, ckpt_id: str) -> Calibration | None:
    """A checkpoint's weak-match calibration, if it has one for exactly these weights; None otherwise (then no
    search is flagged). Older files, with one threshold per preset, give their (1, 1) one and no bars."""
    path = Path(folder) / CALIBRATION_NAME if folder else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("checkpoint_id") != ckpt_id:
            return None  # made for other weights: its thresholds say nothing about these
        bars = {tuple(int(x) for x in k.split(",")): float(v) for k, v in data.get("strong_part", {}).items()}
        return Calibration(float(data["weak_match"][",".join(map(str, WHOLE_MATCH))]), bars)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ ranking


def rank(sources: Sequence[tuple[str | None, Store]], vectors: torch.Tensor, budget: tuple[int, int], k: int,
         exact: bool | None = None, one_per_page: bool = False, only: str | None = None) -> list[Hit]:
    """The `k` best items over one or more indexes for one query's vectors [R_q, D] at `budget`.

    `sources` are (collection key or None, index). Each index scores its own items (exactly, or first
    stage + exact re-rank above its size threshold, unless `exact` forces one); the lists are merged by score.
    `one_per_page`: a PDF page (its page item and its passages) or a text file (its passages) is one result,
    at its best item's score, as a person reads results. `only`: "photos" or "documents" ranks those alone
    (`ONLY`), with the scores they have among everything.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    kinds = kinds_of(only)
    depth = k * PAGE_DEPTH if one_per_page else k
    found: list[tuple[float, str | None, IndexedItem]] = []
    for key, index in sources:
        ranked = index.search(vectors, budget, depth, exact=exact, kinds=kinds)
        items = index.get_many([rowid for rowid, _ in ranked])
        # An item removed by another process between scoring and fetching is skipped.
        found += [(score, key, items[rowid]) for rowid, score in ranked if rowid in items]
    found.sort(key=lambda t: -t[0])
    if one_per_page:
        seen: set[tuple] = set()
        best = []
        for score, key, item in found:
            unit = (key, item.path, item.page)
            if unit not in seen:
                seen.add(unit)
                best.append((score, key, item))
        found = best
    return [Hit(n, item.id, item.path, item.page, score, item, key, budget=tuple(budget))
            for n, (score, key, item) in enumerate(found[:k], start=1)]


def kinds_of(only: str | None) -> tuple[str, ...] | None:
    """The item kinds a search limited to `only` ("photos", "documents", "everything" or None) ranks; None:
    every item. ValueError naming the choices otherwise."""
    if only is None:
        return None
    if only not in ONLY:
        raise ValueError(f"only must be one of {', '.join(ONLY)}, got {only!r}")
    return ONLY[only]


# ------------------------------------------------------------------------------------------------ searcher


class Searcher:
    """Search `index` with `model`. The model must be the checkpoint that made the index's vectors."""

    def __init__(self, model: Any, index: Store, cache_size: int = DEFAULT_CACHE_SIZE,
                 verify_checkpoint: bool = True):
        self.checkpoint_id = checkpoint_id(model)
        if verify_checkpoint and self.checkpoint_id != index.checkpoint_id:
            raise CheckpointMismatch(
                f"index {index.location} was built with checkpoint {index.checkpoint_id!r} but the "
                f"model is {self.checkpoint_id!r}; load the index's checkpoint or index the files again"
            )
        made = (model.config.num_candidate_tokens, model.dim)
        if made != (index.num_vectors, index.dim):
            raise CheckpointMismatch(
                f"index {index.location} stores {index.num_vectors}x{index.dim} vectors per item, the model "
                f"makes {made[0]}x{made[1]}"
            )
        self.model = model
        self.index = index
        self.queries = QueryCache(cache_size)

    @property
    def encodes(self) -> int:
        return self.queries.encodes

    def check_budget(self, budget: Any) -> tuple[int, int]:
        return check_budget(budget, self.model.config.num_query_tokens, self.index.num_vectors,
                            self.model.config.presets)

    def query_vectors(self, query: Query) -> torch.Tensor:
        """[R_q, D] float32 vectors of `query`, from the cache or encoded once at full R_q."""
        return self.queries.vectors(query, self.checkpoint_id, self.model.encode_queries)

    def search(self, query: Query, budget: tuple[int, int] | None = None, k: int = 10,
               exact: bool | None = None, one_per_page: bool = True, only: str | None = None) -> SearchResults:
        """The `k` best results for `query` at `budget` (default: the largest preset), of `only` "photos" or
        "documents" when given.

        One result per PDF page or text file, at its best item's score, as the app and its API rank them
        (`rank(..., one_per_page=True)`); `one_per_page=False` ranks every item (page and passages apart).
        """
        budget = self.check_budget(budget)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        kinds = kinds_of(only)
        vecs = self.query_vectors(query)
        if exact is None:
            exact = self.index.exact_for(budget[1], kinds=kinds)
        hits = rank([(None, self.index)], vecs, budget, k, exact=exact, one_per_page=one_per_page, only=only)
        return SearchResults(query, budget, hits, exact, vecs)

    def explain(self, query: Query, item_id: str, budget: tuple[int, int] | None = None) -> dict:
        """Per-vector MaxSim breakdown of one result (see model.scoring.explain)."""
        budget = self.check_budget(budget)
        return explain(self.query_vectors(query), self.index.vectors(item_id).float(), budget)
