"""Searching an index: encode a query once at full R_q, then rank at any budget (r_q, r_c).

The query's vectors are cached (LRU keyed by the query text, or by a hash of an image's pixels), so the
app's budget slider re-ranks without running the model again: a budget only picks prefixes of vectors
that were computed once. Results carry what the app needs to explain them: item metadata, a thumbnail
handle, and handles to the query's and the candidate's vectors.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from model.checkpoint import checkpoint_id
from model.scoring import explain

from .store import index as index_module
from .store.index import CheckpointMismatch, Index, IndexedItem

Query = str | Image.Image
DEFAULT_CACHE_SIZE = 64


@dataclass
class Hit:
    """One search result. `searcher` gives access to its vectors and thumbnail."""

    rank: int  # 1-based
    id: str
    path: str
    page: int | None
    score: float
    item: IndexedItem = field(repr=False)
    query: torch.Tensor = field(repr=False)  # [R_q, D] float32: all of the query's vectors
    searcher: Searcher = field(repr=False)

    @property
    def kind(self) -> str:
        return self.item.kind

    @property
    def words(self) -> list:
        return self.item.words

    def thumbnail(self) -> bytes:
        return self.searcher.index.thumbnail(self.id)

    def candidate_vectors(self) -> torch.Tensor:
        """[R_c, D] bf16: all of the item's vectors (the budget picks a prefix)."""
        return self.searcher.index.vectors(self.id)

    def query_vectors(self) -> torch.Tensor:
        """[R_q, D] float32: all of the query's vectors (the budget picks a prefix)."""
        return self.query

    def to_json(self) -> dict:
        return {"rank": self.rank, "id": self.id, "path": self.path, "page": self.page, "score": self.score}


@dataclass
class SearchResults:
    query: Query
    query_key: str
    budget: tuple[int, int]
    hits: list[Hit]
    exact: bool  # scored exactly (False: first stage + exact re-rank)
    query_vectors: torch.Tensor = field(repr=False, default=None)  # [R_q, D] float32

    def to_json(self) -> dict:
        query = self.query if isinstance(self.query, str) else f"<image {self.query_key}>"
        return {"query": query, "budget": list(self.budget), "results": [h.to_json() for h in self.hits]}


def query_key(query: Query) -> str:
    """Cache key of a query: the text itself, or a digest of an image's mode, size and pixels."""
    if isinstance(query, str):
        if not query.strip():
            raise ValueError("the query is empty: type some words or give an image")
        return "text:" + query
    if isinstance(query, Image.Image):
        digest = hashlib.sha256(f"{query.mode}:{query.size}".encode())
        digest.update(query.tobytes())
        return "image:" + digest.hexdigest()[:32]
    raise ValueError(f"a query is a str or a PIL image, got {type(query).__name__}")


class Searcher:
    """Search `index` with `model`. The model must be the checkpoint that made the index's vectors."""

    def __init__(self, model: Any, index: Index, cache_size: int = DEFAULT_CACHE_SIZE,
                 verify_checkpoint: bool = True):
        if verify_checkpoint:
            model_id = checkpoint_id(model)
            if model_id != index.checkpoint_id:
                raise CheckpointMismatch(
                    f"index {index.directory} was built with checkpoint {index.checkpoint_id!r} but the "
                    f"model is {model_id!r}; load the index's checkpoint or index the files again"
                )
        made = (model.config.num_candidate_tokens, model.dim)
        if made != (index.num_vectors, index.dim):
            raise CheckpointMismatch(
                f"index {index.directory} stores {index.num_vectors}x{index.dim} vectors per item, the model "
                f"makes {made[0]}x{made[1]}"
            )
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.model = model
        self.index = index
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.encodes = 0  # how many times the model ran on a query (the cache's effect, for tests)

    # ---- budgets ------------------------------------------------------------------------------------
    @property
    def num_query_vectors(self) -> int:
        return self.model.config.num_query_tokens

    @property
    def num_candidate_vectors(self) -> int:
        return self.index.num_vectors

    @property
    def presets(self) -> list[tuple[int, int]]:
        return list(self.model.config.presets)

    @property
    def default_budget(self) -> tuple[int, int]:
        """The largest trained budget."""
        return max(self.presets, key=lambda b: (b[0] * b[1], b))

    def check_budget(self, budget: Any) -> tuple[int, int]:
        """A validated (r_q, r_c); ValueError naming the allowed ranges otherwise."""
        if budget is None:
            return self.default_budget
        try:
            r_q, r_c = budget
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a pair (r_q, r_c), got {budget!r}") from None
        for name, value, top in (("r_q", r_q, self.num_query_vectors), ("r_c", r_c, self.num_candidate_vectors)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"budget {name}={value!r} is out of range: allowed 1..{top} "
                                 f"(budget is (r_q, r_c) with r_q in 1..{self.num_query_vectors} and "
                                 f"r_c in 1..{self.num_candidate_vectors})")
        return int(r_q), int(r_c)

    # ---- queries ------------------------------------------------------------------------------------
    def query_vectors(self, query: Query) -> torch.Tensor:
        """[R_q, D] float32 vectors of `query`, from the cache or encoded once at full R_q."""
        key = query_key(query)
        with self._cache_lock:
            vecs = self._cache.get(key)
            if vecs is not None:
                self._cache.move_to_end(key)
                return vecs
        vecs = self.model.encode_queries([query])[0]
        with self._cache_lock:
            self.encodes += 1
            self._cache[key] = vecs
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vecs

    # ---- searching ----------------------------------------------------------------------------------
    def search(self, query: Query, budget: tuple[int, int] | None = None, k: int = 10,
               exact: bool | None = None) -> SearchResults:
        """The `k` best items for `query` at `budget` (default: the largest preset)."""
        budget = self.check_budget(budget)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        vecs = self.query_vectors(query)
        key = query_key(query)
        view = self.index.view()
        if exact is None:
            exact = index_module.uses_exact(view.count, budget[1])
        ranked = self.index.search(vecs, budget, k, exact=exact)
        items = self.index.get_many([rowid for rowid, _ in ranked])
        hits = []
        for rowid, score in ranked:
            item = items.get(rowid)
            if item is None:  # removed by another process between scoring and fetching
                continue
            hits.append(Hit(len(hits) + 1, item.id, item.path, item.page, score, item, vecs, self))
        return SearchResults(query, key, budget, hits, exact, vecs)

    def explain(self, query: Query, item_id: str, budget: tuple[int, int] | None = None) -> dict:
        """Per-vector MaxSim breakdown of one result (see model.scoring.explain)."""
        budget = self.check_budget(budget)
        return explain(self.query_vectors(query), self.index.vectors(item_id).float(), budget)
