"""Indexed items as SQLite rows: the `IndexedItem` callers get back, and the queries that add and find item rows.

An item's row records where its vectors sit (segment and slot, app.store.segments) and its metadata: the
source path, page or passage, the words with their boxes, the sha256 of the file it came from, and a
content-addressed thumbnail. These functions take the connection and run inside whatever transaction and
lock the caller (`app.store.index.Index`) holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .db import param_chunks
from .errors import IndexError_

ID_LENGTH = 16  # hex characters of the content hash that form an item id (64 bits)
ITEM_COLUMNS = ("rowid, id, content_hash, path, kind, title, page, passage, char_start, char_end, "
                "size_bytes, added, text, words")


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


def words_json(words: Sequence[tuple[str, Sequence[float]]] | None) -> str:
    # Boxes to 1e-4 of the page (0.12 px on a 1200 px page render), compact separators: pages carry
    # hundreds of words, and this roughly halves what they cost in the database.
    return json.dumps([[w, [round(float(v), 4) for v in box]] for w, box in (words or [])],
                      separators=(",", ":"), ensure_ascii=False)


def row_to_item(row: sqlite3.Row) -> IndexedItem:
    """The item of a row selected with ITEM_COLUMNS."""
    span = (row["char_start"], row["char_end"]) if row["char_start"] is not None else None
    words = [(w, tuple(box)) for w, box in json.loads(row["words"])]
    return IndexedItem(
        id=row["id"], path=row["path"], kind=row["kind"], title=row["title"], content_hash=row["content_hash"],
        page=row["page"], passage=row["passage"], char_span=span, size_bytes=row["size_bytes"],
        added=row["added"], text=row["text"], words=words, rowid=row["rowid"],
    )


def insert_item(conn: sqlite3.Connection, item: Any, item_id: str, segment: int, slot: int, added: float) -> None:
    """Record an ingest `Item` whose vectors are at `slot` of `segment`, with its thumbnail."""
    span = item.char_span or (None, None)
    thumb = None
    if item.thumbnail:
        thumb = hashlib.sha256(item.thumbnail).hexdigest()
        conn.execute("INSERT OR IGNORE INTO thumbnails(sha256, jpeg) VALUES (?, ?)",
                     (thumb, sqlite3.Binary(item.thumbnail)))
    conn.execute(
        "INSERT INTO items(id, content_hash, segment, slot, path, kind, title, page, passage, "
        "char_start, char_end, size_bytes, added, thumbnail, text, words, file_sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (item_id, item.content_hash, segment, slot, item.source, item.kind, item.title, item.page,
         item.passage, span[0], span[1], int(item.size_bytes), added, thumb, item.text,
         words_json(item.words), getattr(item, "file_hash", "") or None),
    )


def delete_items(conn: sqlite3.Connection, rowids: Sequence[int]) -> None:
    """Delete item rows, and the thumbnails no remaining item shows."""
    for chunk, marks in param_chunks(rowids):
        conn.execute(f"DELETE FROM items WHERE rowid IN ({marks})", chunk)
    conn.execute("DELETE FROM thumbnails WHERE sha256 NOT IN "
                 "(SELECT thumbnail FROM items WHERE thumbnail IS NOT NULL)")


def hashes_present(conn: sqlite3.Connection, hashes: Sequence[str]) -> set[str]:
    """Which of these content hashes are indexed."""
    present: set[str] = set()
    for chunk, marks in param_chunks(hashes):
        present.update(h for (h,) in conn.execute(
            f"SELECT content_hash FROM items WHERE content_hash IN ({marks})", chunk))
    return present


def new_id(conn: sqlite3.Connection, content_hash: str) -> str:
    """A free id for the item with this content hash."""
    # Ids are prefixes of the content hash: stable across re-indexing; lengthened on a (rare) clash.
    for length in range(ID_LENGTH, len(content_hash) + 1, 4):
        candidate = content_hash[:length]
        if conn.execute("SELECT 1 FROM items WHERE id = ?", (candidate,)).fetchone() is None:
            return candidate
    raise IndexError_(f"content hash {content_hash} is already indexed")


def target_paths(target: str) -> set[str]:
    """The paths a user's remove target may name an indexed source by: as given, absolute, and resolved.
    An empty target names none: made absolute it would be the working directory, and everything under it."""
    if not target.strip():
        return set()
    path = str(Path(target).expanduser().absolute()) if not target.startswith("<") else target
    candidates = {path, target}
    with contextlib.suppress(OSError):
        candidates.add(str(Path(target).expanduser().resolve()))
    return candidates


def match(conn: sqlite3.Connection, target: str) -> dict[int, str]:
    """{rowid: id} of the items `target` names: an item id, or a source path (a file, a zip archive or a
    folder, as given or resolved) and everything indexed under it."""
    rows = conn.execute("SELECT rowid, id FROM items WHERE id = ?", (target,)).fetchall()
    if rows:
        return dict(rows)
    out: dict[int, str] = {}
    for p in target_paths(target):
        prefix = p.rstrip("/")
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        out.update(conn.execute(
            "SELECT rowid, id FROM items WHERE path = ? OR path LIKE ? ESCAPE '\\' OR path LIKE ? ESCAPE '\\'",
            (p, like + "/%", like + "!/%"),
        ).fetchall())
    return out
