"""Turn user files (photos, PDFs, text, folders, zip archives) into items the model can encode.

Ingest knows nothing about the index: it reads, checks, decodes and splits files, and the caller decides
what to encode and store. Every problem becomes a plain-words report entry naming the file, so one bad
file never stops a batch.

Use `iter_ingest` to stream (items arrive one at a time, so the caller can encode in batches while
reading and show progress) or `ingest` to collect everything into an `IngestReport`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import posixpath
import re
import stat
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.humanize import human_bytes

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) normalised to 0..1 of the page image, y pointing down."""
Word = tuple[str, Box]
ItemKind = Literal["image", "pdf_page", "text"]
OcrFn = Callable[[Image.Image], Sequence[Any]]
ProgressFn = Callable[[int, int, str], None]
"""progress(files_done, files_total, name): before each file with the name of the file about to be read,
and once at the end with files_done == files_total and name ""."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
PDF_EXTENSIONS = frozenset({".pdf"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
ARCHIVE_EXTENSIONS = frozenset({".zip"})
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | PDF_EXTENSIONS | TEXT_EXTENSIONS | ARCHIVE_EXTENSIONS

# Only these decoders may run: Pillow would otherwise also hand files to plugins such as EPS (Ghostscript).
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO camera files
_MB = 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    """Safety caps and sizes. Defaults suit a desktop app indexing personal files."""

    max_megapixels: float = 60.0
    encode_long_side: int = 1600  # image handed to the encoder
    thumbnail_long_side: int = 384
    pdf_render_long_side: int = 1200  # page image for display, highlighting and encoding
    max_pdf_pages: int = 500
    min_text_chars: int = 10  # fewer visible characters on a PDF page means "scanned": OCR it
    passage_min_words: int = 80
    passage_max_words: int = 150
    passage_max_chars: int = 1200  # keeps passages short for scripts written without spaces
    max_file_bytes: int = 1024 * _MB
    max_text_bytes: int = 20 * _MB
    max_zip_members: int = 10_000
    max_zip_total_bytes: int = 2048 * _MB
    max_zip_ratio: float = 250.0  # uncompressed / compressed size of one member
    zip_ratio_min_bytes: int = 1 * _MB  # small members may compress extremely well without harm

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"IngestLimits.{f.name} must be positive, got {value!r}")
        if self.passage_min_words > self.passage_max_words:
            raise ValueError(
                f"IngestLimits.passage_min_words ({self.passage_min_words}) must not exceed "
                f"passage_max_words ({self.passage_max_words})"
            )


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


class OcrUnavailable(RuntimeError):
    """Raised by an OCR callable when no OCR engine can run here; pages are then indexed as images only."""


DEFAULT_LIMITS = IngestLimits()


def default_ocr(image: Image.Image) -> list[Any]:
    """OCR through model.visual.ocr, imported on first use so ingest works without the OCR stack."""
    try:
        from model.visual.ocr import ocr_image
    except ImportError as exc:
        raise OcrUnavailable(str(exc)) from exc
    return list(ocr_image(image))


class _Refused(ValueError):
    """A file-level problem whose message is already in plain words."""


# --------------------------------------------------------------------------------------------- public API


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
        state = _BatchState(limits=limits, ocr=ocr, known=known_hashes)
        for done, entry in enumerate(entries):
            if progress is not None:
                progress(done, len(entries),
                         entry.path if isinstance(entry, (IngestError, IngestNote)) else entry.display)
            if isinstance(entry, (IngestError, IngestNote)):
                yield entry
            else:
                yield from _ingest_source(entry, state)
        if progress is not None:
            progress(len(entries), len(entries), "")


# ------------------------------------------------------------------------------------ listing the inputs


@dataclass
class _Source:
    source: str
    title: str
    display: str  # how messages name the file
    ext: str
    size: int
    read: Callable[[], bytes]


def _expand(
    paths: Iterable[str | os.PathLike[str]], limits: IngestLimits, archives: contextlib.ExitStack
) -> Iterator[_Source | IngestError | IngestNote]:
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            resolved = path.resolve()
            st = resolved.stat()
        except FileNotFoundError:
            yield IngestError(str(path.absolute()), f"{path.name or raw}: no such file or folder")
            continue
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on older Pythons
            yield IngestError(str(path.absolute()), f"{path.name or raw}: cannot be opened ({_os_reason(exc)})")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_folder(resolved, limits, archives)
        else:
            yield from _expand_file(resolved, limits, archives)


def _walk_folder(folder: Path, limits: IngestLimits, archives: contextlib.ExitStack
                 ) -> Iterator[_Source | IngestError | IngestNote]:
    def on_error(exc: OSError) -> None:
        errors.append(IngestError(str(exc.filename or folder), f"{Path(exc.filename or folder).name}: "
                                  f"folder cannot be read ({_os_reason(exc)})"))

    errors: list[IngestError] = []
    hidden = linked = 0
    # Symlinked folders are not followed: they can loop or lead far outside what the user picked.
    for root, dirs, files in os.walk(folder, onerror=on_error, followlinks=False):
        yield from errors
        errors.clear()
        hidden += sum(name.startswith(".") for name in dirs + files)
        links = {d for d in dirs if not d.startswith(".") and (Path(root) / d).is_symlink()}
        linked += len(links)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_symlink() and not _inside(path, folder):
                # A link may point anywhere (/etc/passwd, another user's files): only links that stay inside
                # the folder the user picked are followed.
                yield IngestError(str(path), f"{name}: skipped, it links to a file outside {folder.name} "
                                             "(links are followed only within the folder being indexed)")
                continue
            yield from _expand_file(path, limits, archives)
    yield from errors
    skipped = [f"{n} hidden {'entry' if n == 1 else 'entries'} (names starting with '.')" for n in [hidden] if n]
    skipped += [f"{n} linked {'folder' if n == 1 else 'folders'} (links to folders are not followed)"
                for n in [linked] if n]
    if skipped:
        yield IngestNote(str(folder), f"{folder.name}: skipped {' and '.join(skipped)}")


def _inside(link: Path, folder: Path) -> bool:
    try:
        return link.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a loop or an unreadable target: not followed
        return False


def _expand_file(path: Path, limits: IngestLimits, archives: contextlib.ExitStack
                 ) -> Iterator[_Source | IngestError | IngestNote]:
    if not _is_utf8(str(path)):
        # The index, the JSON report and the UI all hold names as UTF-8 text: such a name cannot be stored.
        shown = _escaped_name(path)
        yield IngestError(shown, f"{_escaped_name(Path(path.name))}: the file name is not valid UTF-8 "
                                 "(rename the file to index it)")
        return
    ext = path.suffix.lower()
    try:
        st = path.stat()
    except OSError as exc:
        yield IngestError(str(path), f"{path.name}: cannot be opened ({_os_reason(exc)})")
        return
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the run and a device could be read forever: only regular files are read.
        yield IngestError(str(path), f"{path.name}: not a regular file ({_file_kind(st.st_mode)}), skipped")
    elif ext not in SUPPORTED_EXTENSIONS:
        yield IngestError(str(path), f"{path.name}: {_unsupported(ext)}")
    elif ext in ARCHIVE_EXTENSIONS:
        yield from _expand_zip(path, limits, archives)
    else:
        size = st.st_size
        yield _Source(str(path), path.name, path.name, ext, size, read=lambda: _read_file(path, size, limits))


def _escaped_name(path: Path) -> str:
    """A path as printable UTF-8 text: bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a file"


def _read_file(path: Path, size: int, limits: IngestLimits) -> bytes:
    cap = _byte_cap(path.suffix.lower(), limits)
    if size > cap:
        raise _Refused(f"too large to read ({human_bytes(size)}, limit {human_bytes(cap)})")
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)  # bounded: a file that grew since it was listed is not read without end
    except OSError as exc:
        raise _Refused(f"cannot be opened ({_os_reason(exc)})") from exc
    if len(data) > cap:
        raise _Refused(f"too large to read (more than {human_bytes(cap)}, the limit)")
    return data


def _expand_zip(path: Path, limits: IngestLimits, archives: contextlib.ExitStack
                ) -> Iterator[_Source | IngestError | IngestNote]:
    zname = path.name
    try:
        archive = archives.enter_context(zipfile.ZipFile(path))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        reason = _os_reason(exc) if isinstance(exc, OSError) and exc.errno else "the file is damaged or not a zip file"
        yield IngestError(str(path), f"{zname}: not a readable zip archive ({reason})")
        return
    if len(infos) > limits.max_zip_members:
        yield IngestError(str(path), f"{zname}: too many files in the archive ({len(infos)}, limit {limits.max_zip_members})")
        return

    named = [(_safe_member_path(raw_name), raw_name, info) for info in infos if not info.is_dir()
             for raw_name in [info.filename.replace("\\", "/")]]
    entries: list[_Source | IngestError | IngestNote] = []
    total = hidden = 0
    # Two members of one name: the later one is what an unzip leaves on disk, so it is the one indexed.
    last = {m: k for k, (m, _, _) in enumerate(named) if m is not None}
    for k, (member, raw_name, info) in sorted(enumerate(named), key=lambda e: (e[1][0] or e[1][1], e[0])):
        if member is None:
            entries.append(IngestError(f"{path}!/{raw_name}", f"{raw_name} (in {zname}): refused, its path points "
                                       "outside the archive's folder"))
            continue
        parts = member.split("/")
        if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            hidden += 1
            continue  # hidden files and macOS resource forks, as in folders
        source, display = f"{path}!/{member}", f"{member} (in {zname})"
        if last[member] != k:
            entries.append(IngestError(source, f"{display}: skipped, the archive holds a later file of the same "
                                       "name; that one is indexed"))
            continue
        ext = PurePosixPath(member).suffix.lower()
        if stat.S_ISLNK(info.external_attr >> 16):
            entries.append(IngestError(source, f"{display}: skipped, links inside archives are not followed"))
        elif info.flag_bits & 0x1:
            entries.append(IngestError(source, f"{display}: skipped, it is password-protected"))
        elif ext in ARCHIVE_EXTENSIONS:
            entries.append(IngestError(source, f"{display}: skipped, archives inside archives are not opened"))
        elif ext not in SUPPORTED_EXTENSIONS:
            entries.append(IngestError(source, f"{display}: {_unsupported(ext)}"))
        elif (info.file_size >= limits.zip_ratio_min_bytes
              and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1)):
            ratio = info.file_size / max(info.compress_size, 1)
            entries.append(IngestError(source, f"{display}: refused, it would expand {ratio:,.0f} times when "
                                       f"unpacked (limit {limits.max_zip_ratio:g}), which is how 'zip bombs' work"))
        else:
            total += info.file_size
            entries.append(_Source(source, PurePosixPath(member).name, display, ext, info.file_size,
                                   read=_member_reader(archive, info, limits)))
    if total > limits.max_zip_total_bytes:
        yield IngestError(str(path), f"{zname}: too large when unpacked ({human_bytes(total)}, "
                          f"limit {human_bytes(limits.max_zip_total_bytes)})")
        return
    yield from entries
    if not entries:
        what = ("is empty" if not infos else "holds only folders" if not named
                else "holds only hidden files")
        yield IngestNote(str(path), f"{zname}: nothing to index, the archive {what}")
    elif hidden:
        yield IngestNote(str(path), f"{zname}: skipped {hidden} hidden "
                         f"{'file' if hidden == 1 else 'files'} (names starting with '.', macOS __MACOSX)")


def _safe_member_path(name: str) -> str | None:
    """Normalised member path, or None when it is absolute or climbs out of the archive."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "..", "") or norm.startswith("../"):
        return None
    return norm


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: IngestLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        cap = _byte_cap(PurePosixPath(info.filename).suffix.lower(), limits)
        if info.file_size > cap:
            raise _Refused(f"too large to read ({human_bytes(info.file_size)}, limit {human_bytes(cap)})")
        try:
            with archive.open(info) as fh:
                # zipfile stops at the declared size and checks the CRC, so a lying header cannot overrun.
                return fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise _Refused("damaged inside the archive or packed with an unsupported method") from exc

    return read


# ----------------------------------------------------------------------------------------- per-file work


@dataclass
class _BatchState:
    limits: IngestLimits
    ocr: OcrFn | None
    known: AbstractSet[str]
    seen_files: dict[str, str] = field(default_factory=dict)  # file sha256 -> first source
    ocr_unavailable: str | None = None  # reason, once OCR has failed to load in this batch


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
        yield from _text_items(src, data, file_hash, state)
    elif _looks_like_pdf(data):  # by content, so a PDF under a picture's name still works
        yield from _pdf_items(src, data, file_hash, state)
    elif src.ext in PDF_EXTENSIONS:
        # Named .pdf but not a PDF: a picture under the wrong name still gets indexed.
        try:
            yield from _image_items(src, data, file_hash, state)
        except _Refused as exc:
            raise _Refused("not a readable PDF (the file is damaged or is not a PDF)") from exc
    else:
        yield from _image_items(src, data, file_hash, state)


def _looks_like_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]  # readers accept up to 1 KiB of junk before the header


def _derive_hash(file_hash: str, *parts: object) -> str:
    return hashlib.sha256(":".join([file_hash, *map(str, parts)]).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ images


def _image_items(src: _Source, data: bytes, file_hash: str, state: _BatchState) -> Iterator[IngestEvent]:
    if file_hash in state.known:
        yield DuplicateSkipped(src.source, "", file_hash)
        return
    image = load_image(data, state.limits)
    yield Item(
        source=src.source, kind="image", title=src.title, content_hash=file_hash, size_bytes=len(data),
        file_hash=file_hash, image=image, thumbnail=make_thumbnail(image, state.limits.thumbnail_long_side),
    )


def load_image(data: bytes, limits: IngestLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode an image file's bytes to RGB, upright (EXIF), at most `encode_long_side` px long.

    Raises ValueError with a plain-words reason (without the file name) when the bytes are not a usable image.
    """
    try:
        with warnings.catch_warnings():
            # We apply our own pixel cap below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:,.0f} megapixels, " if found else ""
        raise _Refused(f"too large ({size}limit {limits.max_megapixels:g})") from exc
    except UnidentifiedImageError as exc:
        raise _Refused("not a readable image (not a picture format we support, or the file is damaged)") from exc
    except Exception as exc:  # noqa: BLE001 - broken headers raise all sorts of errors
        raise _Refused("not a readable image (the file is damaged)") from exc

    width, height = im.size
    megapixels = width * height / 1e6
    if megapixels > limits.max_megapixels:
        raise _Refused(f"too large ({megapixels:,.0f} megapixels, limit {limits.max_megapixels:g})")
    if width < 1 or height < 1:
        raise _Refused("not a readable image (it has no pixels)")
    try:
        if im.format in ("JPEG", "MPO"):
            # Let the JPEG decoder downscale by 1/2..1/8 while decoding: far faster for big photos.
            im.draft("RGB", _fit_size(width, height, limits.encode_long_side))
        im.load()
        try:
            ImageOps.exif_transpose(im, in_place=True)  # in place: no second full-size copy
        except Exception:  # noqa: BLE001 - broken EXIF must not lose the picture; keep it as stored
            pass
        im = _to_rgb(im)
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, bad compression streams, ...
        raise _Refused("not a readable image (the file is damaged or incomplete)") from exc
    if max(im.size) > limits.encode_long_side:
        # Bicubic, not Lanczos: 29 vs 46 ms for a 12 MP photo (drafted to 2016x1512), the largest single cost
        # of indexing one; the encoder reduces this image ~3x further, and on 43 large wallpapers the tokenizer
        # text changed only in runner-up concepts at their thresholds (4 photos; docs/benchmarks.md).
        im = im.resize(_fit_size(*im.size, limits.encode_long_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return im


def _fit_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":  # float data has no fixed range: stretch what is there
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        elif arr.max() > 255:  # 16-bit samples; a plain convert() would clip everything to white
            arr = arr / 257.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        # Transparent areas become white, as on a page, rather than whatever colour hides under alpha 0.
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        im = flat
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as exc:
            raise _Refused(f"uses a colour format we cannot convert ({im.mode})") from exc
    return im


def make_thumbnail(image: Image.Image, long_side: int = 384) -> bytes:
    """JPEG bytes of `image`, at most `long_side` px on its long side."""
    thumb = image.copy()
    thumb.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="JPEG", quality=80)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------- PDFs


def _pdf_items(src: _Source, data: bytes, file_hash: str, state: _BatchState) -> Iterator[IngestEvent]:
    import pypdfium2 as pdfium

    limits = state.limits
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
            page_hash = _derive_hash(file_hash, "page", page_no)
            if page_hash in state.known:
                skipped.append(page_no)
                continue
            try:
                page = pdf[index]
            except pdfium.PdfiumError:
                yield IngestError(src.source, f"{src.display}: page {page_no} could not be read (it is damaged)")
                continue
            try:
                page_events = list(_pdf_page_items(src, page, page_no, page_hash, file_hash, state))
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
                             f"(OCR) is not available ({state.ocr_unavailable}); those pages are searchable "
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
    return "not a readable PDF (the file is damaged or is not a PDF)"


def _pdf_page_items(
    src: _Source, page: Any, page_no: int, page_hash: str, file_hash: str, state: _BatchState
) -> Iterator[IngestEvent]:
    limits = state.limits
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

    if len(re.sub(r"\s+", "", text)) < limits.min_text_chars and state.ocr is not None:
        ocr_result = _run_ocr(image, state)
        if ocr_result is None:
            yield _OCR_MISSING
        elif isinstance(ocr_result, str):
            yield IngestNote(src.source, f"{src.display}: text recognition failed on page {page_no} "
                             f"({ocr_result}); the page is searchable by its image only")
        elif ocr_result[0].strip():
            text, located = ocr_result

    thumbnail = make_thumbnail(image, limits.thumbnail_long_side)
    yield Item(
        source=src.source, kind="pdf_page", title=src.title, content_hash=page_hash, size_bytes=src.size,
        file_hash=file_hash, page=page_no, image=image, text=text or None, thumbnail=thumbnail,
        words=[w for w, _ in located],
    )
    spans = split_passages(text, min_words=limits.passage_min_words, max_words=limits.passage_max_words,
                           max_chars=limits.passage_max_chars)
    if len(spans) < 2:
        return  # the page item already carries the whole (short) text
    for k, (start, end) in enumerate(spans):
        passage_hash = _derive_hash(file_hash, "page", page_no, "passage", k)
        if passage_hash in state.known:
            continue
        yield Item(
            source=src.source, kind="text", title=src.title, content_hash=passage_hash, size_bytes=src.size,
            file_hash=file_hash, page=page_no, passage=k, char_span=(start, end), image=image,
            text=text[start:end], thumbnail=thumbnail, words=[w for w, at in located if at is not None and start <= at < end],
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


def _run_ocr(image: Image.Image, state: _BatchState) -> tuple[str, list[tuple[Word, int | None]]] | str | None:
    """(text, located words), or a failure reason, or None when no OCR engine is available."""
    if state.ocr_unavailable is not None or state.ocr is None:
        return None
    try:
        raw = state.ocr(image)
    except OcrUnavailable as exc:
        state.ocr_unavailable = str(exc) or "no OCR engine installed"
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


# -------------------------------------------------------------------------------------------------- text


def _text_items(src: _Source, data: bytes, file_hash: str, state: _BatchState) -> Iterator[IngestEvent]:
    limits = state.limits
    text, _encoding = decode_text(data)
    if "\x00" in text:
        raise _Refused("not a text file (it contains binary data)")
    if not text.strip():
        raise _Refused("the text file contains no text")
    if _mostly_not_text(text):
        raise _Refused("not a text file (most of it is control characters or undecodable bytes)")
    spans = split_passages(text, min_words=limits.passage_min_words, max_words=limits.passage_max_words,
                           max_chars=limits.passage_max_chars)
    hashes = [_derive_hash(file_hash, "passage", k) for k in range(len(spans))]
    if all(h in state.known for h in hashes):
        yield DuplicateSkipped(src.source, "", file_hash)
        return
    for k, ((start, end), passage_hash) in enumerate(zip(spans, hashes, strict=True)):
        if passage_hash in state.known:
            yield DuplicateSkipped(f"{src.source} (passage {k})", "")
            continue
        yield Item(
            source=src.source, kind="text", title=src.title, content_hash=passage_hash, size_bytes=len(data),
            file_hash=file_hash, passage=k, char_span=(start, end), text=text[start:end],
        )


def _mostly_not_text(text: str, share: float = 0.05) -> bool:
    """More than `share` of the visible characters are control characters or U+FFFD. Real text of any script
    has next to none (tabs and line breaks do not count); random bytes decoded as latin-1 have ~25 %."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return True
    bad = sum(ch == "\ufffd" or unicodedata.category(ch) == "Cc" for ch in visible)
    return bad > share * len(visible)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode text file bytes, never failing: BOMs first, then UTF-8, then cp1252, then latin-1.

    Returns (text, encoding). The BOM is not part of the text; positions index the returned string.
    """
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: same first bytes
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace"), encoding
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1"), "latin-1"  # maps every byte, so this cannot fail


# Boundary strengths, strongest first wins when a passage must be cut.
_PARAGRAPH, _SENTENCE, _LINE, _WORDS = 3, 2, 1, 0
_PARAGRAPH_SEP = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE_SEP = re.compile(r"[.!?…]+[\"'”’»)\]]*(\s+)|[。！？]+[」』”’）]*(\s*)")
_LINE_SEP = re.compile(r"\s*\n\s*")
_TOKEN = re.compile(r"\S+")


def split_passages(
    text: str, *, min_words: int = 80, max_words: int = 150, max_chars: int = 1200
) -> list[tuple[int, int]]:
    """Split text into passages of about min_words..max_words words, cut at the strongest boundary.

    Returns (start, end) character spans into `text`, in order, without overlap, trimmed of whitespace;
    every word of `text` falls in exactly one span. A passage ends at a paragraph break once it has
    min_words; when the next piece would overflow max_words or max_chars it ends at the strongest
    boundary seen since min_words (paragraph > sentence > line > between words). Only the last passage,
    or one squeezed between paragraph breaks, may be shorter than min_words.
    """
    if min_words < 1 or max_words < min_words or max_chars < 1:
        raise ValueError(f"split_passages: need 1 <= min_words <= max_words and max_chars >= 1, got "
                         f"min_words={min_words}, max_words={max_words}, max_chars={max_chars}")
    units = _units(text, max_words, max_chars)  # (start, end, boundary strength before it, words)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        first_start = units[i][0]
        n_words = 0
        best: tuple[int, int] | None = None  # (strength, unit index to cut before)
        j = i
        cut = len(units)
        while j < len(units):
            start, end, strength, unit_words = units[j]
            if j > i:
                if n_words >= min_words:
                    if strength == _PARAGRAPH:
                        cut = j
                        break
                    if best is None or strength >= best[0]:
                        best = (strength, j)
                if n_words + unit_words > max_words or end - first_start > max_chars:
                    cut = best[1] if best is not None else j
                    break
            n_words += unit_words
            j += 1
        spans.append((first_start, units[cut - 1][1]))
        i = cut
    return spans


def _units(text: str, max_words: int, max_chars: int) -> list[tuple[int, int, int, int]]:
    units: list[tuple[int, int, int, int]] = []
    for p_start, p_end in _pieces(text, _PARAGRAPH_SEP, 0, len(text)):
        strength = _PARAGRAPH
        for s_start, s_end in _pieces(text, _SENTENCE_SEP, p_start, p_end):
            for l_start, l_end in _pieces(text, _LINE_SEP, s_start, s_end):
                for w_start, w_end, n in _word_chunks(text, l_start, l_end, max_words, max_chars):
                    units.append((w_start, w_end, strength, n))
                    strength = _WORDS
                strength = _LINE
            strength = _SENTENCE
    return units


def _pieces(text: str, sep: re.Pattern[str], start: int, end: int) -> Iterator[tuple[int, int]]:
    """Whitespace-trimmed, non-empty pieces of text[start:end] between separator matches."""
    pos = start
    for m in sep.finditer(text, start, end):
        group = next((g for g in range(1, (sep.groups or 0) + 1) if m.group(g) is not None), 0)
        cut_start, cut_end = m.span(group)
        yield from _trimmed(text, pos, cut_start)
        pos = max(pos, cut_end)
    yield from _trimmed(text, pos, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield start, end


def _word_chunks(text: str, start: int, end: int, max_words: int, max_chars: int) -> Iterator[tuple[int, int, int]]:
    """Split text[start:end] into chunks of at most max_words words and max_chars characters."""
    chunk_start = chunk_end = -1
    n = 0
    for m in _TOKEN.finditer(text, start, end):
        t_start, t_end = m.span()
        while t_end - t_start > max_chars:  # one "word" longer than a passage: text without spaces
            if n:
                yield chunk_start, chunk_end, n
                n = 0
            yield t_start, t_start + max_chars, 1
            t_start += max_chars
        if n and (n + 1 > max_words or t_end - chunk_start > max_chars):
            yield chunk_start, chunk_end, n
            n = 0
        if n == 0:
            chunk_start = t_start
        chunk_end = t_end
        n += 1
    if n:
        yield chunk_start, chunk_end, n


# ---------------------------------------------------------------------------------------------- messages


def _unsupported(ext: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
    if not ext:
        return f"unsupported file type (the name has no extension; supported: {supported})"
    return f"unsupported file type {ext} (supported: {supported})"


def _empty_message(ext: str) -> str:
    if ext in IMAGE_EXTENSIONS:
        return "not a readable image (the file is empty)"
    if ext in PDF_EXTENSIONS:
        return "not a readable PDF (the file is empty)"
    return "the file is empty"


def _byte_cap(ext: str, limits: IngestLimits) -> int:
    return limits.max_text_bytes if ext in TEXT_EXTENSIONS else limits.max_file_bytes


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
