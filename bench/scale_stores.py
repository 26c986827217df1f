"""The stores bench/scale.py compares, behind one small interface: the app's own stores (the embedded `Index`
and QdrantStore in qdrant-client's local mode, opened as the app opens them) and qdrant-edge (bench only: not a
store of the app) laid out as QdrantStore lays out a collection.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from app.store.planner import FIRST_STAGE_DEPTH
from bench.search import Meta  # the fields a store's add reads from an ingest Item

K = 10
PREFETCH = FIRST_STAGE_DEPTH  # both app stores prefetch this many items by first vector
CHECKPOINT = "bench-scale"


class BenchStore(Protocol):
    def add(self, start: int, vectors: torch.Tensor) -> None: ...  # items start.. with their vectors
    def prepare(self, n: int) -> None: ...  # before the searches (outside the timings)
    def ready(self) -> None: ...  # whatever makes it ready to search at full speed (timed)
    def variants(self, budget: tuple[int, int]) -> list[tuple[str, dict]]: ...  # (path, search options)
    def search(self, q: torch.Tensor, budget: tuple[int, int], opts: dict) -> list[int]: ...  # store ids
    def positions(self, ids: list[int]) -> list[int]: ...  # store ids -> item positions
    def close(self) -> None: ...


def open_bench_store(kind: str, directory: Path, num_vectors: int, dim: int) -> BenchStore:
    if kind == "qdrant-edge":
        return EdgeStore(directory, num_vectors, dim)
    return AppStore(kind, directory, num_vectors, dim)


def content_hash(i: int) -> str:
    return hashlib.sha256(f"scale:{i}".encode()).hexdigest()


def metas(start: int, stop: int) -> list[Meta]:
    return [Meta(f"/scale/item-{i:06d}.jpg", content_hash(i), title=f"item-{i:06d}.jpg", size_bytes=100_000)
            for i in range(start, stop)]


class AppStore:
    """The embedded `Index` or QdrantStore (local mode), opened as the app opens them."""

    def __init__(self, kind: str, directory: Path, num_vectors: int, dim: int):
        from app.store import open_store_for

        self.kind = kind
        spec = str(directory) if kind == "embedded" else f"qdrant-local:{directory}"
        self.store: Any = open_store_for(spec, CHECKPOINT, num_vectors, dim)
        self.position: dict[str, int] = {}

    def add(self, start: int, vectors: torch.Tensor) -> None:
        self.store.add(metas(start, start + len(vectors)), vectors)

    def prepare(self, n: int) -> None:
        self.position = {content_hash(i): i for i in range(n)}

    def ready(self) -> None:
        if self.kind == "embedded":
            self.store.first_stage()  # built on the first two-stage search otherwise

    def variants(self, budget: tuple[int, int]) -> list[tuple[str, dict]]:
        r_c = budget[1]
        if self.kind != "embedded":
            exact = "dense sum" if r_c == 1 else "exact MaxSim"
            return [(exact if self.store.exact_for(r_c) else f"prefetch {PREFETCH} + MaxSim", {})]
        if not self.store.exact_for(r_c):
            return [(f"IVF {PREFETCH} + MaxSim", {})]
        return [("exact (default)", {}), (f"IVF {PREFETCH} + MaxSim (forced)", {"exact": False})]

    def search(self, q: torch.Tensor, budget: tuple[int, int], opts: dict) -> list[int]:
        return [r for r, _ in self.store.search(q, budget, K, **opts)]

    def positions(self, ids: list[int]) -> list[int]:
        found = self.store.get_many(ids)
        return [self.position[found[i].content_hash] for i in ids]

    def close(self) -> None:
        self.store.close()


class EdgeStore:
    """qdrant-edge with QdrantStore's data model (bench only: not a store of the app)."""

    def __init__(self, directory: Path, num_vectors: int, dim: int):
        import qdrant_edge as qe

        from app.store.qdrant_schema import stored_fields

        self.qe = qe
        self.fields = stored_fields(num_vectors)
        multi = {f"c{rc}": qe.EdgeVectorParams(  # as app.store.qdrant_schema.create_collection
            size=dim, distance=qe.Distance.Dot, on_disk=True,
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True))
            for rc in self.fields if rc > 1}
        config = qe.EdgeConfig(vectors={"first": qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot), **multi},
                               wal_enabled=False)
        self.shard = qe.EdgeShard.create(str(directory), config)
        # The MaxSim stage scores the int8 copy unless told to ignore it (rescore=True re-scores only the top
        # `limit` x oversampling of the int8 ranking); the prefetch walks the HNSW graph unless told exact=True.
        self.originals = qe.SearchParams(quantization=qe.QuantizationSearchParams(ignore=True))
        self.exact = qe.SearchParams(exact=True)

    def add(self, start: int, vectors: torch.Tensor) -> None:
        from app.store.qdrant_schema import payload_of

        qe, now = self.qe, time.time()
        v = vectors.float().numpy()
        points = []
        for j, meta in enumerate(metas(start, start + len(v))):
            vector = {"first": v[j, 0].tolist(), **{f"c{rc}": v[j, :rc].tolist() for rc in self.fields if rc > 1}}
            points.append(qe.Point(start + j, vector, payload_of(meta, meta.content_hash[:16], now, start + j)))
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def prepare(self, n: int) -> None:
        pass

    def ready(self) -> None:
        self.shard.flush()
        self.shard.optimize()
        self.shard.flush()

    def variants(self, budget: tuple[int, int]) -> list[tuple[str, dict]]:
        if budget[1] == 1:
            return [("dense sum, exact (as QdrantStore)", {"first": self.exact}), ("dense sum, HNSW", {})]
        return [(f"HNSW prefetch {PREFETCH} + MaxSim on int8 (as QdrantStore)", {}),
                ("... MaxSim on the originals", {"params": self.originals}),
                ("... exact prefetch, MaxSim on the originals", {"first": self.exact, "params": self.originals})]

    def search(self, q: torch.Tensor, budget: tuple[int, int], opts: dict) -> list[int]:
        qe = self.qe
        r_q, r_c = budget
        if r_c == 1:
            request = qe.QueryRequest(limit=K, query=qe.Query.Nearest(q[:r_q].sum(0).tolist(), using="first"),
                                      params=opts.get("first"))
        else:
            prefetch = qe.Prefetch(limit=PREFETCH, query=qe.Query.Nearest(q[0].tolist(), using="first"),
                                   params=opts.get("first"))
            request = qe.QueryRequest(limit=K, query=qe.Query.Nearest(q[:r_q].tolist(), using=f"c{r_c}"),
                                      prefetches=[prefetch], params=opts.get("params"))
        return [int(p.id) for p in self.shard.query(request)]

    def positions(self, ids: list[int]) -> list[int]:
        return ids

    def close(self) -> None:
        self.shard.close()


def edge_missing() -> str | None:
    """Why qdrant-edge cannot run here (None when it can)."""
    try:
        import qdrant_edge as qe
    except ImportError as e:
        return f"qdrant-edge skipped: not installed ({e}); `pip install qdrant-edge-py` to include it"
    needed = ["EdgeShard", "EdgeConfig", "EdgeVectorParams", "MultiVectorConfig", "Prefetch", "QueryRequest",
              "ScalarQuantizationConfig", "QuantizationSearchParams"]
    missing = [name for name in needed if not hasattr(qe, name)]
    if missing or not hasattr(qe.MultiVectorComparator, "MaxSim"):
        return f"qdrant-edge skipped: its API lacks {', '.join(missing) or 'MultiVectorComparator.MaxSim'}"
    return None
