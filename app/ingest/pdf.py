"""PDFs: each page rendered to an image with its text layer and word boxes, pages with (almost) no text
layer read by OCR, long pages also split into passages, and plain-words reasons for PDFs that cannot be
opened (damaged, password-protected, other encryption). pypdfium2 is imported on first use."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .events import (
    Box,
    DuplicateSkipped,
    IngestError,
    IngestEvent,
    IngestNote,
    Item,
    Word,
    _derive_hash,
    _Refused,
)
from .images import make_thumbnail
from .limits import IngestLimits
from .sources import _Source
from .text import split_passages

OcrFn = Callable[[Image.Image], Sequence[Any]]


class OcrUnavailable(RuntimeError):
    """Raised by an OCR callable when no OCR engine can run here; pages are then indexed as images only."""


@dataclass
class _Ocr:
    """One batch's OCR: the callable (None: OCR is off) and, once the engine has failed to load, why. It is
    not tried again for the rest of the batch: loading would fail the same way on every scanned page."""

    fn: OcrFn | None
    unavailable: str | None = None


def default_ocr(image: Image.Image) -> list[Any]:
    """OCR through model.visual.ocr, imported on first use so ingest works without the OCR stack."""
    try:
        from model.visual.ocr import ocr_image
    except ImportError as exc:
        raise OcrUnavailable(str(exc)) from exc
    return list(ocr_image(image))


def page_count(path: str | os.PathLike[str]) -> int | None:
    """How many pages the PDF at `path` has (None when it cannot be opened); reads no page."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except (pdfium.PdfiumError, OSError):
        return None
    try:
        return len(pdf)
    finally:
        pdf.close()


def _looks_like_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]  # readers accept up to 1 KiB of junk before the header


def _pdf_items(src: _Source, data: bytes, file_hash: str, limits: IngestLimits, known: AbstractSet[str],
               ocr: _Ocr, on_page: Callable[[int, int], None] | None = None) -> Iterator[IngestEvent]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise _Refused(_pdf_open_reason(exc, data)) from exc
    try:
        n_pages = len(pdf)
        if n_pages == 0:
            raise _Refused("the PDF has no pages")
        if n_pages > limits.max_pdf_pages:
            raise _Refused(f"too many pages ({n_pages}, limit {limits.max_pdf_pages})")
        skipped: list[int] = []
        wanted_ocr_but_unavailable = False
        for index in range(n_pages):
            page_no = index + 1
            if on_page is not None and n_pages > 1:
                on_page(page_no, n_pages)
            page_hash = _derive_hash(file_hash, "page", page_no)
            if page_hash in known:
                skipped.append(page_no)
                continue
            try:
                page = pdf[index]
            except pdfium.PdfiumError:
                yield IngestError(src.source, f"{src.display}: page {page_no} could not be read (it is damaged)")
                continue
            try:
                page_events = list(_pdf_page_items(src, page, page_no, page_hash, file_hash, limits, known, ocr))
            except Exception as exc:  # noqa: BLE001 - one broken page must not lose the other pages
                reason = str(exc) if isinstance(exc, _Refused) else "it is damaged or uses features we cannot read"
                yield IngestError(src.source, f"{src.display}: page {page_no} could not be read ({reason})")
                continue
            finally:
                page.close()
            for event in page_events:
                if event is _OCR_MISSING:
                    wanted_ocr_but_unavailable = True
                else:
                    yield event
        if wanted_ocr_but_unavailable:
            yield IngestNote(src.source, f"{src.display}: some pages have no text layer and text recognition "
                             f"(OCR) is not available ({ocr.unavailable}); those pages are searchable "
                             "by their image only")
        if skipped and len(skipped) == n_pages:
            yield DuplicateSkipped(src.source, "", file_hash)
        else:
            for page_no in skipped:
                yield DuplicateSkipped(f"{src.source} (page {page_no})", "")
    finally:
        pdf.close()


_OCR_MISSING = IngestNote("", "")  # internal marker: a page needed OCR but none could run


def _pdf_open_reason(exc: Exception, data: bytes) -> str:
    import pypdfium2.raw as pdfium_c

    code = getattr(exc, "err_code", None)
    # PDFium's last-error code is process-wide and survives later failures of other kinds, so a password
    # code is believed only for a file that has an encryption dictionary.
    if b"/Encrypt" in data:
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            return "the PDF is password-protected; remove the password and add it again"
        return "the PDF uses an encryption we cannot open"
    # PDFium refuses a well-formed document without pages and reports success as its error.
    if code == pdfium_c.FPDF_ERR_SUCCESS and re.search(rb"/Count\s+0\b", data):
        return "the PDF has no pages"
    return "not a readable PDF (the file is damaged or is not a PDF)"


def _pdf_page_items(
    src: _Source, page: Any, page_no: int, page_hash: str, file_hash: str, limits: IngestLimits,
    known: AbstractSet[str], ocr: _Ocr,
) -> Iterator[IngestEvent]:
    width, height = page.get_size()
    if min(width, height) <= 0:
        raise _Refused("the page has no size")
    bitmap = page.render(scale=limits.pdf_render_long_side / max(width, height))
    try:
        image = bitmap.to_pil().convert("RGB")  # convert() copies, detaching the image from PDFium's buffer
        textpage = page.get_textpage()
        try:
            text = clean_pdf_text(textpage.get_text_range())
            words = _pdf_layer_words(textpage, bitmap.get_posconv(page), bitmap.width, bitmap.height)
        finally:
            textpage.close()
    finally:
        bitmap.close()
    located = _locate_words(text, words)

    if len(re.sub(r"\s+", "", text)) < limits.min_text_chars and ocr.fn is not None:
        ocr_result = _run_ocr(image, ocr)
        if ocr_result is None:
            yield _OCR_MISSING
        elif isinstance(ocr_result, str):
            yield IngestNote(src.source, f"{src.display}: text recognition failed on page {page_no} "
                             f"({ocr_result}); the page is searchable by its image only")
        elif ocr_result[0].strip():
            text, located = ocr_result

    thumbnail = make_thumbnail(image, limits.thumbnail_long_side)
    spans = split_passages(text, min_words=limits.passage_min_words, max_words=limits.passage_max_words,
                           max_chars=limits.passage_max_chars)
    # The page's passages come before the page item itself: items are committed in order, and a page whose
    # item is in the index is skipped when the file is read again (_pdf_items). Yielded first, the page item
    # of a run cut short could be committed while its passages were not, and they were never added.
    for k, (start, end) in enumerate(spans if len(spans) >= 2 else []):  # one span: the page item holds it
        passage_hash = _derive_hash(file_hash, "page", page_no, "passage", k)
        if passage_hash in known:
            continue
        yield Item(
            source=src.source, kind="text", title=src.title, content_hash=passage_hash, size_bytes=src.size,
            file_hash=file_hash, page=page_no, passage=k, char_span=(start, end), image=image,
            text=text[start:end], thumbnail=thumbnail, words=[w for w, at in located if at is not None and start <= at < end],
        )
    yield Item(
        source=src.source, kind="pdf_page", title=src.title, content_hash=page_hash, size_bytes=src.size,
        file_hash=file_hash, page=page_no, image=image, text=text or None, thumbnail=thumbnail,
        words=[w for w, _ in located],
    )


def clean_pdf_text(text: str) -> str:
    """PDFium text to plain text: \\n line ends, its hyphen marker as '-', other control characters dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "-")
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs", "Cn"))


def _pdf_layer_words(textpage: Any, posconv: Any, width: int, height: int) -> list[Word]:
    """Page words (whitespace-separated runs of characters) with boxes normalised to the rendered page."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    words: list[Word] = []
    chars: list[str] = []
    box: list[float] | None = None

    def flush() -> None:
        nonlocal box
        word = clean_pdf_text("".join(chars)).strip()
        if word and box is not None:
            # Map two opposite corners: page rotation may swap which corner lands top-left on the image.
            xa, ya = posconv.to_bitmap(box[0], box[3])
            xb, yb = posconv.to_bitmap(box[2], box[1])
            words.append((word, (
                _clamp01(min(xa, xb) / width), _clamp01(min(ya, yb) / height),
                _clamp01(max(xa, xb) / width), _clamp01(max(ya, yb) / height),
            )))
        chars.clear()
        box = None

    for i in range(textpage.count_chars()):
        code = pdfium_c.FPDFText_GetUnicode(textpage, i)
        ch = "-" if code == 2 else (chr(code) if 0 < code < 0x110000 else " ")
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs", "Cn"):
            flush()
            continue
        chars.append(ch)
        try:
            left, bottom, right, top = textpage.get_charbox(i, loose=True)
        except pdfium.PdfiumError:
            continue
        if box is None:
            box = [left, bottom, right, top]
        else:
            box = [min(box[0], left), min(box[1], bottom), max(box[2], right), max(box[3], top)]
    flush()
    return words


def _locate_words(text: str, words: list[Word]) -> list[tuple[Word, int | None]]:
    """Pair each word with its offset in `text` (None when it cannot be found near where expected)."""
    located: list[tuple[Word, int | None]] = []
    cursor = 0
    for word in words:
        # A bounded search keeps one odd word from making all later words jump far ahead.
        at = text.find(word[0], cursor, cursor + len(word[0]) + 64)
        if at < 0:
            located.append((word, None))
        else:
            located.append((word, at))
            cursor = at + len(word[0])
    return located


def _run_ocr(image: Image.Image, ocr: _Ocr) -> tuple[str, list[tuple[Word, int | None]]] | str | None:
    """(text, located words), or a failure reason, or None when no OCR engine is available."""
    if ocr.unavailable is not None or ocr.fn is None:
        return None
    try:
        raw = ocr.fn(image)
    except OcrUnavailable as exc:
        ocr.unavailable = str(exc) or "no OCR engine installed"
        return None
    except Exception as exc:  # noqa: BLE001 - OCR trouble must not lose the page
        return f"{type(exc).__name__}: {exc}"
    return _ocr_text(raw)


def _ocr_text(raw: Sequence[Any]) -> tuple[str, list[tuple[Word, int | None]]]:
    """Join OCR words into page text: a new line when a word starts below the previous one."""
    parts: list[str] = []
    located: list[tuple[Word, int | None]] = []
    length = 0
    prev: Box | None = None
    for entry in raw:
        if hasattr(entry, "text"):
            word_text, box = entry.text, entry.box
        else:  # plain (text, box, ...) tuples are accepted too
            word_text, box = entry[0], entry[1]
        word_text = str(word_text).strip()
        if not word_text:
            continue
        x0, y0, x1, y1 = (_clamp01(float(v)) for v in box)
        norm: Box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if prev is not None:
            sep = "\n" if (norm[1] + norm[3]) / 2 > prev[3] else " "
            parts.append(sep)
            length += 1
        located.append(((word_text, norm), length))
        parts.append(word_text)
        length += len(word_text)
        prev = norm
    return "".join(parts), located


def _clamp01(v: float) -> float:
    return 0.0 if v < 0.0 else 1.0 if v > 1.0 else v

