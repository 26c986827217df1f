"""One ingest run: list the inputs (sources.py), then read each file once, skip exact copies, and hand it
by content to pdf.py, text.py or images.py; any file-level failure becomes that file's IngestError."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .events import DuplicateSkipped, IngestError, IngestEvent, IngestNote, IngestReport, Item, _Refused
from .images import _image_items
from .limits import DEFAULT_LIMITS, IngestLimits
from .pdf import OcrFn, _looks_like_pdf, _Ocr, _pdf_items, default_ocr
from .sources import IMAGE_EXTENSIONS, PDF_EXTENSIONS, TEXT_EXTENSIONS, _expand, _Source
from .text import _text_items

ProgressFn = Callable[[float, int, str], None]
"""progress(files_done, files_total, name): before each file with the name of the file about to be read,
before each page of a PDF of several pages with "name, page N of M" and files_done counting the pages already
read as a share of that file (a long PDF takes minutes with OCR: a bar that stood still at 0 % for all of it
looked stuck), and once at the end with files_done == files_total and name ""."""


def ingest(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    limits: IngestLimits = DEFAULT_LIMITS,
    ocr: OcrFn | None = default_ocr,
    known_hashes: AbstractSet[str] = frozenset(),
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Ingest files, folders (recursively) and zip archives; collect everything into a report."""
    report = IngestReport(items=[], errors=[], skipped_duplicates=[], notes=[])
    for event in iter_ingest(paths, limits=limits, ocr=ocr, known_hashes=known_hashes, progress=progress):
        if isinstance(event, Item):
            report.items.append(event)
        elif isinstance(event, IngestError):
            report.errors.append(event)
        elif isinstance(event, DuplicateSkipped):
            report.skipped_duplicates.append(event.path)
        else:
            report.notes.append(event)
    return report


def iter_ingest(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    limits: IngestLimits = DEFAULT_LIMITS,
    ocr: OcrFn | None = default_ocr,
    known_hashes: AbstractSet[str] = frozenset(),
    progress: ProgressFn | None = None,
) -> Iterator[IngestEvent]:
    """Yield Items, IngestErrors, DuplicateSkipped and IngestNotes one at a time, in file order.

    Folders and archives are listed first (cheap) so `progress` knows the total; files are then read
    and decoded one by one. Zip archives stay open until the generator finishes or is closed.
    `ocr=None` disables OCR. Items whose content_hash is in `known_hashes` are not produced again.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # a lone path string would otherwise be iterated character by character
    with contextlib.ExitStack() as archives:
        entries = list(_expand(paths, limits, archives))
        state = _BatchState(limits=limits, ocr=_Ocr(ocr), known=known_hashes)
        for done, entry in enumerate(entries):
            name = entry.path if isinstance(entry, (IngestError, IngestNote)) else entry.display
            if progress is not None:
                progress(done, len(entries), name)
                state.on_page = functools.partial(_page_progress, progress, done, len(entries), name)
            if isinstance(entry, (IngestError, IngestNote)):
                yield entry
            else:
                yield from _ingest_source(entry, state)
        if progress is not None:
            progress(len(entries), len(entries), "")


@dataclass
class _BatchState:
    limits: IngestLimits
    ocr: _Ocr
    known: AbstractSet[str]
    seen_files: dict[str, str] = field(default_factory=dict)  # file sha256 -> first source
    on_page: Callable[[int, int], None] | None = None  # (page, pages) inside the current file


def _page_progress(progress: ProgressFn, done: int, total: int, name: str, page: int, pages: int) -> None:
    progress(done + (page - 1) / max(pages, 1), total, f"{name}, page {page} of {pages}")


def _ingest_source(src: _Source, state: _BatchState) -> Iterator[IngestEvent]:
    try:
        data = src.read()
        if not data:
            raise _Refused(_empty_message(src.ext))
        file_hash = hashlib.sha256(data).hexdigest()
        if file_hash in state.seen_files:
            yield DuplicateSkipped(src.source, state.seen_files[file_hash], file_hash)
            return
        yield from _dispatch(src, data, file_hash, state)
        # Only files read without a file-level error count as seen: a second copy of a broken file
        # should get the same error, not be called a duplicate of something that was never indexed.
        state.seen_files[file_hash] = src.source
    except _Refused as exc:
        yield IngestError(src.source, f"{src.display}: {exc}")
    except MemoryError:
        yield IngestError(src.source, f"{src.display}: too large to process with the memory available")
    except Exception as exc:  # noqa: BLE001 - one bad file must never abort the batch
        yield IngestError(src.source, f"{src.display}: could not be read ({type(exc).__name__}: {exc})")


def _dispatch(src: _Source, data: bytes, file_hash: str, state: _BatchState) -> Iterator[IngestEvent]:
    if src.ext in TEXT_EXTENSIONS:
        yield from _text_items(src, data, file_hash, state.limits, state.known)
    elif _looks_like_pdf(data):  # by content, so a PDF under a picture's name still works
        yield from _pdf_items(src, data, file_hash, state.limits, state.known, state.ocr, state.on_page)
    elif src.ext in PDF_EXTENSIONS:
        # Named .pdf but not a PDF: a picture under the wrong name still gets indexed.
        try:
            yield from _image_items(src, data, file_hash, state.limits, state.known)
        except _Refused as exc:
            raise _Refused("not a readable PDF (the file is damaged or is not a PDF)") from exc
    else:
        yield from _image_items(src, data, file_hash, state.limits, state.known)


def _empty_message(ext: str) -> str:
    if ext in IMAGE_EXTENSIONS:
        return "not a readable image (the file is empty)"
    if ext in PDF_EXTENSIONS:
        return "not a readable PDF (the file is empty)"
    return "the file is empty"

