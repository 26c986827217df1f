"""The index: every item's R_c candidate vectors (bf16, memory-mapped) plus its metadata in SQLite.

Layout of an index folder::

    index.sqlite          metadata: items, segments, the checkpoint that made the vectors (app.store.db)
    segments/seg-N.npy    vectors of a batch of items (app.store.segments)
    first_stage.R.faiss   optional IVF over the items' first vectors, covering items up to rowid R
    write.lock            serialises writers (flock); readers never take it

SQLite records which item sits in which slot of which segment. An `add` writes a new segment file
atomically and only then commits its rows in SQLite, so a process killed at any moment leaves an index
holding exactly the batches committed before the kill (unreferenced files are swept by the next writer).
Small segments are merged with a binary-counter policy (O(log n) segments, each row rewritten O(log n)
times) up to `MAX_SEGMENT_BYTES`; removed items are dropped from SQLite at once and their vectors when
their segment is rewritten (both in app.store.compaction).

This module holds the `Index` that ties these together (opening, reading, writing under the lock, search);
item rows are app.store.items, and the search's exact/first-stage switch-over is app.store.planner.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.scoring import fast_path_is_precise, near_top

from . import compaction
from .db import (
    DB_NAME,
    check_format,
    connect,
    create_database,
    file_lock,
    index_kinds,
    param_chunks,
    record_file_versions,
    transaction,
)
from .errors import (
    REBUILD_HINT,
    CheckpointMismatch,
    IndexError_,
    check_kinds,
    check_layout,
    check_search,
    mismatch_message,
)
from .first_stage import FirstStage
from .items import (
    ITEM_COLUMNS,
    IndexedItem,
    delete_items,
    hashes_present,
    insert_item,
    match,
    new_id,
    row_to_item,
)
from .planner import EXACT_MS, FIRST_STAGE_DEPTH, uses_exact
from .segments import (
    SEGMENT_DIR,
    Segment,
    View,
    open_segment,
    segment_file,
    stored_bytes,
    to_bf16_bits,
    write_segment,
)

# Re-exported: callers import the store's public names from here (the switch-over's from app.store.planner).
__all__ = ["DB_NAME", "EXACT_MS", "FIRST_STAGE_DEPTH", "REBUILD_HINT", "CheckpointMismatch", "Index",
           "IndexError_", "IndexedItem", "uses_exact"]

def _locked(method):
    """Serialise a method on the index's lock: the app calls one Index from several threads."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Index:
    """A persistent collection of multi-vector items under one folder.

    Open with `Index.open` (existing) or `Index.create`; `Index.open_for(directory, checkpoint_id, ...)`
    does either and refuses an index made by another checkpoint. One writer at a time (a lock file
    serialises them); any number of readers, which call `refresh()` to see other processes' writes.
    """

    def __init__(self, directory: Path, conn: sqlite3.Connection, read_only: bool = False):
        self.directory = directory
        self._conn = conn
        self.read_only = read_only  # files or disk not writable: searches work, changes raise IndexError_
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.checkpoint_id: str = meta["checkpoint_id"]
        self.checkpoint_source: str | None = meta.get("checkpoint_source") or None
        self.num_vectors: int = int(meta["num_vectors"])
        self.dim: int = int(meta["dim"])
        self.created: float = float(meta["created"])
        self._view: View | None = None
        self._open_segments: dict[str, np.ndarray] = {}
        self._first_stage = None  # FirstStage, built on demand
        self._kind_rowids: dict[frozenset[str], np.ndarray] = {}  # kinds -> their rowids, at _kind_version
        self._kind_version: int | None = None
        self._writes = 0  # our own commits, which PRAGMA data_version does not count
        self._versioned = record_file_versions(conn)  # False: no version is ever called stale
        index_kinds(conn)
        self._lock = threading.RLock()

    # ---- opening ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, checkpoint_id: str, num_vectors: int, dim: int,
               checkpoint_source: str | None = None) -> Index:
        """A new, empty index. Refuses a folder that already holds an index or other files."""
        directory = Path(directory).expanduser().resolve()
        if (directory / DB_NAME).exists():
            raise IndexError_(f"{directory} already holds an index; open it instead of creating one")
        if directory.exists() and not directory.is_dir():
            raise IndexError_(f"{directory} is a file; an index is a folder")
        if directory.exists() and any(directory.iterdir()):
            raise IndexError_(f"{directory} is not empty; create the index in a new or empty folder")
        if num_vectors < 1 or dim < 1:
            raise ValueError(f"num_vectors and dim must be positive, got {num_vectors} and {dim}")
        try:
            (directory / SEGMENT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexError_(f"cannot create the index folder {directory} ({e.strerror or e})") from None
        create_database(directory / DB_NAME, checkpoint_id, num_vectors, dim, checkpoint_source)
        return cls.open(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike, checkpoint_id: str | None = None) -> Index:
        """Open an existing index; with `checkpoint_id`, refuse one that another checkpoint made."""
        directory = Path(directory).expanduser().resolve()
        db = directory / DB_NAME
        if not db.is_file():
            if directory.is_dir():
                raise FileNotFoundError(f"{directory} holds no index ({DB_NAME} is missing)")
            if directory.is_file():
                raise FileNotFoundError(f"{directory} is a file; an index is a folder")
            raise FileNotFoundError(f"index folder {directory} does not exist")
        conn, read_only = connect(db)
        check_format(conn, db)
        index = cls(directory, conn, read_only)
        if checkpoint_id is not None and checkpoint_id != index.checkpoint_id:
            index.close()
            raise CheckpointMismatch(mismatch_message(f"index {directory}", index.checkpoint_id,
                                                      index.checkpoint_source, checkpoint_id, "index folder"))
        return index

    @classmethod
    def open_for(cls, directory: str | os.PathLike, checkpoint_id: str, num_vectors: int, dim: int,
                 checkpoint_source: str | None = None) -> Index:
        """Open the index at `directory` made by `checkpoint_id`, creating it if there is none."""
        if (Path(directory).expanduser() / DB_NAME).is_file():
            index = cls.open(directory, checkpoint_id)
            check_layout(index, num_vectors, dim, f"index {directory}")
            return index
        return cls.create(directory, checkpoint_id, num_vectors, dim, checkpoint_source)

    @_locked
    def close(self) -> None:
        self._conn.close()
        self._view = None
        self._open_segments.clear()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    location = property(lambda self: str(self.directory), doc="Where the index is, for messages.")

    # ---- reading ------------------------------------------------------------------------------------
    @_locked
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    @_locked
    def known_hashes(self) -> set[str]:
        return {h for (h,) in self._conn.execute("SELECT content_hash FROM items")}

    @_locked
    def items(self, path: str | None = None) -> list[IndexedItem]:
        """All items in the order they were added (or those of one source path)."""
        if path is None:
            rows = self._conn.execute(f"SELECT {ITEM_COLUMNS} FROM items ORDER BY rowid")
        else:
            rows = self._conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE path = ? ORDER BY rowid", (path,))
        return [row_to_item(r) for r in rows]

    @_locked
    def paths_of_file(self, file_hash: str) -> list[str]:
        """Source paths of the items that came from a file with this sha256 (any path it was indexed under)."""
        if not self._versioned:
            return []
        rows = self._conn.execute("SELECT DISTINCT path FROM items WHERE file_sha256 = ?", (file_hash,))
        return [r[0] for r in rows]

    @_locked
    def move(self, old_path: str, new_path: str, title: str) -> int:
        """Point the items of `old_path` at `new_path` (a file that was renamed or moved); returns how many."""
        with self._write_lock():
            with transaction(self._conn, "IMMEDIATE"):
                cur = self._conn.execute("UPDATE items SET path = ?, title = ? WHERE path = ?",
                                         (new_path, title, old_path))
        return cur.rowcount

    @_locked
    def stale_ids(self, path: str, file_hash: str) -> list[str]:
        """Ids of the items of source `path` that came from another version of the file than `file_hash`
        (items indexed before versions were recorded are never called stale)."""
        if not self._versioned:
            return []
        rows = self._conn.execute("SELECT id FROM items WHERE path = ? AND file_sha256 IS NOT NULL "
                                  "AND file_sha256 != ?", (path, file_hash))
        return [r[0] for r in rows]

    @_locked
    def get(self, item_id: str) -> IndexedItem:
        row = self._conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item {item_id!r} in index {self.directory}")
        return row_to_item(row)

    @_locked
    def get_many(self, rowids: Sequence[int]) -> dict[int, IndexedItem]:
        out: dict[int, IndexedItem] = {}
        for chunk, marks in param_chunks([int(r) for r in rowids]):
            for row in self._conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE rowid IN ({marks})", chunk):
                out[row["rowid"]] = row_to_item(row)
        return out

    @_locked
    def thumbnail(self, item_id: str) -> bytes:
        """The item's JPEG thumbnail (b"" for text passages, which have none)."""
        row = self._conn.execute(
            "SELECT t.jpeg FROM items i LEFT JOIN thumbnails t ON t.sha256 = i.thumbnail WHERE i.id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no item {item_id!r} in index {self.directory}")
        return bytes(row[0] or b"")

    @_locked
    def vectors(self, item_id: str) -> torch.Tensor:
        """The item's R_c candidate vectors, bf16 [R_c, D] (a copy)."""
        row = self._conn.execute("SELECT rowid FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item {item_id!r} in index {self.directory}")
        view = self.view()
        found, seg, slot = view.locate(np.array([row[0]], dtype=np.int64))
        if not found[0]:  # written by another process since our snapshot
            view = self.refresh()
            found, seg, slot = view.locate(np.array([row[0]], dtype=np.int64))
        return view.segments[int(seg[0])].vectors(int(slot[0]))

    @_locked
    def info(self) -> dict:
        """Counts and sizes, for `cli info` and the app's status line."""
        kinds = dict(self._conn.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall())
        segments = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM segments").fetchone()
        files = [f for (f,) in self._conn.execute("SELECT file FROM segments")]
        vector_bytes = stored_bytes(self.directory / SEGMENT_DIR, files)
        db_bytes = sum(p.stat().st_size for p in self.directory.glob(DB_NAME + "*"))
        first_stage = sum(p.stat().st_size for p in self.directory.glob("first_stage.*.faiss"))
        count = sum(kinds.values())
        sources = self._conn.execute("SELECT COUNT(DISTINCT path) FROM items").fetchone()[0]
        return {
            "directory": str(self.directory), "items": count, "sources": sources, "kinds": kinds,
            "checkpoint_id": self.checkpoint_id, "checkpoint_source": self.checkpoint_source,
            "num_vectors": self.num_vectors, "dim": self.dim, "created": self.created,
            "segments": segments[0], "segment_rows": segments[1], "dead_rows": segments[1] - count,
            "vector_bytes": vector_bytes, "metadata_bytes": db_bytes, "first_stage_bytes": first_stage,
        }

    # ---- the search snapshot ------------------------------------------------------------------------
    def _data_version(self) -> int:
        # Changes whenever another connection commits; combined with our own write counter below.
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0]) * 1_000_003 + self._writes

    @_locked
    def view(self) -> View:
        """The current snapshot of segments and item positions (reloaded when the index changed)."""
        if self._view is None or self._view.version != self._data_version():
            return self.refresh()
        return self._view

    @_locked
    def refresh(self) -> View:
        for attempt in range(5):
            try:
                self._view = self._load_view()
                return self._view
            except FileNotFoundError:
                # A writer replaced a segment between our read of SQLite and opening the file: retry.
                if attempt == 4:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _load_view(self) -> View:
        with transaction(self._conn):
            version = self._data_version()
            seg_rows = self._conn.execute("SELECT id, file, rows FROM segments ORDER BY id").fetchall()
            items = np.array(self._conn.execute("SELECT rowid, segment, slot FROM items ORDER BY rowid").fetchall(),
                             dtype=np.int64).reshape(-1, 3)
        segments = []
        opened: dict[str, np.ndarray] = {}
        for seg_id, file, rows in seg_rows:
            bits = self._open_segments.get(file)
            if bits is None:
                bits = open_segment(self.directory / SEGMENT_DIR / file)
                if bits.shape != (self.num_vectors, rows, self.dim) or bits.dtype != np.uint16:
                    raise IndexError_(f"segment {file} of index {self.directory} has shape {bits.shape} "
                                      f"{bits.dtype}, expected ({self.num_vectors}, {rows}, {self.dim}) uint16")
            opened[file] = bits
            segments.append(Segment(seg_id, bits))
        self._open_segments = opened
        return View.build(segments, items, version, self.dim)

    # ---- scoring ------------------------------------------------------------------------------------
    def scored_budget(self, budget: tuple[int, int]) -> tuple[int, int]:
        return budget  # every budget is scored as asked: a prefix of the stored vectors is a slice

    @_locked
    def exact_for(self, r_c: int, *, kinds: Collection[str] | None = None) -> bool:
        """Whether a search at candidate budget r_c (of the items of `kinds` only, when given) scores every
        item (else first stage, then MaxSim); the rule, counting items x r_c x D and this CPU's bf16 class, is
        app.store.planner.uses_exact."""
        view, kinds = self.view(), check_kinds(kinds)
        return uses_exact(view.count if kinds is None else len(self._rowids_of_kinds(view, kinds)), r_c, self.dim)

    @_locked
    def search(self, q: torch.Tensor, budget: tuple[int, int], k: int = 10, *, exact: bool | None = None,
               depth: int = FIRST_STAGE_DEPTH, kinds: Collection[str] | None = None) -> list[tuple[int, float]]:
        """Best `k` items for one query's vectors q [R_q, D] at budget (r_q, r_c): [(rowid, score)].

        exact=None lets `uses_exact` (app.store.planner) choose: exact while items x r_c x D fits this CPU's
        budget, else the first stage (top `depth` by first vectors, then exact MaxSim); True/False force either.
        `kinds`: only items of these kinds (ITEM_KINDS), counted as the collection the switch weighs; the first
        stage then looks among them alone, so a kind with few items is not crowded out of its `depth`.
        """
        r_q, r_c = check_search(q, budget, k, self.dim, self.num_vectors)
        kinds = check_kinds(kinds)
        budget = (r_q, r_c)
        view = self.view()
        allowed = None if kinds is None else self._rowids_of_kinds(view, kinds)
        count = view.count if allowed is None else len(allowed)
        if count == 0:
            return []
        qb = q.unsqueeze(0)
        if exact is None:
            exact = uses_exact(count, r_c, self.dim, depth=max(depth, k))
        if exact and (allowed is None or 2 * len(allowed) >= view.count):
            rowids, scores = view.score_all(qb, budget)
            if allowed is not None:  # most items are of these kinds: score them all where they lie, keep those
                keep = torch.from_numpy(np.isin(rowids.numpy(), allowed))
                rowids, scores = rowids[keep], scores[keep]
        elif exact:
            # A few of many: gathered and scored FIRST_STAGE_DEPTH at a time, as the two-stage path's picks are,
            # so no search holds a copy of more of them at once.
            parts = [view.score_rows(qb, budget, allowed[i:i + FIRST_STAGE_DEPTH])
                     for i in range(0, len(allowed), FIRST_STAGE_DEPTH)]
            rowids, scores = torch.cat([r for r, _ in parts]), torch.cat([sc for _, sc in parts])
        else:
            rowids, scores = view.score_rows(qb, budget, self.first_stage(view).search(
                q[0].float().numpy(), max(depth, k), allowed))
        if not scores.numel():
            return []
        # Fast bf16 scores can misorder near-ties; the few that may reach the top k are ranked in fp32 (where
        # the fast path was fp32 already, as from 8 query vectors on a CPU without native bf16, they are).
        if not fast_path_is_precise(r_q):
            shortlist = rowids[near_top(scores, k, r_q)].numpy()
            rowids, scores = view.score_rows(qb, budget, shortlist, precise=True)
        top = torch.topk(scores, min(k, scores.numel()))
        return [(int(rowids[i]), float(s)) for s, i in zip(top.values, top.indices)]

    @_locked
    def _rowids_of_kinds(self, view: View, kinds: frozenset[str]) -> np.ndarray:
        """Sorted rowids of the items of these kinds, read once per snapshot (items_kind) and per set of kinds.
        Read just after the snapshot, they may include items added since, which scoring leaves out as it does
        removed ones (rowids are never reused, so none can be of another kind)."""
        if self._kind_version != view.version:
            self._kind_rowids, self._kind_version = {}, view.version
        if kinds not in self._kind_rowids:
            marks = ",".join("?" * len(kinds))
            rows = self._conn.execute(f"SELECT rowid FROM items WHERE kind IN ({marks}) ORDER BY rowid",
                                      sorted(kinds)).fetchall()
            self._kind_rowids[kinds] = np.array([r[0] for r in rows], dtype=np.int64)
        return self._kind_rowids[kinds]

    @_locked
    def first_stage(self, view: View | None = None) -> FirstStage:
        """The IVF over first vectors, loaded or built, then brought up to date with `view`."""
        view = view or self.view()
        stage = self._first_stage
        if stage is None:
            stage = FirstStage.load(self.directory)
        if stage is None or stage.stale(view.count):
            rowids, firsts = view.first_vectors(0)
            stage = FirstStage.build(firsts, rowids)
        elif view.count and view.rowids[-1] > stage.covered:
            rowids, firsts = view.first_vectors(stage.covered)
            stage.add(firsts, rowids)
        self._first_stage = stage
        if stage.unsaved > 0.05 * stage.size:
            self._save_first_stage(stage)
        return stage

    def _save_first_stage(self, stage: FirstStage) -> None:
        # Only a cache: skip it when another process is writing, or the folder is read-only.
        try:
            with file_lock(self.directory, wait=False) as held:
                if held:
                    stage.save(self.directory)
        except OSError:
            return

    # ---- writing ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self.read_only:
            raise IndexError_(f"index {self.directory} is read-only (its files or disk cannot be written): it "
                              "can be searched but not changed; copy the folder somewhere writable to change it")
        with file_lock(self.directory):
            try:
                compaction.sweep(self._conn, self.directory)
                yield
            finally:
                self._writes += 1

    @_locked
    def add(self, items: Sequence[Any], vectors: torch.Tensor | np.ndarray) -> list[str | None]:
        """Store items (ingest `Item`s) with their candidate vectors [B, R_c, D]; one atomic commit.

        Items whose content hash is already indexed (or repeated within the batch) are skipped.
        Returns, for each item in order, its new id, or None where it was skipped as a duplicate.
        """
        if len(items) != len(vectors):
            raise ValueError(f"add: {len(items)} items but {len(vectors)} vector sets")
        if len(items) == 0:
            return []
        shape = tuple(vectors.shape[1:])
        if shape != (self.num_vectors, self.dim):
            raise ValueError(f"add: vectors have shape {tuple(vectors.shape)}, this index stores "
                             f"[B, {self.num_vectors}, {self.dim}]")
        with self._write_lock():
            known = hashes_present(self._conn, [it.content_hash for it in items])
            keep, seen = [], set()
            for i, it in enumerate(items):
                if it.content_hash not in known and it.content_hash not in seen:
                    seen.add(it.content_hash)
                    keep.append(i)
            if not keep:
                return [None] * len(items)
            bits = to_bf16_bits(vectors[keep] if len(keep) < len(items) else vectors)
            seg_id = compaction.next_segment_id(self._conn)
            file = segment_file(seg_id)
            write_segment(self.directory / SEGMENT_DIR / file, self.num_vectors, self.dim, [bits], len(keep))
            now = time.time()
            ids: list[str | None] = [None] * len(items)
            with transaction(self._conn, "IMMEDIATE"):
                compaction.insert_segment(self._conn, seg_id, file, len(keep))
                for slot, i in enumerate(keep):
                    ids[i] = self._new_id(items[i].content_hash)
                    insert_item(self._conn, items[i], ids[i], seg_id, slot, now)
            compaction.merge_tail(self._conn, self.directory, self.num_vectors, self.dim)
        return ids

    def _new_id(self, content_hash: str) -> str:
        return new_id(self._conn, content_hash)

    @_locked
    def remove(self, targets: Iterable[str]) -> list[IndexedItem]:
        """Remove items by id or by source path (a file, a zip archive or a folder); returns the removed items
        as they were, by id (what a message needs to count them as files and pages: humanize.files_of).

        Raises KeyError naming the targets that match nothing (and then removes nothing).
        """
        targets = list(targets)
        with self._write_lock():
            rowids: dict[int, str] = {}
            missing = []
            for target in targets:
                found = match(self._conn, target)
                if not found:
                    missing.append(target)
                rowids.update(found)
            if missing:
                raise KeyError(f"nothing in index {self.directory} matches {', '.join(map(repr, missing))} "
                               "(give item ids or indexed paths)")
            removed = self.get_many(list(rowids))
            with transaction(self._conn, "IMMEDIATE"):
                delete_items(self._conn, list(rowids))
            compaction.rewrite_sparse(self._conn, self.directory, self.num_vectors, self.dim)
        return sorted(removed.values(), key=lambda it: it.id)

    # ---- segment maintenance (app.store.compaction) -------------------------------------------------
    @property
    def max_segment_rows(self) -> int:
        return compaction.max_segment_rows(self.num_vectors, self.dim)

    @_locked
    def compact(self) -> None:
        """Rewrite every segment without dead rows and merge small ones (up to MAX_SEGMENT_BYTES each)."""
        with self._write_lock():
            compaction.compact(self._conn, self.directory, self.num_vectors, self.dim)
