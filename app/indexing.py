"""The indexing pipeline: ingest files -> encode candidates in batches -> commit each batch to the index.

Each batch is one atomic `Index.add`, so an interrupted run keeps every batch finished before it, and a
re-run skips them (their content hashes are passed to ingest as known). A batch the model cannot encode
is retried item by item, so one bad item is reported instead of losing its neighbours. A file that was
edited since it was indexed replaces its old version, but only once the new version is fully committed
and read without errors: until then the old items stay searchable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .index import Index
from .ingest import DuplicateSkipped, IngestError, IngestNote, Item, default_ocr, iter_ingest

DEFAULT_BATCH_SIZE = 8


@dataclass
class IndexedEntry:
    id: str
    path: str
    page: int | None
    kind: str


@dataclass
class IndexRun:
    """What one `index_paths` call did."""

    indexed: list[IndexedEntry] = field(default_factory=list)
    skipped_duplicates: list[str] = field(default_factory=list)
    errors: list[IngestError] = field(default_factory=list)
    notes: list[IngestNote] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # sources whose older version was removed

    def to_json(self) -> dict:
        return {
            "indexed": [{"id": e.id, "path": e.path, "page": e.page, "kind": e.kind} for e in self.indexed],
            "skipped_duplicates": list(self.skipped_duplicates),
            "replaced": list(self.replaced),
            "errors": [{"path": e.path, "error": e.error} for e in self.errors],
            "notes": [{"path": n.path, "note": n.note} for n in self.notes],
        }


def encoder_input(item: Item) -> Any:
    """What the model encodes for an ingested item: a photo's image; a page's or passage's text (text layer
    or OCR). A page with no readable text at all is encoded as its image. Pages are not also handed to the
    visual tokenizer: its ImageNet concepts say little about a page, and re-reading a page that already has
    text would cost seconds of OCR per page."""
    if item.kind == "image":
        return item.image
    if item.text and item.text.strip():
        return item.text
    return item.image


def index_paths(
    model: Any,
    index: Index,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ocr: Callable | None = default_ocr,
    progress: Callable[[int, int, str], None] | None = None,
    on_commit: Callable[[list[IndexedEntry]], None] | None = None,
) -> IndexRun:
    """Ingest `paths` (files, folders, zips) into `index`, encoding with `model`; returns the run's report.

    `progress(files_done, files_total, name)` is ingest's file progress; `on_commit(entries)` is called
    after each committed batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run = IndexRun()
    batch: list[Item] = []

    def flush() -> None:
        committed = _commit(model, index, batch, run)
        batch.clear()
        if committed and on_commit is not None:
            on_commit(committed)

    versions: dict[str, str] = {}  # source -> sha256 of the file as read now
    for event in iter_ingest(paths, known_hashes=index.known_hashes(), ocr=ocr, progress=progress):
        if isinstance(event, Item):
            if event.file_hash:
                versions[event.source] = event.file_hash
            batch.append(event)
            if len(batch) >= batch_size:
                flush()
        elif isinstance(event, IngestError):
            run.errors.append(event)
        elif isinstance(event, DuplicateSkipped):
            if event.file_hash:
                versions[event.path] = event.file_hash
            run.skipped_duplicates.append(event.path)
        else:
            run.notes.append(event)
    if batch:
        flush()
    failed = {e.path for e in run.errors}
    stale: list[str] = []
    for source, file_hash in versions.items():
        ids = [] if source in failed else index.stale_ids(source, file_hash)
        if ids:
            stale += ids
            run.replaced.append(source)
    if stale:  # one removal (one transaction, one segment rewrite) for every replaced file
        index.remove(stale)
    return run


def _commit(model: Any, index: Index, batch: list[Item], run: IndexRun) -> list[IndexedEntry]:
    try:
        vectors = model.encode_candidates([encoder_input(it) for it in batch], batch_size=len(batch))
        items = batch
    except Exception:  # noqa: BLE001 - find the item that fails, keep the others
        items, parts = [], []
        for it in batch:
            try:
                parts.append(model.encode_candidates([encoder_input(it)], batch_size=1))
                items.append(it)
            except Exception as exc:  # noqa: BLE001 - reported per item
                where = f" (page {it.page})" if it.page is not None else ""
                run.errors.append(IngestError(it.source, f"{it.title}{where}: could not be encoded "
                                              f"({type(exc).__name__}: {exc})"))
        if not items:
            return []
        vectors = torch.cat(parts)
    ids = index.add(items, vectors)
    committed = []
    for it, item_id in zip(items, ids):
        if item_id is None:
            where = f" (page {it.page})" if it.page is not None else ""
            run.skipped_duplicates.append(f"{it.source}{where}")
        else:
            committed.append(IndexedEntry(item_id, it.source, it.page, it.kind))
    run.indexed.extend(committed)
    return committed
