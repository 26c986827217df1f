"""Listing and reading the inputs: folders (walked in name order, hidden entries and links to folders
skipped, file links followed only inside the folder), zip archives (with their safety limits: member
count, unpacked size, compression ratio, paths that climb out) and files, read with a byte cap.

Listing is cheap and reads no file contents, so the caller knows the total before the slow part;
each `_Source` reads its bytes only when asked.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.humanize import human_bytes, plural

from .events import IngestError, IngestNote, _Refused
from .limits import IngestLimits

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
PDF_EXTENSIONS = frozenset({".pdf"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
ARCHIVE_EXTENSIONS = frozenset({".zip"})
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | PDF_EXTENSIONS | TEXT_EXTENSIONS | ARCHIVE_EXTENSIONS


@dataclass
class _Source:
    """One file to ingest, listed but not read yet: a file on disk or a member of an open zip archive."""

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
        if not str(raw).strip():  # "" reads as the working directory: an unset variable must not index it
            yield IngestError(str(raw), "an empty path names no file or folder")
            continue
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
            if path.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except PermissionError as exc:
                    yield IngestError(str(path), f"{name}: skipped, its target cannot be opened ({_os_reason(exc)})")
                    continue
                except (OSError, RuntimeError):  # RuntimeError: a loop, on older Pythons
                    yield IngestError(str(path), f"{name}: skipped, a link that loops or leads to nothing")
                    continue
                if not target.is_relative_to(folder):
                    # A link may point anywhere (/etc/passwd, another user's files): only links that stay
                    # inside the folder the user picked are followed.
                    yield IngestError(str(path), f"{name}: skipped, it links to a file outside {folder.name} "
                                                 "(links are followed only within the folder being indexed)")
                    continue
            yield from _expand_file(path, limits, archives)
    yield from errors
    skipped = [f"{plural(hidden, 'hidden entry', 'hidden entries')} (names starting with '.')"] if hidden else []
    skipped += [f"{plural(linked, 'linked folder')} (links to folders are not followed)"] if linked else []
    if skipped:
        yield IngestNote(str(folder), f"{folder.name}: skipped {' and '.join(skipped)}")


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
    total = packed = hidden = 0
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
            packed += info.compress_size
            entries.append(_Source(source, PurePosixPath(member).name, display, ext, info.file_size,
                                   read=_member_reader(archive, info, limits)))
    if total > limits.max_zip_total_bytes:
        yield IngestError(str(path), f"{zname}: too large when unpacked ({human_bytes(total)}, "
                          f"limit {human_bytes(limits.max_zip_total_bytes)})")
        return
    # The same ratio over the whole archive: many members each just under zip_ratio_min_bytes (2,000 of 1 MiB of
    # one repeated byte: 5 MB packed, 1.9 GiB of text) passed the check above, and would have indexed for days.
    if total >= limits.zip_ratio_min_bytes and total > limits.max_zip_ratio * max(packed, 1):
        yield IngestError(str(path), f"{zname}: refused, it would expand {total / max(packed, 1):,.0f} times when "
                          f"unpacked (limit {limits.max_zip_ratio:g}), which is how 'zip bombs' work")
        return
    yield from entries
    if not entries:
        what = ("is empty" if not infos else "holds only folders" if not named
                else "holds only hidden files")
        yield IngestNote(str(path), f"{zname}: nothing to index, the archive {what}")
    elif hidden:
        yield IngestNote(str(path), f"{zname}: skipped {plural(hidden, 'hidden file')} (names starting with '.', "
                         "macOS __MACOSX)")


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



def _unsupported(ext: str) -> str:
    supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
    if not ext:
        return f"unsupported file type (the name has no extension; supported: {supported})"
    return f"unsupported file type {ext} (supported: {supported})"



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
