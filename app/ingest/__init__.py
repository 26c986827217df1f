"""Turn user files (photos, PDFs, text, folders, zip archives) into items the model can encode.

Ingest knows nothing about the index: it reads, checks, decodes and splits files, and the caller decides
what to encode and store. Every problem becomes a plain-words report entry naming the file, so one bad
file never stops a batch.

Use `iter_ingest` to stream (items arrive one at a time, so the caller can encode in batches while
reading and show progress) or `ingest` to collect everything into an `IngestReport`.

Where each part lives:
  pipeline.py  ingest / iter_ingest: list, read each file once, skip copies, hand it on by content
  sources.py   folders, links, hidden files, zip archives and their safety limits, bounded file reads
  images.py    photos: decoders allowed, pixel cap, EXIF orientation, colour modes, size, thumbnails
  pdf.py       PDF pages: rendering, text layer and word boxes, OCR of scanned pages, why a PDF won't open
  text.py      text decoding, refusing what is mostly not text, splitting into passages
  events.py    what ingest yields: Item, IngestError, IngestNote, DuplicateSkipped, IngestReport
  limits.py    IngestLimits, the caps and sizes a run works within
"""

from .events import DuplicateSkipped, IngestError, IngestEvent, IngestNote, IngestReport, Item
from .images import load_image
from .limits import DEFAULT_LIMITS, IngestLimits
from .pdf import OcrFn, OcrUnavailable, default_ocr, page_count
from .pipeline import ProgressFn, ingest, iter_ingest
from .sources import (
    ARCHIVE_EXTENSIONS,
    IMAGE_EXTENSIONS,
    PDF_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    TEXT_EXTENSIONS,
)
from .text import decode_text, split_passages

__all__ = [
    "ARCHIVE_EXTENSIONS",
    "DEFAULT_LIMITS",
    "IMAGE_EXTENSIONS",
    "PDF_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "DuplicateSkipped",
    "IngestError",
    "IngestEvent",
    "IngestLimits",
    "IngestNote",
    "IngestReport",
    "Item",
    "OcrFn",
    "OcrUnavailable",
    "ProgressFn",
    "decode_text",
    "default_ocr",
    "ingest",
    "iter_ingest",
    "load_image",
    "page_count",
    "split_passages",
]
