"""The SQLite side of an index folder: its schema, creating and connecting to it, transactions, the writers' lock.

An index's database records its checkpoint, its segment files and its items (app.store.items); the
vectors themselves live in the segment files (app.store.segments). A connection runs in autocommit mode
and every transaction is opened explicitly with `transaction`, so a write is committed exactly where the
code says. WAL lets readers (the app) and the writer (the CLI) work at once; an index whose files or disk
cannot be written still opens, read-only, so it can be searched. Writers serialise on a lock file
(`file_lock`) that readers never take.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from model.files import atomic_path

from .errors import REBUILD_HINT, IndexError_

FORMAT_VERSION = 2
DB_NAME = "index.sqlite"
LOCK_NAME = "write.lock"
MAX_PARAMS = 500  # bound parameters per statement: SQLite caps them

SCHEMA = """
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
CREATE INDEX IF NOT EXISTS items_kind ON items(kind);
-- Content-addressed (sha256 of the JPEG): a PDF page and its passages share one stored thumbnail.
CREATE TABLE IF NOT EXISTS thumbnails (sha256 TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
"""

T = TypeVar("T")


def create_database(db: Path, checkpoint_id: str, num_vectors: int, dim: int,
                    checkpoint_source: str | None = None) -> None:
    """Write a new, empty database at `db` for vectors [num_vectors, dim] made by `checkpoint_id`."""
    meta = {"format_version": str(FORMAT_VERSION), "checkpoint_id": checkpoint_id,
            "checkpoint_source": checkpoint_source or "", "num_vectors": str(num_vectors),
            "dim": str(dim), "created": repr(time.time())}
    # Built under a temp name and renamed in, so a half-created index never exists.
    with atomic_path(db) as tmp:
        conn = sqlite3.connect(tmp)
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.commit()
        conn.close()


def connect(db: Path) -> tuple[sqlite3.Connection, bool]:
    """(connection, read_only). An index whose files or disk cannot be written opens read-only."""
    if os.access(db, os.W_OK) and os.access(db.parent, os.W_OK):
        # Autocommit mode: transactions are opened explicitly (see `transaction`), never implicitly.
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


def check_format(conn: sqlite3.Connection, db: Path) -> None:
    """Refuse (closing `conn`) a database that is damaged or of another index format than this version's."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        conn.close()
        raise IndexError_(f"{db} is not a readable index database ({e}). {REBUILD_HINT}") from e
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        conn.close()
        raise IndexError_(f"{db.parent} has index format {version!r}; this version reads {FORMAT_VERSION}")


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


def record_file_versions(conn: sqlite3.Connection) -> bool:
    """Indexes made before file versions were recorded get the column; False where that cannot be
    written (a read-only index), and then no version is ever called stale."""
    columns = {r["name"] for r in conn.execute("PRAGMA table_info(items)")}
    if "file_sha256" in columns:
        return True
    try:
        conn.execute("ALTER TABLE items ADD COLUMN file_sha256 TEXT")
    except sqlite3.OperationalError:  # read-only, or another process added it a moment ago
        return "file_sha256" in {r["name"] for r in conn.execute("PRAGMA table_info(items)")}
    return True


def index_kinds(conn: sqlite3.Connection) -> None:
    """Indexes made before searches by kind get the index on items(kind) they use; a read-only one scans."""
    try:
        conn.execute("CREATE INDEX IF NOT EXISTS items_kind ON items(kind)")
    except sqlite3.OperationalError:  # read-only, or locked by a writer for longer than the busy timeout
        pass


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[None]:
    """One SQLite transaction: committed when the block ends, rolled back if it raises."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def param_chunks(values: Sequence[T]) -> Iterator[tuple[list[T], str]]:
    """`values` in chunks small enough to bind, each with its "?,?,..." placeholders for `IN (...)`."""
    for start in range(0, len(values), MAX_PARAMS):
        chunk = list(values[start:start + MAX_PARAMS])
        yield chunk, ",".join("?" * len(chunk))


@contextlib.contextmanager
def file_lock(directory: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the writers' lock of the index at `directory` for the block; yields whether it is held.

    With wait=False it does not wait for another process's writer: the block then runs unlocked and is
    told so (False), for work that may simply be skipped.
    """
    with open(directory / LOCK_NAME, "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = False
        else:
            held = True
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
