"""What every tab shares: the visitor's session key, the GPU decorator, calm mistakes, the status line, and
work done when a tab is first opened."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from app.humanize import plural
from app.service import Studio

# Every event is private (not listed in the API page); the named endpoints live in app/ui/api.py.
PRIVATE = dict(api_visibility="private")

try:  # ZeroGPU on Hugging Face Spaces: functions that run the model ask for a GPU only while they run.
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator does nothing

    def gpu(fn):
        return fn


def session_of(request: gr.Request | None) -> str | None:
    """The page's key: Gradio's session hash (Studio maps it to its browser's key in private sessions)."""
    return getattr(request, "session_hash", None) if request is not None else None


def on_first_open(page: gr.Tab, fn: Callable, inputs: list, outputs: list) -> None:
    """Fill `outputs` with `fn(*inputs, request)` the first time the visitor opens the tab `page` in this browser
    page; later openings leave them as they are (the visitor's own changes stay). A tab is drawn when first
    opened: a value sent to it before is lost, and its charts would wait empty for a first run."""
    opened = gr.State(False)

    def once(request: gr.Request, done: bool, *values):
        if done:
            return (*(gr.skip(),) * len(outputs), True)
        result = fn(*values, request)
        return (*(result if len(outputs) > 1 else (result,)), True)

    page.select(once, [opened, *inputs], [*outputs, opened], **PRIVATE)


def mistake(message: str, outputs: int) -> tuple:
    """A user mistake (nothing typed, nothing chosen): one calm notice, and every output stays as it was.
    Raising gr.Error instead marks every output of the event as failed (red badges over the stats and the
    tables) and logs the exception on the server."""
    gr.Warning(message)
    return (gr.skip(),) * outputs


def file_kind(kind: str) -> str:
    """A file's kind as a person names it, from its items' `kind`: wherever files are counted a .txt is a
    "text file" (its passages are counted as passages), as the add report and the statistics call it."""
    return {"image": "photo", "pdf_page": "PDF", "text": "text file"}.get(kind, kind)


def preset_info(presets: list[tuple[int, int]]) -> str:
    steps = " → ".join(f"({q}, {c})" for q, c in presets)
    # Not "precise": what more vectors buy depends on the model and the content (MetaEmbed-Mini's documents
    # rank better at (16, 64), its photos do not); the Scaling tab measures it.
    return (f"Left: fast and small. Right: more vectors, finer matching (the Scaling tab shows what that buys "
            f"on this model). Trained budgets (r_q, r_c): {steps}")


def status_line(studio: Studio, session: str | None) -> str:
    """The line under the title: model, collection sizes, background indexing."""
    engine = studio.engine
    parts = [f"Model: **{engine.config.name}** ({engine.source}, on {engine.model.device.type})"]
    # Files, as the Collection tab counts them (a PDF's pages and passages are one file).
    if studio.samples is not None:
        parts.append(f"sample collection: {plural(studio.stats(studio.samples)['files'], 'file')}")
    coll = studio.user_collection(session, create=False)
    n = studio.stats(coll)["files"] if coll is not None else 0
    parts.append(f"{'your private' if studio.private_sessions else 'your'} collection: {plural(n, 'file')}")
    if studio.indexing_progress is not None:
        fraction, what = studio.indexing_progress
        parts.append(f"indexing in the background ({100 * fraction:.0f}%, {what})")
    if coll is not None and coll.adding is not None:  # an upload still running, from this page or before a reload
        fraction, what = coll.adding
        parts.append(f"adding files ({100 * fraction:.0f}%, {what}); the files fill in as they are saved")
    return " · ".join(parts)


def busy(studio: Studio, session: str | None) -> bool:
    """Whether the status line is following work in progress (the page's timer refreshes it meanwhile)."""
    coll = studio.user_collection(session, create=False)
    return studio.indexing_progress is not None or (coll is not None and coll.adding is not None)


