"""The store: persists indexed items (their candidate vectors and metadata) and searches them.

- `base`: the `Store` interface every store offers, `open_store` / `open_store_for`, which open the
  embedded index for a folder or a Qdrant store for a `qdrant://` / `qdrant-local:` spec.
- `index`: the embedded `Index` (the default): opening, reading, writing under the lock and their crash
  safety, search.
- `qdrant`: `QdrantStore`, the same interface over a Qdrant collection (a server or cluster, or local mode);
  `qdrant_schema`: how its items become points (ids, payloads, fields, filters, the collection's schema).
- `errors`: what goes wrong with a store, in plain words (`IndexError_`, `CheckpointMismatch`).
- `db`: the embedded index's SQLite database: schema, format version, connecting (read-only where it must),
  transactions, the writers' lock file.
- `items`: the `IndexedItem` and the item rows it is read from, added to and found by.
- `compaction`: which segment files are kept: their SQLite records, merging, rewriting, sweeping leftovers.
- `segments`: the bf16 vector files, the consistent view of them a search reads, and how they are scored.
- `first_stage`: the faiss IVF over first vectors that narrows large collections before exact scoring.
- `planner`: when a search of the embedded index scores every item exactly and when it goes through the
  first stage.
"""

from .base import Store, open_store, open_store_for
from .index import DB_NAME, REBUILD_HINT, CheckpointMismatch, Index, IndexedItem, IndexError_
from .qdrant import QdrantStore, is_qdrant

__all__ = ["DB_NAME", "REBUILD_HINT", "CheckpointMismatch", "Index", "IndexError_", "IndexedItem", "QdrantStore",
           "Store", "is_qdrant", "open_store", "open_store_for"]
