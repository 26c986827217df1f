"""The errors a store raises, in words a user can act on, and the checks shared by both stores.

Every store module raises them (opening the database, reading segments, adding items), so they sit in a
module of their own that imports nothing of the store's, which keeps the store free of import cycles.
"""

from __future__ import annotations

from typing import Any, get_args

from ..ingest.events import ItemKind

# What to do about a damaged index: the index holds only derived data, so it is rebuilt from the files.
REBUILD_HINT = ("Your files are not affected: move the index folder away and run `index` on the same files "
                "again to rebuild it")


def mismatch_message(where: str, found: str, found_source: str | None, wanted: str, kind: str) -> str:
    """Why a store made by checkpoint `found` cannot be searched with checkpoint `wanted`, and what to do.
    `kind`: "index folder" or "collection". An index made by the bundled model (`found_source` empty) under
    another id of the same name was made by an earlier version of it, which this install no longer has."""
    head = (f"{where} holds vectors made by checkpoint {found!r}, not {wanted!r}; vectors of different "
            "checkpoints cannot be compared.")
    same_name = found.rsplit("-", 1)[0] == wanted.rsplit("-", 1)[0]
    if not found_source and same_name:
        return (f"{head} It was made by an earlier version of the bundled MetaEmbed-Mini, which this install no "
                f"longer has: index the same files into a new {kind} (your files are not affected)")
    return f"{head} Use the {kind}'s checkpoint ({found_source or 'the bundled MetaEmbed-Mini'}) or a new {kind}"


class IndexError_(ValueError):  # noqa: N801 - avoids shadowing the builtin IndexError
    """A problem with an index folder, in plain words."""


class CheckpointMismatch(IndexError_):
    """The index was built by another checkpoint: its vectors must not be mixed with this model's."""


def check_layout(store: Any, num_vectors: int, dim: int, where: str) -> None:
    """Refuse (and close) a store whose items hold other than num_vectors x dim vectors: the model's."""
    if (store.num_vectors, store.dim) != (num_vectors, dim):
        store.close()
        raise IndexError_(f"{where} stores {store.num_vectors}x{store.dim} vectors per item, the model makes "
                          f"{num_vectors}x{dim}")


def check_search(q: Any, budget: Any, k: Any, dim: int, num_vectors: int) -> tuple[int, int]:
    """A store's search arguments checked (q one query [R_q, dim], k a positive int, budget in range): the
    budget as (r_q, r_c) ints; ValueError in plain words otherwise."""
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"search: q must be one query [R_q, {dim}], got shape {tuple(q.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"search: k must be a positive integer, got {k!r}")
    try:
        r_q, r_c = (int(b) for b in budget)
    except (TypeError, ValueError):
        raise ValueError(f"search: budget must be a pair (r_q, r_c), got {budget!r}") from None
    if not (1 <= r_q <= q.shape[0] and 1 <= r_c <= num_vectors):
        raise ValueError(f"search: budget ({r_q}, {r_c}) is out of range: allowed r_q 1..{q.shape[0]} "
                         f"and r_c 1..{num_vectors}")
    return r_q, r_c


ITEM_KINDS: tuple[str, ...] = get_args(ItemKind)  # the kinds of item a store holds


def check_kinds(kinds: Any) -> frozenset[str] | None:
    """A store's `kinds` argument checked: None (every item) or a non-empty set of ITEM_KINDS, as a frozenset;
    ValueError in plain words otherwise."""
    if kinds is None:
        return None
    found = frozenset([kinds] if isinstance(kinds, str) else kinds)
    unknown = sorted(str(k) for k in found - set(ITEM_KINDS))
    if unknown or not found:
        raise ValueError(f"search: kinds must be some of {', '.join(ITEM_KINDS)}, got {sorted(map(str, found))}")
    return found
