"""What ingest yields: `Item`s to encode and the report entries beside them (IngestError, IngestNote,
DuplicateSkipped), the `IngestReport` that collects them, and how item identities are hashed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) normalised to 0..1 of the page image, y pointing down."""
Word = tuple[str, Box]
ItemKind = Literal["image", "pdf_page", "text"]


@dataclass(eq=False)
class Item:
    """One thing the model can encode.

    kind "image": a photo; `image` is set, `text` is None.
    kind "pdf_page": one rendered PDF page; `image` is the page, `text` its text layer (or OCR text) and
        `words` the page's words with boxes for highlighting.
    kind "text": a passage of a text file (page None) or of a long PDF page (page set). For PDF passages
        `image` and `thumbnail` are the very same objects as on the page item (shared, not copied) so the
        app can show and highlight the page; the encoder should encode `text`.
    """

    source: str  # resolved absolute path, or "<abs zip path>!/<member path>"
    kind: ItemKind
    title: str  # file name
    content_hash: str  # sha256 hex of the item's identity
    size_bytes: int  # size of the whole file
    page: int | None = None  # 1-based PDF page
    passage: int | None = None  # 0-based passage index within the page or file
    char_span: tuple[int, int] | None = None  # text == page/file text[start:end]
    image: Image.Image | None = field(default=None, repr=False)
    text: str | None = field(default=None, repr=False)
    thumbnail: bytes = field(default=b"", repr=False)  # JPEG; empty for text-file passages
    words: list[Word] = field(default_factory=list, repr=False)
    file_hash: str = ""  # sha256 hex of the whole file: which version of the source this item came from


@dataclass(frozen=True)
class IngestError:
    path: str
    error: str  # plain words, starts with the file name


@dataclass(frozen=True)
class DuplicateSkipped:
    path: str  # what was skipped; a PDF page reads "<source> (page N)"
    duplicate_of: str  # source of the earlier copy, or "" when it was already in known_hashes
    file_hash: str = ""  # sha256 hex of the whole file, when the whole file was skipped


@dataclass(frozen=True)
class IngestNote:
    """Something the user should know about a file that was still indexed."""

    path: str
    note: str


IngestEvent = Item | IngestError | DuplicateSkipped | IngestNote


@dataclass
class IngestReport:
    items: list[Item]
    errors: list[IngestError]
    skipped_duplicates: list[str]
    notes: list[IngestNote] = field(default_factory=list)


class _Refused(ValueError):
    """A file-level problem whose message is already in plain words; it becomes the file's IngestError."""


def _derive_hash(file_hash: str, *parts: object) -> str:
    """An item's content_hash: its place (page, passage) within the file version `file_hash`."""
    return hashlib.sha256(":".join([file_hash, *map(str, parts)]).encode()).hexdigest()
