"""The index: every item's R_c candidate vectors (bf16, memory-mapped) plus its metadata in SQLite.

Layout of an index folder::

    index.sqlite          metadata: items, segments, the checkpoint that made the vectors
    segments/seg-N.npy    vectors of a batch of items (app.store.segments)
    first_stage.R.faiss   optional IVF over the items' first vectors, covering items up to rowid R
    write.lock            serialises writers (flock); readers never take it

SQLite records which item sits in which slot of which segment. An `add` writes a new segment file
atomically and only then commits its rows in SQLite, so a process killed at any moment leaves an index
holding exactly the batches committed before the kill (unreferenced files are swept by the next writer).
Small segments are merged with a binary-counter policy (O(log n) segments, each row rewritten O(log n)
times) up to `MAX_SEGMENT_BYTES`; removed items are dropped from SQLite at once and their vectors when
their segment is rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.files import atomic_path
from model.scoring import near_top

from .first_stage import FirstStage
from .segments import (
    SEGMENT_DIR,
    Segment,
    View,
    open_segment,
    segment_file,
    stored_bytes,
    sweep_uncommitted,
    to_bf16_bits,
    write_live,
    write_segment,
)

FORMAT_VERSION = 2
DB_NAME = "index.sqlite"
LOCK_NAME = "write.lock"
# Largest segment a merge produces: 1 GiB is 65,536 items at R_c=64, D=128; big enough that a million
# items live in ~16 files, small enough that a merge never needs much memory or time.
MAX_SEGMENT_BYTES = 1 << 30
# Removing items leaves dead rows in their segment; rewrite a segment once this share of it is dead.
REWRITE_DEAD_FRACTION = 0.5
ID_LENGTH = 16  # hex characters of the content hash that form an item id (64 bits)
# Search: exact MaxSim costs about the same per candidate vector read whatever r_q (~45-50 ns per
# item-vector on one core), so a query is scored exactly while items x r_c <= EXACT_ROWS (10,000 items
# at r_c=64, ~30 ms; 640,000 at r_c=1); above, the first stage (app.store.first_stage) picks FIRST_STAGE_DEPTH
# items that are re-scored exactly (recall@10 0.99 on the synthetic million). Measured in bench/search.py,
# see docs/benchmarks.md ("Index and search").
EXACT_ROWS = 640_000
FIRST_STAGE_DEPTH = 1_000


def uses_exact(count: int, r_c: int) -> bool:
    """Whether a collection of `count` items is scored exactly at candidate budget r_c."""
    return count * r_c <= EXACT_ROWS


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL UNIQUE,
    segment INTEGER NOT NULL REFERENCES segments(id),
    slot INTEGER NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    page INTEGER,
    passage INTEGER,
    char_start INTEGER,
    char_end INTEGER,
    size_bytes INTEGER NOT NULL,
    added REAL NOT NULL,
    thumbnail TEXT,
    text TEXT,
    words TEXT NOT NULL,
    file_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
CREATE INDEX IF NOT EXISTS items_segment ON items(segment, slot);
CREATE INDEX IF NOT EXISTS items_thumbnail ON items(thumbnail);
-- Content-addressed (sha256 of the JPEG): a PDF page and its passages share one stored thumbnail.
CREATE TABLE IF NOT EXISTS thumbnails (sha256 TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
"""
_ITEM_COLUMNS = ("rowid, id, content_hash, path, kind, title, page, passage, char_start, char_end, "
                 "size_bytes, added, text, words")


# What to do about a damaged index: the index holds only derived data, so it is rebuilt from the files.
REBUILD_HINT = ("Your files are not affected: move the index folder away and run `index` on the same files "
                "again to rebuild it")


class IndexError_(ValueError):  # noqa: N801 - avoids shadowing the builtin IndexError
    """A problem with an index folder, in plain words."""


class CheckpointMismatch(IndexError_):
    """The index was built by another checkpoint: its vectors must not be mixed with this model's."""


# ------------------------------------------------------------------------------------------------ items


@dataclass
class IndexedItem:
    """Metadata of one indexed item (its vectors are fetched with `Index.vectors`)."""

    id: str
    path: str  # the source as ingested: an absolute path, or "<abs zip path>!/<member>"
    kind: str  # "image" | "pdf_page" | "text"
    title: str
    content_hash: str
    page: int | None
    passage: int | None
    char_span: tuple[int, int] | None
    size_bytes: int
    added: float  # unix time
    text: str | None
    words: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list, repr=False)
    rowid: int = field(default=0, repr=False)


def _words_json(words: Sequence[tuple[str, Sequence[float]]] | None) -> str:
    # Boxes to 1e-4 of the page (0.12 px on a 1200 px page render), compact separators: pages carry
    # hundreds of words, and this roughly halves what they cost in the database.
    return json.dumps([[w, [round(float(v), 4) for v in box]] for w, box in (words or [])],
                      separators=(",", ":"), ensure_ascii=False)


def _row_to_item(row: sqlite3.Row) -> IndexedItem:
    span = (row["char_start"], row["char_end"]) if row["char_start"] is not None else None
    words = [(w, tuple(box)) for w, box in json.loads(row["words"])]
    return IndexedItem(
        id=row["id"], path=row["path"], kind=row["kind"], title=row["title"], content_hash=row["content_hash"],
        page=row["page"], passage=row["passage"], char_span=span, size_bytes=row["size_bytes"],
        added=row["added"], text=row["text"], words=words, rowid=row["rowid"],
    )


# -------------------------------------------------------------------------------------------- the index


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
        self._writes = 0  # our own commits, which PRAGMA data_version does not count
        self._versioned = self._record_versions()
        self._lock = threading.RLock()

    def _record_versions(self) -> bool:
        """Indexes made before file versions were recorded get the column; False where that cannot be
        written (a read-only index), and then no version is ever called stale."""
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(items)")}
        if "file_sha256" in columns:
            return True
        try:
            self._conn.execute("ALTER TABLE items ADD COLUMN file_sha256 TEXT")
        except sqlite3.OperationalError:  # read-only, or another process added it a moment ago
            return "file_sha256" in {r["name"] for r in self._conn.execute("PRAGMA table_info(items)")}
        return True

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
        (directory / SEGMENT_DIR).mkdir(parents=True, exist_ok=True)
        # Build the database under a temp name and rename it in, so a half-created index never exists.
        with atomic_path(directory / DB_NAME) as tmp:
            conn = sqlite3.connect(tmp)
            conn.executescript(_SCHEMA)
            meta = {"format_version": str(FORMAT_VERSION), "checkpoint_id": checkpoint_id,
                    "checkpoint_source": checkpoint_source or "", "num_vectors": str(num_vectors),
                    "dim": str(dim), "created": repr(time.time())}
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
            conn.commit()
            conn.close()
        return cls.open(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike, checkpoint_id: str | None = None) -> Index:
        """Open an existing index; with `checkpoint_id`, refuse one that another checkpoint made."""
        directory = Path(directory).expanduser().resolve()
        db = directory / DB_NAME
        if not db.is_file():
            if directory.is_dir():
                raise FileNotFoundError(f"{directory} holds no index ({DB_NAME} is missing)")
            raise FileNotFoundError(f"index folder {directory} does not exist")
        conn, read_only = _connect(db)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            conn.close()
            raise IndexError_(f"{db} is not a readable index database ({e}). {REBUILD_HINT}") from e
        version = meta.get("format_version")
        if version != str(FORMAT_VERSION):
            conn.close()
            raise IndexError_(f"{directory} has index format {version!r}; this version reads {FORMAT_VERSION}")
        index = cls(directory, conn, read_only)
        if checkpoint_id is not None and checkpoint_id != index.checkpoint_id:
            index.close()
            raise CheckpointMismatch(
                f"index {directory} holds vectors made by checkpoint {index.checkpoint_id!r}, not "
                f"{checkpoint_id!r}; vectors of different checkpoints cannot be compared. Use the index's "
                f"checkpoint ({index.checkpoint_source or 'the bundled MetaEmbed-Mini'}) or a new index folder"
            )
        return index

    @classmethod
    def open_for(cls, directory: str | os.PathLike, checkpoint_id: str, num_vectors: int, dim: int,
                 checkpoint_source: str | None = None) -> Index:
        """Open the index at `directory` made by `checkpoint_id`, creating it if there is none."""
        if (Path(directory).expanduser() / DB_NAME).is_file():
            index = cls.open(directory, checkpoint_id)
            if (index.num_vectors, index.dim) != (num_vectors, dim):
                index.close()
                raise IndexError_(f"index {directory} stores {index.num_vectors}x{index.dim} vectors per "
                                  f"item, the model makes {num_vectors}x{dim}")
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
            rows = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY rowid")
        else:
            rows = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE path = ? ORDER BY rowid", (path,))
        return [_row_to_item(r) for r in rows]

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
            with self._txn("IMMEDIATE"):
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
        row = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item {item_id!r} in index {self.directory}")
        return _row_to_item(row)

    @_locked
    def get_many(self, rowids: Sequence[int]) -> dict[int, IndexedItem]:
        out: dict[int, IndexedItem] = {}
        ids = [int(r) for r in rowids]
        for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE rowid IN ({marks})", chunk):
                out[row["rowid"]] = _row_to_item(row)
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
        with self._txn():
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

    @contextlib.contextmanager
    def _txn(self, mode: str = "") -> Iterator[None]:
        """One SQLite transaction: committed when the block ends, rolled back if it raises."""
        self._conn.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ---- scoring ------------------------------------------------------------------------------------
    @_locked
    def search(self, q: torch.Tensor, budget: tuple[int, int], k: int = 10, *, exact: bool | None = None,
               depth: int = FIRST_STAGE_DEPTH) -> list[tuple[int, float]]:
        """Best `k` items for one query's vectors q [R_q, D] at budget (r_q, r_c): [(rowid, score)].

        exact=None scores exactly while items x r_c <= EXACT_ROWS and uses the first stage (top `depth`
        by first vectors, then exact MaxSim) above; True/False force either path.
        """
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"search: q must be one query [R_q, {self.dim}], got shape {tuple(q.shape)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"search: k must be a positive integer, got {k!r}")
        try:
            r_q, r_c = (int(b) for b in budget)
        except (TypeError, ValueError):
            raise ValueError(f"search: budget must be a pair (r_q, r_c), got {budget!r}") from None
        if not (1 <= r_q <= q.shape[0] and 1 <= r_c <= self.num_vectors):
            raise ValueError(f"search: budget ({r_q}, {r_c}) is out of range: allowed r_q 1..{q.shape[0]} "
                             f"and r_c 1..{self.num_vectors}")
        budget = (r_q, r_c)
        view = self.view()
        if view.count == 0:
            return []
        qb = q.unsqueeze(0)
        if exact is None:
            exact = uses_exact(view.count, r_c)
        if exact:
            rowids, scores = view.score_all(qb, budget)
        else:
            rowids, scores = view.score_rows(qb, budget, self.first_stage(view).search(
                q[0].float().numpy(), max(depth, k)))
        if not scores.numel():
            return []
        # The fast bf16 scores can misorder near-ties; the few that may reach the top k are ranked in fp32.
        shortlist = rowids[near_top(scores, k, r_q)].numpy()
        rowids, scores = view.score_rows(qb, budget, shortlist, precise=True)
        top = torch.topk(scores, min(k, scores.numel()))
        return [(int(rowids[i]), float(s)) for s, i in zip(top.values, top.indices)]

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
            with open(self.directory / LOCK_NAME, "a+") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
                try:
                    stage.save(self.directory)
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        except OSError:
            return

    # ---- writing ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self.read_only:
            raise IndexError_(f"index {self.directory} is read-only (its files or disk cannot be written): it "
                              "can be searched but not changed; copy the folder somewhere writable to change it")
        with open(self.directory / LOCK_NAME, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                self._writes += 1
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Delete files a killed writer left behind: temp files and segments SQLite never committed."""
        referenced = {f for (f,) in self._conn.execute("SELECT file FROM segments")}
        sweep_uncommitted(self.directory / SEGMENT_DIR, referenced)
        for path in self.directory.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _next_segment_id(self) -> int:
        # Never reuse the id (= file name) of a segment that was ever committed: a reader may still hold
        # the old file mapped under that name. An id whose file was never committed may be reused.
        (last,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'next_segment'").fetchone()
        return max(int(last) + 1, int(row[0]) if row else 1)

    def _insert_segment(self, seg_id: int, file: str, rows: int) -> None:
        """Inside a write transaction: record a segment and consume its id."""
        self._conn.execute("INSERT INTO segments(id, file, rows, created) VALUES (?, ?, ?, ?)",
                           (seg_id, file, rows, time.time()))
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_segment', ?)", (str(seg_id + 1),))

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
            known = self._hashes_present([it.content_hash for it in items])
            keep, seen = [], set()
            for i, it in enumerate(items):
                if it.content_hash not in known and it.content_hash not in seen:
                    seen.add(it.content_hash)
                    keep.append(i)
            if not keep:
                return [None] * len(items)
            bits = to_bf16_bits(vectors[keep] if len(keep) < len(items) else vectors)
            seg_id = self._next_segment_id()
            file = segment_file(seg_id)
            write_segment(self.directory / SEGMENT_DIR / file, self.num_vectors, self.dim, [bits], len(keep))
            now = time.time()
            ids: list[str | None] = [None] * len(items)
            with self._txn("IMMEDIATE"):
                self._insert_segment(seg_id, file, len(keep))
                for slot, i in enumerate(keep):
                    it = items[i]
                    item_id = self._new_id(it.content_hash)
                    ids[i] = item_id
                    span = it.char_span or (None, None)
                    thumb = None
                    if it.thumbnail:
                        thumb = hashlib.sha256(it.thumbnail).hexdigest()
                        self._conn.execute("INSERT OR IGNORE INTO thumbnails(sha256, jpeg) VALUES (?, ?)",
                                           (thumb, sqlite3.Binary(it.thumbnail)))
                    self._conn.execute(
                        "INSERT INTO items(id, content_hash, segment, slot, path, kind, title, page, passage, "
                        "char_start, char_end, size_bytes, added, thumbnail, text, words, file_sha256) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item_id, it.content_hash, seg_id, slot, it.source, it.kind, it.title, it.page,
                         it.passage, span[0], span[1], int(it.size_bytes), now, thumb, it.text,
                         _words_json(it.words), getattr(it, "file_hash", "") or None),
                    )
            self._merge_tail()
        return ids

    def _hashes_present(self, hashes: Sequence[str]) -> set[str]:
        present: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start:start + 500])
            marks = ",".join("?" * len(chunk))
            present.update(h for (h,) in self._conn.execute(
                f"SELECT content_hash FROM items WHERE content_hash IN ({marks})", chunk))
        return present

    def _new_id(self, content_hash: str) -> str:
        # Ids are prefixes of the content hash: stable across re-indexing; lengthened on a (rare) clash.
        for length in range(ID_LENGTH, len(content_hash) + 1, 4):
            candidate = content_hash[:length]
            if self._conn.execute("SELECT 1 FROM items WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate
        raise IndexError_(f"content hash {content_hash} is already indexed")

    @_locked
    def remove(self, targets: Iterable[str]) -> list[str]:
        """Remove items by id or by source path (a file, a zip archive or a folder); returns removed ids.

        Raises KeyError naming the targets that match nothing (and then removes nothing).
        """
        targets = list(targets)
        with self._write_lock():
            rowids: dict[int, str] = {}
            missing = []
            for target in targets:
                found = self._match(target)
                if not found:
                    missing.append(target)
                rowids.update(found)
            if missing:
                raise KeyError(f"nothing in index {self.directory} matches {', '.join(map(repr, missing))} "
                               "(give item ids or indexed paths)")
            with self._txn("IMMEDIATE"):
                for start in range(0, len(rowids), 500):
                    chunk = list(rowids)[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    self._conn.execute(f"DELETE FROM items WHERE rowid IN ({marks})", chunk)
                self._conn.execute("DELETE FROM thumbnails WHERE sha256 NOT IN "
                                   "(SELECT thumbnail FROM items WHERE thumbnail IS NOT NULL)")
            self._rewrite_sparse()
        return sorted(rowids.values())

    def _match(self, target: str) -> dict[int, str]:
        rows = self._conn.execute("SELECT rowid, id FROM items WHERE id = ?", (target,)).fetchall()
        if rows:
            return dict(rows)
        path = str(Path(target).expanduser().absolute()) if not target.startswith("<") else target
        candidates = {path, target}
        with contextlib.suppress(OSError):
            candidates.add(str(Path(target).expanduser().resolve()))
        out: dict[int, str] = {}
        for p in candidates:
            prefix = p.rstrip("/")
            like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            out.update(self._conn.execute(
                "SELECT rowid, id FROM items WHERE path = ? OR path LIKE ? ESCAPE '\\' OR path LIKE ? ESCAPE '\\'",
                (p, like + "/%", like + "!/%"),
            ).fetchall())
        return out

    # ---- segment maintenance ------------------------------------------------------------------------
    def _segment_live(self) -> list[tuple[int, str, int, int]]:
        return self._conn.execute(
            "SELECT s.id, s.file, s.rows, COUNT(i.rowid) FROM segments s LEFT JOIN items i ON i.segment = s.id "
            "GROUP BY s.id ORDER BY s.id"
        ).fetchall()

    @property
    def max_segment_rows(self) -> int:
        return max(1, MAX_SEGMENT_BYTES // (self.num_vectors * self.dim * 2))

    def _merge_tail(self) -> None:
        """Binary-counter merging: merge the two newest segments while the older is not the larger."""
        while True:
            segs = self._segment_live()
            if len(segs) < 2:
                return
            (a, _, _, live_a), (b, _, _, live_b) = segs[-2], segs[-1]
            if live_a > live_b or live_a + live_b > self.max_segment_rows:
                return
            self._rewrite([a, b])

    def _rewrite_sparse(self) -> None:
        for seg_id, _file, rows, live in self._segment_live():
            if rows and (rows - live) / rows >= REWRITE_DEAD_FRACTION:
                self._rewrite([seg_id])

    @_locked
    def compact(self) -> None:
        """Rewrite every segment without dead rows and merge small ones (up to MAX_SEGMENT_BYTES each)."""
        with self._write_lock():
            segs = self._segment_live()
            groups: list[list[tuple[int, int, int]]] = [[]]
            size = 0
            for seg_id, _file, rows, live in segs:
                if size + live > self.max_segment_rows and groups[-1]:
                    groups.append([])
                    size = 0
                groups[-1].append((seg_id, rows, live))
                size += live
            for group in groups:
                if len(group) > 1 or any(rows != live for _s, rows, live in group):
                    self._rewrite([seg_id for seg_id, _r, _l in group])

    def _rewrite(self, seg_ids: list[int]) -> None:
        """Replace segments by one holding their live rows; commit, then delete the old files."""
        marks = ",".join("?" * len(seg_ids))
        old = self._conn.execute(f"SELECT id, file FROM segments WHERE id IN ({marks}) ORDER BY id",
                                 seg_ids).fetchall()
        live = self._conn.execute(
            f"SELECT rowid, segment, slot FROM items WHERE segment IN ({marks}) ORDER BY segment, slot", seg_ids
        ).fetchall()
        files = {seg_id: file for seg_id, file in old}
        new_id = self._next_segment_id()
        new_file = segment_file(new_id)
        folder = self.directory / SEGMENT_DIR
        if live:
            # `live` is ordered by segment, then slot: the order the new segment's slots are given below.
            parts = [(folder / files[seg_id], np.array([slot for _r, s, slot in live if s == seg_id], dtype=np.int64))
                     for seg_id in sorted(files)]
            write_live(folder / new_file, self.num_vectors, self.dim, parts)
        with self._txn("IMMEDIATE"):
            if live:
                self._insert_segment(new_id, new_file, len(live))
                self._conn.executemany("UPDATE items SET segment = ?, slot = ? WHERE rowid = ?",
                                       [(new_id, slot, rowid) for slot, (rowid, _s, _o) in enumerate(live)])
            self._conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", seg_ids)
        for file in files.values():
            (folder / file).unlink(missing_ok=True)


def _connect(db: Path) -> tuple[sqlite3.Connection, bool]:
    """(connection, read_only). An index whose files or disk cannot be written opens read-only."""
    if os.access(db, os.W_OK) and os.access(db.parent, os.W_OK):
        # Autocommit mode: transactions are opened explicitly (see Index._txn), never implicitly.
        conn = sqlite3.connect(db, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            # WAL: readers (the app) never block the writer (the CLI) and vice versa; NORMAL sync is still
            # atomic and consistent when the process is killed (only an OS crash may drop the last commits).
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn, False
        except sqlite3.OperationalError as e:  # a read-only mount reports itself only here
            conn.close()
            if "readonly" not in str(e) and "read-only" not in str(e):
                raise
    return _connect_read_only(db), True


def _connect_read_only(db: Path) -> sqlite3.Connection:
    # mode=ro still needs the WAL's shared-memory file, which a read-only folder may lack; immutable=1
    # reads the file as it is (right for a read-only disk, where no writer can change it meanwhile).
    for flags in ("mode=ro", "immutable=1"):
        conn = sqlite3.connect(f"{db.as_uri()}?{flags}", uri=True, timeout=60.0, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("SELECT COUNT(*) FROM meta").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
    raise IndexError_(f"{db} cannot be opened for reading (its folder or disk refuses even read-only access)")
