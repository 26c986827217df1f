"""The store: a folder that persists indexed items (their candidate vectors and metadata) and searches them.

- `index`: the `Index` (SQLite metadata, writes and their crash safety, search) and its errors.
- `segments`: the bf16 vector files, the consistent view of them a search reads, and how they are scored.
- `first_stage`: the faiss IVF over first vectors that narrows large collections before exact scoring.
"""

from .index import DB_NAME, REBUILD_HINT, CheckpointMismatch, Index, IndexedItem, IndexError_

__all__ = ["DB_NAME", "REBUILD_HINT", "CheckpointMismatch", "Index", "IndexError_", "IndexedItem"]
