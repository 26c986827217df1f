"""First stage for large indexes: a faiss IVF over each item's first vector (its (1,1) embedding).

Exact MaxSim over a million items at (16, 64) reads 16 GiB; instead the first query vector is matched
against every item's first vector with an inverted file (inner product, 8-bit scalar quantised: a
quarter of the float32 memory and disk), and only the best `depth` items are re-scored exactly.
The IVF's ids are item rowids, which never change (compaction moves vectors, not rowids), so the
structure stays valid across segment rewrites; removed items are filtered out by the caller.

The choices below (nlist ~ sqrt(n), nprobe 32 but at least MIN_SCANNED vectors, SQ8) were measured in
bench/search.py; see docs/benchmarks.md ("Index and search").
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import faiss
import numpy as np

from model.files import atomic_path

FILE_PATTERN = re.compile(r"^first_stage\.(\d+)\.faiss$")
NPROBE = 32  # lists probed in a large collection (a million items: 32 of 1,000 lists)
# ... but at least this many first vectors: a collection of 10,000 items (100 lists) is then scanned whole,
# ~1 ms for 384-d vectors, which the re-rank behind it dwarfs. With 32 of its 100 lists, the first stage
# missed items the full scan finds: recall@10 at (16, 64) 0.952 instead of 0.983 on the bundled model's
# vectors (bench/search.py switch).
MIN_SCANNED = 20_000
MIN_NLIST, MAX_NLIST = 16, 4096
TRAIN_PER_LIST = 40  # faiss's k-means wants >= 39 points per centroid
# Rebuild (re-train) when the collection has grown this many times past the size it was trained at.
REBUILD_GROWTH = 4.0


def probes(nlist: int, size: int) -> int:
    """Lists to probe in an IVF of `nlist` lists holding `size` vectors: NPROBE, or enough to scan about
    MIN_SCANNED vectors, at most all of them."""
    return min(nlist, max(NPROBE, math.ceil(nlist * MIN_SCANNED / max(size, 1))))


class FirstStage:
    """IVF-SQ8 inner-product index over first vectors, keyed by item rowid."""

    def __init__(self, index: faiss.Index, covered: int, trained_on: int):
        self.index = index
        self.covered = covered  # every rowid <= covered is in the IVF (if it was live when added)
        self.trained_on = trained_on
        self.unsaved = 0  # rows added since the last save

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, first_vectors: np.ndarray, rowids: np.ndarray, seed: int = 0) -> FirstStage:
        """Train and fill an IVF on float32 unit vectors [n, D] with their rowids."""
        n, dim = first_vectors.shape
        nlist = int(min(MAX_NLIST, max(MIN_NLIST, round(math.sqrt(n)))))
        nlist = min(nlist, max(1, n // TRAIN_PER_LIST))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = first_vectors
        if n > TRAIN_PER_LIST * nlist * 2:
            sample = first_vectors[np.sort(rng.choice(n, TRAIN_PER_LIST * nlist * 2, replace=False))]
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.add_with_ids(np.ascontiguousarray(first_vectors, dtype=np.float32), rowids.astype(np.int64))
        stage = cls(ivf, int(rowids.max()) if len(rowids) else 0, n)
        stage.unsaved = n
        return stage

    def add(self, first_vectors: np.ndarray, rowids: np.ndarray) -> None:
        if len(rowids):
            self.index.add_with_ids(np.ascontiguousarray(first_vectors, dtype=np.float32), rowids.astype(np.int64))
            self.covered = max(self.covered, int(rowids.max()))
            self.unsaved += len(rowids)

    def stale(self, live: int) -> bool:
        """True when the IVF should be rebuilt: grown far past its training size or mostly dead rows."""
        return live > REBUILD_GROWTH * self.trained_on or self.size > 2 * max(live, 1)

    def search(self, query_first: np.ndarray, depth: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Rowids of the `depth` items whose first vector best matches the query's first vector; only among
        the rowids `allowed` when given (faiss skips the others while it scans, so all `depth` are allowed)."""
        q = np.ascontiguousarray(query_first.reshape(1, -1), dtype=np.float32)
        ivf = faiss.extract_index_ivf(self.index)
        if allowed is None:
            ivf.nprobe = probes(ivf.nlist, self.size)  # per search: the IVF grows between rebuilds
            _scores, ids = self.index.search(q, depth)
        else:
            # Probed as if the allowed items were the whole collection: the lists probed for all of them would
            # hold only a share of the allowed ones (measured in review: 100,000 items, 3,000 allowed, 64 of 316
            # lists gave 603 of depth 1,000). faiss skips the others before scoring them.
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=probes(ivf.nlist, len(allowed)))
            _scores, ids = self.index.search(q, depth, params=params)
        ids = ids[0]
        return ids[ids >= 0]

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write atomically as first_stage.<covered>.faiss and delete older copies."""
        path = directory / f"first_stage.{self.covered}.faiss"
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        for other in directory.glob("first_stage.*.faiss"):
            if other != path:
                other.unlink(missing_ok=True)
        self.unsaved = 0
        return path

    @classmethod
    def load(cls, directory: Path) -> FirstStage | None:
        """The newest saved first stage, or None (also when the file is unreadable: it is only a cache)."""
        best = None
        for path in directory.glob("first_stage.*.faiss"):
            m = FILE_PATTERN.match(path.name)
            if m and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), path)
        if best is None:
            return None
        try:
            index = faiss.read_index(str(best[1]))
        except RuntimeError:
            return None
        return cls(index, best[0], int(index.ntotal))
