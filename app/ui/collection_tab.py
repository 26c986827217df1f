"""The Collection tab: add files (with progress and a per-file report), see what is indexed, remove, clear."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app.humanize import describe_files, echoed, files_of, human_bytes, plural
from app.ingest import SUPPORTED_EXTENSIONS
from app.search import Hit
from app.service import Studio
from app.ui.common import PRIVATE, file_kind, gpu, mistake, session_of, status_line

MAX_TABLE_ROWS = 500  # rows of the collection table and choices of the remove list


def build(studio: Studio) -> SimpleNamespace:
    c = SimpleNamespace()
    gr.Markdown(_intro(studio))
    with gr.Row():
        with gr.Column(scale=1):
            c.upload = gr.File(label="Add photos, PDFs, text files or zip archives", file_count="multiple",
                               file_types=sorted(SUPPORTED_EXTENSIONS), height=200, elem_id="me-upload")
            c.index_btn = gr.Button("Add to collection", variant="primary", elem_id="me-index")
            c.report_md = gr.Markdown(elem_id="me-report")
        with gr.Column(scale=1):
            c.stats_md = gr.Markdown(elem_id="me-stats")
    # One picture per file (a PDF's first page, a text file's card): click one to pick it for removal. The
    # table under it lists the same files, so it is named for what it adds (two "Your files" headings, one
    # over the other, read as a repeat: issue 17).
    c.grid = gr.Gallery(label="Your files (click one to pick it for removal)", columns=6, height="auto",
                        allow_preview=False, object_fit="cover", elem_id="me-files")
    c.items_df = gr.Dataframe(headers=["file", "kind", "searchable parts"], datatype=["str", "str", "str"],
                              interactive=False, label="What each file adds to the search", max_height=320,
                              wrap=True, elem_id="me-items")
    with gr.Row():
        c.remove_sel = gr.Dropdown(choices=[], multiselect=True, label="Files to remove", scale=4,
                                   elem_id="me-remove-sel")
        with gr.Column(scale=1, min_width=180):
            c.remove_btn = gr.Button("Remove selected", elem_id="me-remove")
            c.clear_btn = gr.Button("Clear my collection", variant="stop")
    c.clear_ok = gr.Checkbox(value=False, visible=False)  # the confirmation dialog's answer
    c.tile_names = gr.State([])  # the file behind each tile: a zip member's caption is not its name
    return c


def index_upload(studio: Studio, files, request: gr.Request, progress=None) -> dict:
    """Add uploaded files to the visitor's collection (the Collection tab and the `index` API endpoint)."""
    paths = _paths(files)
    if not paths:
        raise gr.Error("choose one or more files to add first")
    coll = studio.user_collection(session_of(request))
    if coll is None:
        raise gr.Error("no session: reload the page")

    def report_progress(fraction: float, what: str) -> None:
        if progress is not None:
            progress(fraction, desc=what)

    read = {p: _identity(p) for p in paths}
    report = studio.index_files(coll, paths, report_progress)
    _forget_uploads(read)
    return report


def wire(studio: Studio, c: SimpleNamespace, started, status: gr.Markdown) -> None:
    """`started`: the page's first event (the collection is listed once the page knows its session)."""
    view_outs = [c.grid, c.tile_names, c.items_df, c.remove_sel, c.stats_md, status]

    def collection_view(request: gr.Request):
        session = session_of(request)
        coll = studio.user_collection(session, create=False)
        every = _files(studio, coll)
        files = every[:MAX_TABLE_ROWS]  # newest first, capped so a large collection loads quickly
        grid = [(studio.thumbnail(Hit(0, f["first"].id, f["name"], f["first"].page, 0.0, f["first"], coll.key),
                                  session), shown_name(f["name"], short=True)) for f in files]
        rows = [[shown_name(f["name"]), f["kind"], f["parts"]] for f in files]
        # A new Gallery clears the picked tile: after a removal the ring stayed on the slot, now another file.
        return (gr.Gallery(value=grid, selected_index=None), [f["name"] for f in files], rows,
                gr.update(choices=removal_choices(files, every), value=[]), _stats_md(studio, coll, every),
                status_line(studio, session))

    def pick(evt: gr.SelectData, chosen, names):
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(names or []):
            return gr.skip()
        # What is removed is a file on disk: a zip member's tile picks its whole archive (removal_choices).
        return gr.update(value=sorted(set(chosen or []) | {names[index].partition("!/")[0]}))

    @gpu
    def do_index(files, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        if not _paths(files):
            return mistake("choose one or more files to add first", 2 + len(view_outs))
        report = index_upload(studio, files, request, progress)
        return (_report_md(report), None) + collection_view(request)

    def do_remove(chosen, request: gr.Request):
        coll = studio.user_collection(session_of(request), create=False)
        if coll is None or not chosen:
            return mistake("pick files to remove first", 1 + len(view_outs))
        try:
            removed = studio.remove(coll, chosen)
        except KeyError as e:
            raise gr.Error(str(e)) from e
        return (_removed_md(chosen, [coll.display_path(it.path) for it in removed], files_of(removed)),
                ) + collection_view(request)

    def do_clear(confirmed, request: gr.Request):
        if not confirmed:  # the visitor pressed Cancel in the confirmation dialog
            return (gr.skip(),) * (1 + len(view_outs))
        coll = studio.user_collection(session_of(request), create=False)
        removed = studio.clear(coll) if coll is not None else []
        return (f"Cleared your collection ({files_of(removed)} removed).",) + collection_view(request)

    started.then(collection_view, None, view_outs, **PRIVATE)
    # One progress display, on the report, not repeated over every output of the event.
    c.index_btn.click(do_index, [c.upload], [c.report_md, c.upload] + view_outs, show_progress_on=[c.report_md],
                      **PRIVATE)
    c.grid.select(pick, [c.remove_sel, c.tile_names], c.remove_sel, **PRIVATE)
    c.remove_btn.click(do_remove, [c.remove_sel], [c.report_md] + view_outs, **PRIVATE)
    c.clear_btn.click(do_clear, c.clear_ok, [c.report_md] + view_outs,
                      js="(ok) => confirm('Remove every item from your collection?')", **PRIVATE)


def _intro(studio: Studio) -> str:
    if studio.private_sessions:
        lim = studio.limits
        caps = []
        if lim.max_files:
            caps.append(f"up to {lim.max_files} files per upload")
        if lim.max_file_bytes:
            caps.append(f"{human_bytes(lim.max_file_bytes)} per file")
        if lim.max_session_items:
            caps.append(f"{lim.max_session_items} items in all")
        hours = studio.sessions.ttl_s / 3600 if studio.sessions is not None else 2
        limits = ("Limits on this shared server: " + ", ".join(caps) + ".") if caps else ""
        return ("## Your private collection\nFiles you add here are visible to you only, in this browser (a reload "
                f"keeps them), and are deleted after {hours:g} idle hour{'s' if hours != 1 else ''}. " + limits)
    return (f"## Your collection\nFiles you add are copied to `{studio.local.files_dir}` and indexed once; "
            "every budget is then served from the same index.")


def shown_name(name: str, short: bool = False) -> str:
    """A file's displayed path as a person reads it: a zip member's "holiday.zip!/holiday/IMG_0042.jpg" reads
    "holiday/IMG_0042.jpg (in holiday.zip)", or with `short` (a tile's caption, cut to a line) "IMG_0042.jpg (in
    holiday.zip)": the raw form, cut, showed the three photos of an archive as one caption three times."""
    archive, sep, member = name.partition("!/")
    if not sep:
        return name
    return f"{member.rpartition('/')[2] if short else member} (in {archive})"


def removal_choices(files: list[dict], every: list[dict]) -> list[tuple[str, str]]:
    """(label, file name) of each file `files` show, for the remove list. Removal is per file on disk, so a zip
    member stands for its whole archive, which says so with what it holds ("holiday.zip (archive: 3 photos)",
    counted over `every` file, not only those shown): picking one photo of it took all three unannounced."""
    held: dict[str, list] = {}
    for f in every:
        archive, sep, _ = f["name"].partition("!/")
        if sep:
            held.setdefault(archive, []).extend(f["items"])
    names = sorted({f["name"].partition("!/")[0] for f in files})
    return [(f"{n} (archive: {files_of(held[n])})" if n in held else n, n) for n in names]


def _removed_md(chosen: list[str], removed_names: list[str], counted: str) -> str:
    """The removal report: `counted` (files_of the removed items) and each chosen file, an archive with the
    members that went with it (`removed_names`: the removed items' displayed paths)."""
    members: dict[str, set[str]] = {}
    for name in removed_names:
        archive, sep, member = name.partition("!/")
        if sep:
            members.setdefault(archive, set()).add(member)
    which = []
    for n in sorted(chosen):
        shown = echoed(n, 80)  # "*draft*.pdf" is a name, not Markdown
        if members.get(n):
            inside = [echoed(m.rpartition("/")[2], 60) for m in sorted(members[n])]
            shown += f" (the whole archive: {_listed(inside)})"
        which.append(shown)
    return f"Removed {counted}: {_listed(which)}."


def _listed(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _files(studio: Studio, coll) -> list[dict]:
    """The collection as a person sees it: one entry per file (a PDF's pages and passages, a text file's
    passages together), newest first, with the item whose picture stands for it."""
    if coll is None:
        return []
    by_file: dict[str, list] = {}
    for it in studio.items(coll):
        by_file.setdefault(coll.display_path(it.path), []).append(it)
    out = []
    for name, items in reversed(by_file.items()):
        pages = {it.page for it in items if it.page is not None}
        kind = file_kind("pdf_page" if pages else items[0].kind)
        parts = plural(len(pages), "page") if pages else (
            "1 photo" if items[0].kind == "image" else plural(len(items), "passage"))
        first = min(items, key=lambda it: (it.page or 0, it.passage if it.passage is not None else -1))
        out.append({"name": name, "kind": kind, "parts": parts, "first": first, "items": items})
    return out


def _stats_md(studio: Studio, coll, files: list[dict]) -> str:
    """`files`: the collection's `_files`, read once per view for the table, the grid and these counts."""
    stats = studio.stats(coll)
    if not stats["items"]:
        return "### Statistics\nYour collection is empty."
    # Counted as the add report counts them (a .txt is a text file, its passages are items), so this line and
    # the table's kind column agree: it said "1 text passage" of a file the table lists as "7 passages".
    counted = files_of(it for f in files for it in f["items"])
    rows = "\n".join(f"| {b['budget']} | {b['vectors']:,} | {b['size']} |" for b in stats["budgets"])
    return (f"### Statistics\n**{counted}** ({plural(stats['items'], 'searchable item')}: a photo, a PDF page and each "
            f"passage of a page or text file count one each). On disk: {stats['on_disk']}."
            "\n\n| budget (r_q, r_c) | vectors read per query | bytes read per query |\n"
            f"|---|---|---|\n{rows}\n\nOne index stores all {studio.engine.num_candidate_vectors} vectors per item; "
            "a budget reads only the first r_c of them.")


def _report_md(report: dict) -> str:
    # Files (and a PDF's pages), as the user chose them: not the pages' passages, which are items too.
    added = describe_files((e["path"], e["page"], e["kind"]) for e in report["indexed"])
    lines = [f"**Added {added}.**" if report["indexed"] else "**Added no new files.**"]
    if report["skipped_duplicates"]:
        lines.append(f"Skipped {plural(len(report['skipped_duplicates']), 'duplicate')} already in the collection.")
    if report.get("replaced"):
        lines.append(f"Replaced the older version of {plural(len(report['replaced']), 'edited file')}.")
    if report["errors"]:
        lines.append(f"**{plural(len(report['errors']), 'file')} could not be added:**")
        lines += [f"- {e['error']}" for e in report["errors"]]
    for note in report.get("notes", []):
        lines.append(f"- note: {note['note']}")
    return "\n".join(lines)


def _paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    return [str(getattr(f, "name", f)) for f in files]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _forget_uploads(read: dict[str, tuple[int, int] | None]) -> None:
    """Delete Gradio's temporary copies once the files live in the collection's own folder: each one only if it
    is still the file this upload read. Gradio stores an upload under a folder named by its content, so the same
    file uploaded again while the first upload was indexing lands on the same path; deleting it then made the
    second upload fail with "the upload did not arrive completely"."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    for p, identity in read.items():
        path = Path(p).resolve()
        if root in path.parents and path.is_file() and identity is not None and _identity(str(path)) == identity:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # the per-upload hash folder, if now empty
            except OSError:
                pass
