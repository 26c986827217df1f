"""The errors an index folder raises, in words a user can act on.

Every store module raises them (opening the database, reading segments, adding items), so they sit in a
module of their own that imports nothing of the store's, which keeps the store free of import cycles.
"""

from __future__ import annotations

# What to do about a damaged index: the index holds only derived data, so it is rebuilt from the files.
REBUILD_HINT = ("Your files are not affected: move the index folder away and run `index` on the same files "
                "again to rebuild it")


class IndexError_(ValueError):  # noqa: N801 - avoids shadowing the builtin IndexError
    """A problem with an index folder, in plain words."""


class CheckpointMismatch(IndexError_):
    """The index was built by another checkpoint: its vectors must not be mixed with this model's."""
