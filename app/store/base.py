"""What every store offers, and opening one from what the user typed (`--index DIR` or `--store SPEC`).

Two stores implement `Store`: the embedded `Index` (a folder: SQLite + bf16 segment files + a faiss first
stage; the default, right for a laptop or a Space) and `QdrantStore` (a Qdrant server or cluster by URL, or
qdrant-client's local mode), so the CLI, the app and the search path work with either.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from .index import Index
from .items import IndexedItem
from .qdrant import QdrantStore, is_qdrant


class Store(Protocol):
    """A persistent collection of multi-vector items (the methods the app, CLI and search path use)."""

    checkpoint_id: str  # the checkpoint whose vectors it holds
    checkpoint_source: str | None
    num_vectors: int  # R_c
    dim: int
    read_only: bool

    @property
    def location(self) -> str: ...  # where it is, for messages
    def __len__(self) -> int: ...
    def close(self) -> None: ...
    def known_hashes(self) -> set[str]: ...
    def items(self, path: str | None = None) -> list[IndexedItem]: ...
    def paths_of_file(self, file_hash: str) -> list[str]: ...
    def move(self, old_path: str, new_path: str, title: str) -> int: ...
    def stale_ids(self, path: str, file_hash: str) -> list[str]: ...
    def get(self, item_id: str) -> IndexedItem: ...
    def get_many(self, rowids: Sequence[int]) -> dict[int, IndexedItem]: ...
    def thumbnail(self, item_id: str) -> bytes: ...
    def vectors(self, item_id: str) -> torch.Tensor: ...
    def info(self) -> dict: ...
    def scored_budget(self, budget: tuple[int, int]) -> tuple[int, int]: ...
    def exact_for(self, r_c: int, *, kinds: Collection[str] | None = None) -> bool: ...
    def search(self, q: torch.Tensor, budget: tuple[int, int], k: int = 10, *, exact: bool | None = None,
               kinds: Collection[str] | None = None) -> list[tuple[int, float]]: ...  # kinds: of ITEM_KINDS
    def add(self, items: Sequence[Any], vectors: torch.Tensor | np.ndarray) -> list[str | None]: ...
    def remove(self, targets: Iterable[str]) -> list[IndexedItem]: ...  # the removed items, by id
    def compact(self) -> None: ...


def open_store(spec: str | os.PathLike, checkpoint_id: str | None = None) -> Store:
    """Open an existing store: a Qdrant spec (qdrant://HOST:PORT/COLLECTION, qdrant-local:DIR) or an index
    folder; with `checkpoint_id`, refuse one that another checkpoint made."""
    if is_qdrant(spec):
        return QdrantStore.open(str(spec), checkpoint_id)
    return Index.open(spec, checkpoint_id)


def open_store_for(spec: str | os.PathLike, checkpoint_id: str, num_vectors: int, dim: int,
                   checkpoint_source: str | None = None) -> Store:
    """Open the store made by `checkpoint_id`, creating it if there is none."""
    if is_qdrant(spec):
        return QdrantStore.open_for(str(spec), checkpoint_id, num_vectors, dim, checkpoint_source)
    return Index.open_for(spec, checkpoint_id, num_vectors, dim, checkpoint_source)

