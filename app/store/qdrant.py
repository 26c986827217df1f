"""A Qdrant collection as the store: the same interface as the embedded `Index`, for collections that
outgrow one machine (a Qdrant server or cluster) or for trying that path locally (qdrant-client's local mode).

Data model, one Qdrant point per item:

- vector `first`: the item's first candidate vector (dense, dot product, HNSW): the (r_q, 1) budget and the
  prefetch stage of every other budget;
- vectors `c4`, `c8`, ... `c{R_c}`: the item's first r_c vectors as a multi-vector with Qdrant's MAX_SIM
  comparator, one per candidate budget of the presets (no HNSW on them; on a server the originals stay on
  disk and an int8 copy in RAM). Qdrant cannot score a prefix of a multi-vector, so a budget whose r_c is
  not stored is scored at the next stored r_c up (`scored_budget` says which);
- payload: the item's metadata (as `IndexedItem`), its thumbnail (base64 JPEG) and `under`, every folder
  (and zip archive) its path lies in, so a folder's items are found by one keyword match.

A search at (r_q, r_c) prefetches `FIRST_STAGE_DEPTH` items by dot product of the query's first vector with
`first`, then rescores them by MaxSim of the query's first r_q vectors against field `c{r_c}`: the same two
stages as the embedded index. Small collections (at most the prefetch depth) are scored exactly. At r_c = 1,
MaxSim is sum_i q_i . c_1 = (sum_i q_i) . c_1: one dense search, exact.

The checkpoint that made the vectors, R_c and D are the collection's metadata, so a collection made by
another checkpoint is refused, as the embedded index refuses one. Point ids derive from the item id (a prefix
of the content hash), so re-adding an item overwrites it rather than duplicating it.

Where: `qdrant://HOST:PORT/COLLECTION` (`qdrants://` for TLS; the API key from $QDRANT_API_KEY; a new
collection on a cluster takes `?shards=N&replicas=M`) or `qdrant-local:DIR` (local mode: one process at a
time, everything in memory, exact scoring in Python).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import os
import threading
import time
import weakref
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointMismatch, IndexError_, check_kinds, check_layout, check_search, mismatch_message
from .items import ID_LENGTH, IndexedItem, target_paths
from .planner import FIRST_STAGE_DEPTH
from .qdrant_schema import (
    ITEM_FIELDS,
    META_KEY,
    create_collection,
    item_of,
    payload_of,
    point_id,
    split_layout,
    transport_errors,
    under,
    where,
)

LOCAL_PREFIX = "qdrant-local:"
URL_SCHEMES = {"qdrant://": "http://", "qdrants://": "https://"}
LOCAL_COLLECTION = "metaembed"  # the one collection of a local-mode folder
UPSERT_BATCH = 64  # points per request: 64 items x ~100 vectors x 384 floats stays well under request limits
SCROLL_PAGE = 1_000
EXACT_PREFETCH_ITEMS = 200_000  # up to here the prefetch scans every first vector (see _prefetch_params)


def is_qdrant(spec: str | os.PathLike) -> bool:
    """Whether a --store value names a Qdrant store (else it is an embedded index folder)."""
    text = str(spec)
    return text.startswith(LOCAL_PREFIX) or any(text.startswith(s) for s in URL_SCHEMES)


# Closed at exit: qdrant-client's own finaliser fails once the interpreter is shutting down.
_OPEN: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [store.close() for store in list(_OPEN)])


def _guarded(method):
    """One call at a time (the app shares a store between threads; the local client is not thread-safe),
    and Qdrant's transport errors in plain words naming the store."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock, self._errors():
            return method(self, *args, **kwargs)

    return wrapper


class QdrantStore:
    """Items in one Qdrant collection, with the embedded `Index`'s interface (see app.store.base.Store).

    Open with `QdrantStore.open(spec)` or `QdrantStore.open_for(spec, checkpoint_id, num_vectors, dim)`.
    """

    read_only = False

    def __init__(self, client: Any, collection: str, location: str):
        self._client = client
        self.collection = collection
        self.location = location
        self._lock = threading.RLock()
        self._local = location.startswith(LOCAL_PREFIX)  # local mode: exact brute force, no search params
        with self._errors():
            info = client.get_collection(collection)
        meta = (info.config.metadata or {}).get(META_KEY)
        if not isinstance(meta, dict):
            raise IndexError_(f"{location} is a Qdrant collection that MetaEmbed Studio did not make (it has no "
                              f"{META_KEY!r} metadata); give the name of a new or a MetaEmbed collection")
        self.checkpoint_id: str = meta["checkpoint_id"]
        self.checkpoint_source: str | None = meta.get("checkpoint_source") or None
        self.num_vectors: int = int(meta["num_vectors"])
        self.dim: int = int(meta["dim"])
        self.created: float = float(meta["created"])
        self.fields: list[int] = [int(r) for r in meta["fields"]]
        if not self._local and "kind" not in (info.payload_schema or {}):
            self._index_kind()
        _OPEN.add(self)

    def _index_kind(self) -> None:
        """A server collection made before searches by kind gets the payload index on "kind" that new ones are
        made with (Qdrant plans a filtered search by its payload indexes). Only a speed-up: where the API key
        may not change the collection, it stays as it is and filtered searches still find the same items."""
        from qdrant_client import models

        with contextlib.suppress(Exception):
            self._client.create_payload_index(self.collection, "kind", models.PayloadSchemaType.KEYWORD)

    # ---- opening ------------------------------------------------------------------------------------
    @staticmethod
    def connect(spec: str, create: bool = False) -> tuple[Any, str, str]:
        """(client, collection name, location for messages) of a --store value."""
        from qdrant_client import QdrantClient

        if spec.startswith(LOCAL_PREFIX):
            folder = Path(spec[len(LOCAL_PREFIX):]).expanduser().resolve()
            location = f"{LOCAL_PREFIX}{folder}"
            if not create and not folder.is_dir():  # local mode would create it: not for a typo
                raise FileNotFoundError(f"{location}: folder {folder} does not exist")
            try:
                return QdrantClient(path=str(folder)), LOCAL_COLLECTION, location
            except RuntimeError as e:  # local mode's lock: another process has the folder open
                raise IndexError_(f"{location} is open in another process ({e}); local mode serves one process "
                                  "at a time: close it, or run a Qdrant server for shared access") from None
        spec, _layout = split_layout(spec)
        scheme = next((s for s in URL_SCHEMES if spec.startswith(s)), None)
        rest = spec[len(scheme):] if scheme else ""
        host, _, collection = rest.partition("/")
        if not scheme or not host or not collection or "/" in collection:
            raise IndexError_(f"--store {spec!r}: expected qdrant://HOST:PORT/COLLECTION, qdrants://... (TLS) or "
                              "qdrant-local:DIR")
        url = URL_SCHEMES[scheme] + host
        client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=30)
        return client, collection, f"{scheme}{host}/{collection}"

    @classmethod
    def open(cls, spec: str, checkpoint_id: str | None = None) -> QdrantStore:
        """Open an existing collection; with `checkpoint_id`, refuse one that another checkpoint made."""
        return cls._attach(*cls.connect(spec), checkpoint_id)

    @classmethod
    def open_for(cls, spec: str, checkpoint_id: str, num_vectors: int, dim: int,
                 checkpoint_source: str | None = None) -> QdrantStore:
        """Open the collection made by `checkpoint_id`, creating it if there is none."""
        client, collection, location = cls.connect(spec, create=True)
        store = cls._attach(client, collection, location, checkpoint_id, create=lambda: create_collection(
            client, collection, checkpoint_id, num_vectors, dim, checkpoint_source, **split_layout(spec)[1]))
        check_layout(store, num_vectors, dim, location)
        return store

    @classmethod
    def _attach(cls, client: Any, collection: str, location: str, checkpoint_id: str | None,
                create: Any = None) -> QdrantStore:
        """The store over `client`'s `collection` (made first by `create()` when missing and given); the
        client is closed on any failure."""
        try:
            with transport_errors(location):
                exists = client.collection_exists(collection)
                if not exists and create is not None:
                    create()
                    exists = True
            if not exists:
                raise FileNotFoundError(f"{location} holds no collection {collection!r} (create it with `index`)")
            store = cls(client, collection, location)
        except BaseException:
            client.close()
            raise
        if checkpoint_id is not None and checkpoint_id != store.checkpoint_id:
            store.close()
            raise CheckpointMismatch(mismatch_message(location, store.checkpoint_id, store.checkpoint_source,
                                                      checkpoint_id, "collection"))
        return store

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        with transport_errors(self.location):
            yield

    # ---- reading ------------------------------------------------------------------------------------
    def _scroll(self, flt: Any = None, fields: Sequence[str] | bool = True) -> Iterator[Any]:
        offset = None
        while True:
            records, offset = self._client.scroll(self.collection, scroll_filter=flt, limit=SCROLL_PAGE,
                                                  offset=offset, with_payload=fields, with_vectors=False)
            yield from records
            if offset is None:
                return

    @_guarded
    def __len__(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    @_guarded
    def known_hashes(self) -> set[str]:
        return {r.payload["content_hash"] for r in self._scroll(fields=["content_hash"])}

    @_guarded
    def items(self, path: str | None = None) -> list[IndexedItem]:
        """All items in the order they were added (or those of one source path)."""
        records = self._scroll(where(path=path) if path is not None else None, ITEM_FIELDS)
        return [item_of(r) for r in sorted(records, key=lambda r: r.payload["seq"])]

    @_guarded
    def paths_of_file(self, file_hash: str) -> list[str]:
        """Source paths of the items that came from a file with this sha256."""
        return sorted({r.payload["path"] for r in self._scroll(where(file_sha256=file_hash), ["path"])})

    @_guarded
    def move(self, old_path: str, new_path: str, title: str) -> int:
        """Point the items of `old_path` at `new_path` (a file that was renamed or moved); returns how many."""
        flt = where(path=old_path)
        count = int(self._client.count(self.collection, count_filter=flt, exact=True).count)
        if count:
            self._client.set_payload(self.collection, {"path": new_path, "title": title, "under": under(new_path)},
                                     points=flt, wait=True)
        return count

    @_guarded
    def stale_ids(self, path: str, file_hash: str) -> list[str]:
        """Ids of the items of `path` that came from another version of the file than `file_hash`."""
        return [r.payload["id"] for r in self._scroll(where(path=path), ["id", "file_sha256"])
                if r.payload.get("file_sha256") not in (None, file_hash)]

    def _record(self, item_id: str, fields: Sequence[str] | bool, vectors: Sequence[str] | bool = False) -> Any:
        found = self._client.retrieve(self.collection, [point_id(item_id)], with_payload=fields,
                                      with_vectors=vectors)
        if not found or found[0].payload.get("id", item_id) != item_id:
            raise KeyError(f"no item {item_id!r} in {self.location}")
        return found[0]

    @_guarded
    def get(self, item_id: str) -> IndexedItem:
        return item_of(self._record(item_id, ITEM_FIELDS))

    @_guarded
    def get_many(self, rowids: Sequence[int]) -> dict[int, IndexedItem]:
        records = self._client.retrieve(self.collection, [int(r) for r in rowids], with_payload=ITEM_FIELDS)
        return {int(r.id): item_of(r) for r in records}

    @_guarded
    def thumbnail(self, item_id: str) -> bytes:
        """The item's JPEG thumbnail (b"" for text passages, which have none)."""
        data = self._record(item_id, ["id", "thumbnail"]).payload.get("thumbnail")
        return base64.b64decode(data) if data else b""

    @_guarded
    def vectors(self, item_id: str) -> torch.Tensor:
        """The item's R_c candidate vectors, bf16 [R_c, D]."""
        name = f"c{self.num_vectors}" if self.num_vectors > 1 else "first"
        vec = self._record(item_id, ["id"], [name]).vector[name]
        return torch.tensor(np.asarray(vec, dtype=np.float32).reshape(self.num_vectors, self.dim),
                            dtype=torch.bfloat16)

    @_guarded
    def info(self) -> dict:
        """Counts and settings, for `cli info` and the app's status line."""
        kinds: dict[str, int] = {}
        paths = set()
        for r in self._scroll(fields=["kind", "path"]):
            kinds[r.payload["kind"]] = kinds.get(r.payload["kind"], 0) + 1
            paths.add(r.payload["path"])
        return {
            "store": "qdrant-local" if self._local else "qdrant",
            "location": self.location, "collection": self.collection, "items": sum(kinds.values()),
            "sources": len(paths), "kinds": kinds, "checkpoint_id": self.checkpoint_id,
            "checkpoint_source": self.checkpoint_source, "num_vectors": self.num_vectors, "dim": self.dim,
            "created": self.created, "candidate_fields": self.fields,
        }

    def refresh(self) -> None:
        """Nothing to reload: every call asks Qdrant."""

    # ---- scoring ------------------------------------------------------------------------------------
    def scored_budget(self, budget: tuple[int, int]) -> tuple[int, int]:
        """The budget a search at `budget` is scored at: r_c rounds up to the next stored field."""
        r_q, r_c = budget
        return r_q, next((f for f in self.fields if f >= r_c), self.num_vectors)

    def exact_for(self, r_c: int, depth: int = FIRST_STAGE_DEPTH, *, kinds: Collection[str] | None = None) -> bool:
        """Whether a search at candidate budget r_c (of the items of `kinds` only, when given) scores every
        item (else prefetch, then MaxSim).

        Local mode always: qdrant-client rescores prefetched points with a full search filtered to them, so
        a prefetch saves no work there (bench/scale.py: every query scored every point either way)."""
        return (self._local or self.scored_budget((1, r_c))[1] == 1
                or self._approximate_count(self._kind_filter(check_kinds(kinds))) <= depth)

    def _approximate_count(self, only: Any = None) -> int:
        # Qdrant's estimate: enough to plan a search, and no exact count on every query of a large server.
        return int(self._client.count(self.collection, count_filter=only, exact=False).count)

    @staticmethod
    def _kind_filter(kinds: frozenset[str] | None) -> Any:
        """The payload filter for items of `kinds` (None: no filter)."""
        from qdrant_client import models

        return None if kinds is None else models.Filter(
            must=[models.FieldCondition(key="kind", match=models.MatchAny(any=sorted(kinds)))])

    @_guarded
    def search(self, q: torch.Tensor, budget: tuple[int, int], k: int = 10, *, exact: bool | None = None,
               depth: int = FIRST_STAGE_DEPTH, kinds: Collection[str] | None = None) -> list[tuple[int, float]]:
        """Best `k` items for one query's vectors q [R_q, D] at budget (r_q, r_c): [(point id, score)];
        `kinds`: only items of these kinds (ITEM_KINDS), by a payload filter on the search and its prefetch."""
        from qdrant_client import models

        r_q, r_c = check_search(q, budget, k, self.dim, self.num_vectors)
        only = self._kind_filter(check_kinds(kinds))
        r_c = self.scored_budget((r_q, r_c))[1]
        qf = q[:r_q].float()
        if exact is None:
            exact = self.exact_for(r_c, max(depth, k), kinds=kinds)
        prefetch = None
        if r_c == 1:
            query, using = qf.sum(0).tolist(), "first"
        else:
            query, using = qf.tolist(), f"c{r_c}"
            if not exact:
                prefetch = models.Prefetch(query=qf[0].tolist(), using="first", limit=max(depth, k),
                                           params=self._prefetch_params(max(depth, k)), filter=only)
        found = self._client.query_points(
            self.collection, query=query, using=using, prefetch=prefetch, limit=k, with_payload=False,
            query_filter=only,
            search_params=models.SearchParams(exact=True) if exact and not self._local else None).points
        return [(int(p.id), float(p.score)) for p in found]

    def _prefetch_params(self, limit: int) -> Any:
        """How the prefetch searches `first`: exactly up to EXACT_PREFETCH_ITEMS, else HNSW with a wide beam.

        bench/scale.py (100,000 items, qdrant-edge): the HNSW prefetch at Qdrant's default beam kept recall@10
        at 0.70-0.84 of exact above (1, 1); an exact prefetch restored 0.99 (0.905 at (16, 64)) for ~20 ms.
        The beam of 4x the prefetch depth for larger collections is a starting point, not a measured optimum.
        """
        from qdrant_client import models

        if self._approximate_count() <= EXACT_PREFETCH_ITEMS:
            return models.SearchParams(exact=True)
        return models.SearchParams(hnsw_ef=4 * limit)

    # ---- writing ------------------------------------------------------------------------------------
    @_guarded
    def add(self, items: Sequence[Any], vectors: torch.Tensor | np.ndarray) -> list[str | None]:
        """Store items (ingest `Item`s) with their candidate vectors [B, R_c, D].

        Items whose content hash is already stored (or repeated within the batch) are skipped. Returns, for
        each item in order, its new id, or None where it was skipped as a duplicate. Each point is written
        whole (vectors and payload together), so an interrupted add leaves whole items or none.
        """
        from qdrant_client import models

        if len(items) != len(vectors):
            raise ValueError(f"add: {len(items)} items but {len(vectors)} vector sets")
        if len(items) == 0:
            return []
        if tuple(vectors.shape[1:]) != (self.num_vectors, self.dim):
            raise ValueError(f"add: vectors have shape {tuple(vectors.shape)}, this collection stores "
                             f"[B, {self.num_vectors}, {self.dim}]")
        # Rounded to bf16 as the embedded index stores them, so both stores score the same vectors.
        vecs = torch.as_tensor(vectors).to(torch.bfloat16).float().numpy()
        hashes = [it.content_hash for it in items]
        known = {r.payload["content_hash"] for r in self._scroll(where(content_hash=hashes), ["content_hash"])}
        ids: list[str | None] = [None] * len(items)
        keep = []
        for i, it in enumerate(items):
            if it.content_hash not in known:
                known.add(it.content_hash)
                keep.append(i)
        new_ids = self._new_ids([items[i].content_hash for i in keep])
        points, now, seq = [], time.time(), time.time_ns()
        for i, item_id in zip(keep, new_ids):
            it = items[i]
            ids[i] = item_id
            vector: dict[str, Any] = {"first": vecs[i, 0].tolist()}
            vector.update({f"c{rc}": vecs[i, :rc].tolist() for rc in self.fields if rc > 1})
            points.append(models.PointStruct(id=point_id(ids[i]), vector=vector,
                                             payload=payload_of(it, ids[i], now, seq + i)))
        for s in range(0, len(points), UPSERT_BATCH):
            self._client.upsert(self.collection, points=points[s : s + UPSERT_BATCH], wait=True)
        return ids

    def _new_ids(self, hashes: Sequence[str]) -> list[str]:
        """Ids for new items, as the embedded index makes them: a prefix of the content hash, lengthened on a
        (rare) clash. One request for the whole batch; only a clash asks again."""
        if not hashes:
            return []
        first = [h[:ID_LENGTH] for h in hashes]
        taken = {int(r.id): r.payload["content_hash"] for r in self._client.retrieve(
            self.collection, [point_id(c) for c in first], with_payload=["content_hash"])}
        return [c if taken.get(point_id(c), h) == h else self._new_id(h) for c, h in zip(first, hashes)]

    def _new_id(self, content_hash: str) -> str:
        for length in range(ID_LENGTH, len(content_hash) + 1, 4):
            candidate = content_hash[:length]
            found = self._client.retrieve(self.collection, [point_id(candidate)], with_payload=["content_hash"])
            if not found or found[0].payload["content_hash"] == content_hash:
                return candidate
        raise IndexError_(f"content hash {content_hash} is already stored")

    @_guarded
    def remove(self, targets: Iterable[str]) -> list[IndexedItem]:
        """Remove items by id or by source path (a file, a zip archive or a folder); returns the removed items
        as they were, by id. Reads only what it removes (a large collection is never scrolled through).

        Raises KeyError naming the targets that match nothing (and then removes nothing).
        """
        from qdrant_client import models

        found: dict[int, str] = {}
        missing = []
        for target in targets:
            matched = self._match(target)
            if not matched:
                missing.append(target)
            found.update(matched)
        if missing:
            raise KeyError(f"nothing in {self.location} matches {', '.join(map(repr, missing))} "
                           "(give item ids or indexed paths)")
        removed = self.get_many(list(found)) if found else {}
        if found:
            self._client.delete(self.collection, points_selector=models.PointIdsList(points=list(found)), wait=True)
        return sorted(removed.values(), key=lambda it: it.id)

    def _match(self, target: str) -> dict[int, str]:
        """{point id: item id} of what `target` names: an item id, or a path and everything under it."""
        records = self._client.retrieve(self.collection, [point_id(target)], with_payload=["id"])
        if records and records[0].payload.get("id") == target:
            return {int(records[0].id): target}
        out: dict[int, str] = {}
        for p in target_paths(target):
            p = p.rstrip("/") or p
            for field in ("path", "under"):
                out.update({int(r.id): r.payload["id"] for r in self._scroll(where(**{field: p}), ["id"])})
        return out

    def compact(self) -> None:
        """Nothing to do: Qdrant's optimizer merges segments and drops deleted points itself."""
