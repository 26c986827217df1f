"""Changing a collection: uploads copied in, ingested, encoded and added; removal; clearing; re-syncing a
folder with its index. Every change holds the collection's writer lock, so searches go on meanwhile and two
writers never interleave; reports name files relative to the collection, never by server paths."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

from app.humanize import plural
from app.indexing import index_paths
from app.ingest import IMAGE_EXTENSIONS, page_count
from app.store.index import Index, IndexedItem
from model.files import write_atomic

from .collection import Collection
from .engine import Engine, LockedModel
from .sessions import check_upload, safe_filename, unique_child

Progress = Callable[[float, str], None]  # (fraction 0..1, what is happening)

# Files being indexed, written before a run and emptied after it: a run that never ended (the server killed or
# restarted mid-upload) leaves them listed, and sync_folder reads them again at the next start. Without it a
# PDF cut short kept the pages it had and never got the rest (sync_folder only read files with no items).
UNFINISHED = "unfinished.json"


class _CollectionFull(Exception):
    pass


def _entry(coll: Collection, path: str, page: int | None, item_id: str, kind: str) -> dict:
    return {"id": item_id, "path": coll.display_path(path), "page": page, "kind": kind}


def add_files(engine: Engine, coll: Collection, paths: Sequence[str | os.PathLike], progress: Progress,
              copy_in: bool = True, display_names: Sequence[str] | None = None) -> dict:
    """Copy uploads into the collection's folder, ingest, encode and add them.

    Returns the CLI's report: {"indexed": [...], "skipped_duplicates": [...], "replaced": [...],
    "errors": [{"path", "error"}]} plus "notes". Paths in the report are relative to the collection
    (never server paths).
    """
    if coll.read_only:
        raise PermissionError(f"{coll.label} is read-only")
    report: dict = {"indexed": [], "skipped_duplicates": [], "replaced": [], "errors": [], "notes": []}
    with coll.writing:
        idx = coll.index(engine)
        session_bytes = _folder_bytes(coll.files_dir) if coll.limits.max_session_bytes else 0
        check = check_upload(paths, coll.limits, session_bytes)
        report["errors"].extend(check.errors)
        accepted = check.accepted
        if display_names is not None:
            names = dict(zip([str(p) for p in paths], display_names))
            accepted = [(p, names.get(str(p), n)) for p, n in accepted]
        copies: list[Path] = []
        uploaded_as: dict[Path, str] = {}
        if copy_in:
            coll.files_dir.mkdir(parents=True, exist_ok=True)
            for src, name in accepted:
                same = _same_file(coll.files_dir, name, src)
                if same is not None:
                    # The very file again (same name, same bytes): read in place. A file cut short (a stopped
                    # server, the item cap) then gets the rest; a copy "x (2).pdf" held the rest before, and
                    # removing either copy lost half of it. A complete one is reported as already indexed.
                    copies.append(same)
                    uploaded_as[same] = same.name
                    continue
                dest = unique_child(coll.files_dir, name)
                try:
                    shutil.copyfile(src, dest)
                except OSError as e:
                    report["errors"].append({"path": name, "error": f"{name}: could not be stored ({e.strerror})"})
                    continue
                copies.append(dest)
                uploaded_as[dest] = Path(safe_filename(name)).name
        else:
            copies = [Path(p) for p, _ in accepted]
        progress(0.0, f"reading {plural(len(copies), 'file')}")
        _ingest_encode_add(engine, coll, idx, copies, report, progress)
        if copy_in:
            for dest in copies:  # keep only files that gave the collection something
                if dest.exists() and not idx.items(str(dest.resolve())) and not _zip_items(idx, dest):
                    dest.unlink(missing_ok=True)
                    # A copy named "x (2).jpg" that was not kept is reported under the name it was uploaded as.
                    _rename_in_report(report, dest.name, uploaded_as.get(dest, dest.name))
    progress(1.0, "done")
    return report


def _ingest_encode_add(engine: Engine, coll: Collection, idx: Index, files: list[Path], report: dict,
                       progress: Progress) -> None:
    """app.indexing.index_paths with progress, the session's item cap, and collection-relative paths."""
    max_items = coll.limits.max_session_items
    if max_items is not None and len(idx) >= max_items:
        report["errors"].append({"path": ", ".join(f.name for f in files),
                                 "error": f"your collection is full ({max_items} items on this shared server); "
                                          "remove something first, or run the app on your own machine"})
        return

    def on_file(done: float, total: int, name: str) -> None:
        # Every file read ("" after the last): what is left is encoding and saving the last batch, which for a
        # few photos is most of the wait.
        label = (f"file {min(int(done) + 1, total)} of {total}: {Path(name).name}" if name
                 else "encoding and saving the last files read")
        progress(0.95 * done / max(1, total), label)

    last_source: list[str] = []  # the file being read when the cap stopped the run (its items come in order)

    def on_commit(entries) -> None:
        last_source[:] = [entries[-1].path]
        if max_items is not None and len(idx) >= max_items:
            raise _CollectionFull

    run = None
    listed = {str(f.resolve()) for f in files}
    _set_unfinished(coll, _unfinished(coll) | listed)
    try:
        run = index_paths(LockedModel(engine), idx, [str(f) for f in files], progress=on_file,
                          on_commit=on_commit)
    except _CollectionFull:
        report["errors"] += _left_out_by_the_cap(coll, idx, files, last_source[0], max_items)
    _set_unfinished(coll, _unfinished(coll) - listed)  # not reached when the run raised: they stay listed
    if run is None:  # stopped early: what was committed is in the index, report it from there
        for it in idx.items():
            if Path(it.path.partition("!/")[0]) in {f.resolve() for f in files}:
                report["indexed"].append(_entry(coll, it.path, it.page, it.id, it.kind))
        return
    rep = run.to_json()
    report["indexed"] += [_entry(coll, e["path"], e["page"], e["id"], e["kind"]) for e in rep["indexed"]]
    report["skipped_duplicates"] += [coll.display_path(p) for p in rep["skipped_duplicates"]]
    report["replaced"] += [coll.display_path(p) for p in rep["replaced"]]
    report["errors"] += [{"path": coll.display_path(e["path"]), "error": e["error"]} for e in rep["errors"]]
    report["notes"] += [{"path": coll.display_path(n["path"]), "note": n["note"]} for n in rep["notes"]]


def _left_out_by_the_cap(coll: Collection, idx: Index, files: list[Path], last: str, max_items: int) -> list[dict]:
    """What a run stopped by the session's item cap left out, named: each file it never reached, and the PDF it
    was reading when it stopped, with how many of its pages went in (it was listed as an ordinary "PDF, 34
    pages" under one unnamed line for all)."""
    why = f"your collection reached its limit of {max_items} items on this shared server (a page of text is " \
          "several items); remove something to make room"
    out = []
    last_file = last.partition("!/")[0]
    for f in files:
        path = str(f.resolve())
        items = idx.items(path)
        name = coll.display_path(path)
        if not items and not _zip_items(idx, f):
            out.append({"path": name, "error": f"{name}: not added, {why}"})
        elif path == last_file and f.suffix.lower() == ".pdf":
            pages, have = page_count(f), len({it.page for it in items if it.page is not None})
            if pages is not None and have < pages:
                out.append({"path": name, "error": f"{name}: only {have} of its {pages} pages were added, {why}"})
    return out


def remove(engine: Engine, coll: Collection, targets: Sequence[str]) -> list[IndexedItem]:
    """Remove items by id or by displayed path; deletes the stored files nothing refers to any more.

    Returns the removed items, so that a message can count the files and pages they were (humanize.describe_files)
    rather than the pages' passages."""
    if coll.read_only:
        raise PermissionError(f"{coll.label} is read-only")
    with coll.writing:
        idx = coll.index(engine)
        resolved = []
        for t in targets:
            if not t.strip():  # files_dir / "" is the whole collection's folder
                raise KeyError("an empty name names no file of the collection")
            p = coll.files_dir / t
            resolved.append(str(p.resolve()) if (not _looks_like_id(t) and p.exists()) else t)
        removed = idx.remove(resolved)
        for t in resolved:
            p = Path(t)
            if p.is_absolute() and p.is_file() and _inside(p, coll.files_dir) and not idx.items(str(p)) \
                    and not _zip_items(idx, p):
                p.unlink(missing_ok=True)
    return removed


def clear(engine: Engine, coll: Collection) -> list[IndexedItem]:
    """Remove every item and stored file of a collection; the items removed."""
    if coll.read_only:
        raise PermissionError(f"{coll.label} is read-only")
    with coll.writing:
        idx = coll.index(engine)
        items = idx.items()
        if items:
            idx.remove([it.id for it in items])
        if coll.files_dir.is_dir():
            for p in coll.files_dir.iterdir():
                if p.is_file():
                    p.unlink(missing_ok=True)
    return items


def sync_folder(engine: Engine, coll: Collection, extensions: AbstractSet[str], progress: Progress) -> dict | None:
    """Bring a collection's index in line with its folder: index the files that have no items yet (first
    start, another model, an index rebuilt after a format change) and drop items whose file is gone."""
    if not coll.files_dir.is_dir():
        return None
    with coll.writing:
        idx = coll.index(engine)
        # Photos first: they are quick, so the collection is useful sooner; documents (OCR) come last.
        files = sorted((p for p in coll.files_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions),
                       key=lambda p: (p.suffix.lower() not in IMAGE_EXTENSIONS, p.name))
        wanted = {str(p.resolve()) for p in files}
        items = idx.items()
        # Items of files that are gone. A file elsewhere that still exists stays: a Qdrant store (--store) may
        # also hold what the CLI indexed from other folders, which must survive the app's start.
        stale = [it.id for it in items if (path := it.path.partition("!/")[0]) not in wanted
                 and (_inside(Path(path), coll.files_dir) or not Path(path).is_file())]
        if stale:  # e.g. a file that was renamed or deleted since the last start
            idx.remove(stale)
        have = {it.path.partition("!/")[0] for it in items}
        cut_short = _unfinished(coll)
        todo = [p for p in files if (path := str(p.resolve())) not in have or path in cut_short]
        if not todo:
            _set_unfinished(coll, set())  # what was listed is gone from the folder
            return None
        report: dict = {"indexed": [], "skipped_duplicates": [], "replaced": [], "errors": [], "notes": []}
        progress(0.0, f"0 of {len(todo)} files")
        _ingest_encode_add(engine, coll, idx, todo, report, progress)
        return report


def _unfinished(coll: Collection) -> set[str]:
    """The files of `coll` whose indexing started and never ended (resolved paths; see UNFINISHED)."""
    try:
        listed = json.loads((coll.root / UNFINISHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {p for p in listed if isinstance(p, str)} if isinstance(listed, list) else set()


def _set_unfinished(coll: Collection, paths: set[str]) -> None:
    marker = coll.root / UNFINISHED
    try:
        if paths:
            write_atomic(marker, json.dumps(sorted(paths)))
        else:
            marker.unlink(missing_ok=True)
    except OSError:  # only a restart's re-read depends on it: indexing itself goes on
        pass


def _same_file(folder: Path, name: str, upload: Path) -> Path | None:
    """The file of `folder` stored under `name` when it holds exactly the bytes of `upload`, else None."""
    stored = folder / safe_filename(name)
    try:
        if not stored.is_file() or stored.stat().st_size != upload.stat().st_size:
            return None
        return stored if filecmp.cmp(stored, upload, shallow=False) else None
    except OSError:
        return None


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _zip_items(idx: Index, path: Path) -> bool:
    if path.suffix.lower() != ".zip":
        return False
    prefix = str(path.resolve()) + "!/"
    return any(it.path.startswith(prefix) for it in idx.items())


def _rename_in_report(report: dict, old: str, new: str) -> None:
    if old == new:
        return
    report["skipped_duplicates"] = [new + p[len(old):] if p.startswith(old) else p
                                    for p in report["skipped_duplicates"]]
    for entry in report["errors"] + report["notes"]:
        if entry["path"].startswith(old):
            entry["path"] = new + entry["path"][len(old):]
        for key in ("error", "note"):
            if key in entry:
                entry[key] = entry[key].replace(old, new)


def _looks_like_id(text: str) -> bool:
    return len(text) >= 16 and all(c in "0123456789abcdef" for c in text)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
