"""The store: a folder that persists indexed items (their candidate vectors and metadata) and searches them.

- `index`: the `Index`: opening, reading, writing under the lock and their crash safety, search.
- `errors`: what goes wrong with an index folder, in plain words (`IndexError_`, `CheckpointMismatch`).
- `db`: the SQLite database: schema, format version, connecting (read-only where it must), transactions,
  the writers' lock file.
- `items`: the `IndexedItem` and the item rows it is read from, added to and found by.
- `compaction`: which segment files are kept: their SQLite records, merging, rewriting, sweeping leftovers.
- `segments`: the bf16 vector files, the consistent view of them a search reads, and how they are scored.
- `first_stage`: the faiss IVF over first vectors that narrows large collections before exact scoring.
"""

from .index import DB_NAME, REBUILD_HINT, CheckpointMismatch, Index, IndexedItem, IndexError_

__all__ = ["DB_NAME", "REBUILD_HINT", "CheckpointMismatch", "Index", "IndexError_", "IndexedItem"]
