"""The Gradio Blocks app: it assembles the tabs (one module each) and the API endpoints.

    search_tab.py      query, budget slider, results, why it matched
    collection_tab.py  add, list, remove and clear the visitor's files
    scaling_tab.py     cost and agreement of each trained budget on the current collection
    how_it_works.py    one query walked through the live model
    model_tab.py       the loaded checkpoint, its quality against budget, loading another
    api.py             the named endpoints `search` and `index`
The work is done by `app.service.Studio`; `explain.py` computes "why it matched", `plots.py` draws figures.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.service import Studio
from app.ui import api, collection_tab, how_it_works, model_tab, scaling_tab, search_tab
from app.ui.common import PRIVATE, busy, on_first_open, session_of, status_line

CSS = (Path(__file__).parent / "style.css").read_text(encoding="utf-8")
# Rules for Gradio's own page container, which the CSS above cannot name inside a media query: Gradio scopes
# such rules of `css` to descendants of that container. It hides its overflow, which makes it a scroll
# container that never scrolls, so nothing in the page could stick (the budget row, style.css); clip cuts the
# same overflow without that.
HEAD = ("<style>@media (min-width: 1000px) and (min-height: 700px) "
        "{ .gradio-container { overflow: clip !important; } }</style>")


def build_demo(studio: Studio) -> gr.Blocks:
    # Thumbnails are served from where they are written (see Studio.thumbnail): a re-rank sends 24 file URLs
    # without Gradio copying or re-checking each file, which is most of a slider move's server time.
    gr.set_static_paths([str(studio.thumb_dir)])

    with gr.Blocks(title="MetaEmbed Studio", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# MetaEmbed Studio\nSearch photos and documents with **MetaEmbed**, a multi-vector embedding "
                    "made of learnable *meta tokens*: see why each result matched, and trade accuracy for speed "
                    "at search time with one slider.", elem_classes="me-header")
        status = gr.Markdown(elem_classes="me-caption")
        with gr.Tabs():
            with gr.Tab("Search", id="search") as search_page:
                search = search_tab.build(studio)
            with gr.Tab("Collection", id="collection"):
                collection = collection_tab.build(studio)
            with gr.Tab("Scaling", id="scaling") as scaling_page:
                scaling = scaling_tab.build(studio)
            with gr.Tab("How it works", id="how") as how_page:
                how = how_it_works.build(studio)
            with gr.Tab("Model", id="model"):
                model = model_tab.build(studio)
        api.build_and_wire(studio)

        started = _wire_session(studio, demo)
        search_tab.wire(studio, search, search_page)
        collection_tab.wire(studio, collection, started, status)
        scaling_tab.wire(studio, scaling)
        how_it_works.wire(studio, how, search.include_samples, how_page)
        model_tab.wire(studio, model, search, scaling, status, started)
        _wire_status(studio, started, status)
        _wire_samples_default(studio, started, search.include_samples, scaling_page, scaling.samples,
                              collection.stats_md)
    return demo


def _wire_session(studio: Studio, demo: gr.Blocks):
    """The page's first event. With private sessions it ties the page to a key kept in the browser's local
    storage, so a reload (F5) finds the visitor's collection again; what reads the collection runs after it."""
    browser_key = gr.BrowserState(None, storage_key="metaembed-studio-session")

    def bind(key: str | None, request: gr.Request) -> str | None:
        return studio.bind_browser(session_of(request), key)

    def end_session(request: gr.Request) -> None:
        studio.end_session(session_of(request))

    demo.unload(end_session)
    return demo.load(bind, browser_key, browser_key, **PRIVATE)


def _wire_samples_default(studio: Studio, started, search_box: gr.Checkbox, scaling_page: gr.Tab,
                          scaling_box: gr.Checkbox, collection_stats: gr.Markdown) -> None:
    """The sample collection joins searches (and the Scaling tab's measurements, which read the same
    collections) until the visitor has files of their own (issue 17.8): both boxes start alike. They tick
    again when the visitor's own collection becomes empty (`collection_stats`, the Collection tab's statistics,
    change with it): after "Clear my collection" a search found nothing while the samples were there."""

    def own_files(request: gr.Request) -> bool:
        coll = studio.user_collection(session_of(request), create=False)
        return bool(coll is not None and studio.stats(coll)["items"])

    def samples_by_default(request: gr.Request):
        return gr.update(value=not own_files(request))

    def samples_once_empty(request: gr.Request):
        # Only ever on: while the visitor has files, the boxes stay as they left them (unticked on purpose, or not).
        return (gr.skip(),) * 2 if own_files(request) else (gr.update(value=True),) * 2

    started.then(samples_by_default, None, search_box, **PRIVATE)
    # The Scaling tab is drawn when first opened (a value sent before is lost), so its box is set then.
    on_first_open(scaling_page, samples_by_default, [], [scaling_box])
    collection_stats.change(samples_once_empty, None, [search_box, scaling_box], **PRIVATE)


def _wire_status(studio: Studio, started, status: gr.Markdown) -> None:
    def show(request: gr.Request) -> str:
        return status_line(studio, session_of(request))

    # While the samples are indexed on first start, or the visitor's files are still being added (a page reloaded
    # mid-upload has no progress bar of its own), the status line follows the progress.
    timer = gr.Timer(2.0, active=studio.indexing_progress is not None)

    def tick(request: gr.Request):
        return show(request), gr.Timer(active=busy(studio, session_of(request)))

    started.then(tick, None, [status, timer], **PRIVATE)
    timer.tick(tick, None, [status, timer], show_progress="hidden", **PRIVATE)
