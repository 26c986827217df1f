"""The indexing pipeline: ingest files -> encode candidates in batches -> commit each batch to the index.

Each batch is one atomic `Index.add`, so an interrupted run keeps every batch finished before it, and a
re-run skips them (their content hashes are passed to ingest as known). A batch the model cannot encode
is retried item by item, so one bad item is reported instead of losing its neighbours. A file that was
edited since it was indexed replaces its old version, but only once the new version is fully committed
and read without errors: until then the old items stay searchable.

Reading and decoding runs a few files ahead of the encoder in a worker thread (`read_ahead`): Pillow
releases the GIL while it decodes and resizes, so a photo is decoded while the previous batch is encoded.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .ingest import DuplicateSkipped, IngestError, IngestNote, Item, default_ocr, iter_ingest
from .store.index import Index

DEFAULT_BATCH_SIZE = 8
# Items decoded ahead of the encoder. A photo is held at <= 1600 px (~6 MB as RGB), so this bounds the extra
# memory to ~50 MB; one batch ahead is all the overlap needs.
READ_AHEAD = DEFAULT_BATCH_SIZE


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
    # {skipped path: the path of its copy given earlier in the same run}; a file already indexed is not here
    same_content_as: dict[str, str] = field(default_factory=dict)
    errors: list[IngestError] = field(default_factory=list)
    notes: list[IngestNote] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # sources whose older version was removed
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path) of renamed files

    def to_json(self) -> dict:
        return {
            "indexed": [{"id": e.id, "path": e.path, "page": e.page, "kind": e.kind} for e in self.indexed],
            "skipped_duplicates": list(self.skipped_duplicates),
            "same_content_as": dict(self.same_content_as),
            "replaced": list(self.replaced),
            "moved": [{"from": a, "to": b} for a, b in self.moved],
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
    progress: Callable[[float, int, str], None] | None = None,
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
    skipped_as_known: list[str] = []  # sources skipped because their content was in the index already

    def ingest_into(targets: Iterable[str | os.PathLike[str]], known: set[str]) -> None:
        events = read_ahead(lambda report: iter_ingest(targets, known_hashes=known, ocr=ocr, progress=report),
                            progress)
        for event in events:
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
                if not event.duplicate_of and event.file_hash and _moved(index, event, run):
                    continue
                run.skipped_duplicates.append(event.path)
                if event.duplicate_of:
                    run.same_content_as[event.path] = event.duplicate_of
                else:
                    skipped_as_known.append(event.path.split(" (page ")[0])
            else:
                run.notes.append(event)
        if batch:
            flush()

    known = index.known_hashes()  # here: the index's SQLite connection belongs to this thread
    ingest_into(paths, known)
    failed = {e.path for e in run.errors}
    stale: list[str] = []
    for source, file_hash in versions.items():
        ids = [] if source in failed else index.stale_ids(source, file_hash)
        if ids:
            stale += ids
            run.replaced.append(source)
    if stale:  # one removal (one transaction, one segment rewrite) for every replaced file
        index.remove(stale)
        # A file skipped as "already indexed" may have matched exactly what a replaced file's old version
        # held (a copy of a.txt made before a.txt was edited): read those files again, so every one of
        # them ends with an item that exists.
        again = sorted({s for s in skipped_as_known if Path(s).is_file()})
        if again:
            earlier, before = list(run.skipped_duplicates), len(run.indexed)
            ingest_into(again, index.known_hashes())
            retried = {e.path for e in run.indexed[before:]}
            run.skipped_duplicates[:] = [p for p in earlier if p.split(" (page ")[0] not in retried]
    return run


def _moved(index: Index, event: DuplicateSkipped, run: IndexRun) -> bool:
    """A known file under a new name whose old path is gone from disk was renamed or moved: its items follow
    it (results used to point at the deleted old path). Returns whether that happened."""
    gone = [p for p in index.paths_of_file(event.file_hash)
            if p != event.path and "!/" not in p and not os.path.lexists(p)]
    if not gone:
        return False
    index.move(gone[0], event.path, Path(event.path).name)
    run.moved.append((gone[0], event.path))
    return True


_EVENT, _PROGRESS, _ERROR, _DONE = range(4)


def read_ahead(
    produce: Callable[[Callable[..., None]], Iterator[Any]],
    progress: Callable[..., None] | None = None,
    depth: int = READ_AHEAD,
) -> Iterator[Any]:
    """Yield what `produce(report)` yields, produced up to `depth` items ahead in a worker thread.

    `report(*args)` calls from the producer reach `progress(*args)` in the caller's thread, in order with the
    items (Gradio's progress tracker belongs to the request's thread). An exception in the producer is raised
    here. When the caller stops early (break, exception, close), the producer stops after its current item
    and its generator is closed, so archives it opened are closed.
    """
    if depth < 1:
        raise ValueError(f"read_ahead: depth must be >= 1, got {depth}")
    pending: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                pending.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        events = None
        try:
            events = produce(lambda *args: put((_PROGRESS, args)))
            for event in events:
                if not put((_EVENT, event)):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            put((_ERROR, exc))
        finally:
            if events is not None and hasattr(events, "close"):
                events.close()
            put((_DONE, None))

    worker = threading.Thread(target=work, name="ingest-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = pending.get()
            if kind == _EVENT:
                yield value
            elif kind == _PROGRESS:
                if progress is not None:
                    progress(*value)
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        worker.join()


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
