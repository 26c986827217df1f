"""Which segment files an index keeps: their records in SQLite, when they are merged or rewritten, and the
sweep of files a killed writer left behind.

Segments never change (app.store.segments); the layout changes only by writing a new file, committing it
in SQLite, then deleting the files it replaces. A kill at any moment therefore leaves either the old or the
new layout committed, plus at most some files no commit references, which `sweep` deletes under the next
writer's lock. Small segments are merged with a binary-counter policy (O(log n) segments, each row
rewritten O(log n) times) up to `MAX_SEGMENT_BYTES`; a segment is rewritten without its removed items'
rows once `REWRITE_DEAD_FRACTION` of it is dead. Whatever changes files or rows here runs under the
writers' lock (app.store.db.file_lock), which the caller holds.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from .db import transaction
from .segments import SEGMENT_DIR, segment_file, sweep_uncommitted, write_live

# Largest segment a merge produces: 1 GiB is 65,536 items at R_c=64, D=128; big enough that a million
# items live in ~16 files, small enough that a merge never needs much memory or time.
MAX_SEGMENT_BYTES = 1 << 30
# Removing items leaves dead rows in their segment; rewrite a segment once this share of it is dead.
REWRITE_DEAD_FRACTION = 0.5


def max_segment_rows(num_vectors: int, dim: int) -> int:
    """Items in a segment of MAX_SEGMENT_BYTES at this shape (bf16: 2 bytes a value)."""
    return max(1, MAX_SEGMENT_BYTES // (num_vectors * dim * 2))


def sweep(conn: sqlite3.Connection, directory: Path) -> None:
    """Delete files a killed writer left behind: temp files and segments SQLite never committed."""
    referenced = {f for (f,) in conn.execute("SELECT file FROM segments")}
    sweep_uncommitted(directory / SEGMENT_DIR, referenced)
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def next_segment_id(conn: sqlite3.Connection) -> int:
    """The id (and so the file name) for a new segment."""
    # Never reuse the id (= file name) of a segment that was ever committed: a reader may still hold
    # the old file mapped under that name. An id whose file was never committed may be reused.
    (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'next_segment'").fetchone()
    return max(int(last) + 1, int(row[0]) if row else 1)


def insert_segment(conn: sqlite3.Connection, seg_id: int, file: str, rows: int) -> None:
    """Inside a write transaction: record a segment and consume its id."""
    conn.execute("INSERT INTO segments(id, file, rows, created) VALUES (?, ?, ?, ?)",
                 (seg_id, file, rows, time.time()))
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_segment', ?)", (str(seg_id + 1),))


def segment_live(conn: sqlite3.Connection) -> list[tuple[int, str, int, int]]:
    """(id, file, rows, live rows) of every segment, oldest first."""
    return conn.execute(
        "SELECT s.id, s.file, s.rows, COUNT(i.rowid) FROM segments s LEFT JOIN items i ON i.segment = s.id "
        "GROUP BY s.id ORDER BY s.id"
    ).fetchall()


def merge_tail(conn: sqlite3.Connection, directory: Path, num_vectors: int, dim: int) -> None:
    """Binary-counter merging: merge the two newest segments while the older is not the larger."""
    while True:
        segs = segment_live(conn)
        if len(segs) < 2:
            return
        (a, _, _, live_a), (b, _, _, live_b) = segs[-2], segs[-1]
        if live_a > live_b or live_a + live_b > max_segment_rows(num_vectors, dim):
            return
        rewrite(conn, directory, num_vectors, dim, [a, b])


def rewrite_sparse(conn: sqlite3.Connection, directory: Path, num_vectors: int, dim: int) -> None:
    """Rewrite the segments that are at least REWRITE_DEAD_FRACTION dead."""
    for seg_id, _file, rows, live in segment_live(conn):
        if rows and (rows - live) / rows >= REWRITE_DEAD_FRACTION:
            rewrite(conn, directory, num_vectors, dim, [seg_id])


def compact(conn: sqlite3.Connection, directory: Path, num_vectors: int, dim: int) -> None:
    """Rewrite every segment without dead rows and merge small ones (up to MAX_SEGMENT_BYTES each)."""
    limit = max_segment_rows(num_vectors, dim)
    groups: list[list[tuple[int, int, int]]] = [[]]
    size = 0
    for seg_id, _file, rows, live in segment_live(conn):
        if size + live > limit and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((seg_id, rows, live))
        size += live
    for group in groups:
        if len(group) > 1 or any(rows != live for _s, rows, live in group):
            rewrite(conn, directory, num_vectors, dim, [seg_id for seg_id, _r, _l in group])


def rewrite(conn: sqlite3.Connection, directory: Path, num_vectors: int, dim: int, seg_ids: list[int]) -> None:
    """Replace segments by one holding their live rows; commit, then delete the old files."""
    marks = ",".join("?" * len(seg_ids))
    old = conn.execute(f"SELECT id, file FROM segments WHERE id IN ({marks}) ORDER BY id", seg_ids).fetchall()
    live = conn.execute(
        f"SELECT rowid, segment, slot FROM items WHERE segment IN ({marks}) ORDER BY segment, slot", seg_ids
    ).fetchall()
    files = {seg_id: file for seg_id, file in old}
    new_id = next_segment_id(conn)
    new_file = segment_file(new_id)
    folder = directory / SEGMENT_DIR
    if live:
        # `live` is ordered by segment, then slot: the order the new segment's slots are given below.
        parts = [(folder / files[seg_id], np.array([slot for _r, s, slot in live if s == seg_id], dtype=np.int64))
                 for seg_id in sorted(files)]
        write_live(folder / new_file, num_vectors, dim, parts)
    with transaction(conn, "IMMEDIATE"):
        if live:
            insert_segment(conn, new_id, new_file, len(live))
            conn.executemany("UPDATE items SET segment = ?, slot = ? WHERE rowid = ?",
                             [(new_id, slot, rowid) for slot, (rowid, _s, _o) in enumerate(live)])
        conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", seg_ids)
    for file in files.values():
        (folder / file).unlink(missing_ok=True)
