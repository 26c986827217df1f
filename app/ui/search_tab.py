"""The Search tab: a query, the budget slider, the results, and "why it matched" for the one clicked."""

from __future__ import annotations

import html
import itertools
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from gradio.components.gallery import GalleryData, GalleryImage
from gradio.data_classes import ImageData
from PIL import Image

from app.humanize import SCORE_SCALE, echoed, plural, score_text
from app.ingest.images import load_image
from app.search import ONLY, WHOLE_MATCH, Calibration, Hit, comparable_score
from app.service import QueryState, Studio
from app.ui import explain as ui_explain
from app.ui import plots
from app.ui.common import PRIVATE, gpu, mistake, preset_info, session_of

RESULTS = 24
EXAMPLE_QUERIES = ["a cat", "a colourful parrot", "boats at sunset", "a mountain lake", "hot air balloon",
                   "how do I install Debian", "pancakes for breakfast", "an orange flower"]
NO_SELECTION = "Click a result above to open its explanation."
# How far below the window's top a scroll target rests: under the budget row where it is pinned there (a
# desktop, style.css), else a small gap. The row's height, not where it is now: the targets lie below it, so
# once scrolled to, the row rests pinned at the top (its place before the scroll left a 1024x768 window's
# results under the fold).
_PINNED = ("const bar = document.getElementById('me-budget-row');"
           " const pad = (bar && getComputedStyle(bar).position === 'sticky' ? bar.getBoundingClientRect().height"
           " : 0) + 8;")
# Run in the page when a result is clicked: the explanation opens ~1,100 px below the results, out of sight,
# so the click brings its heading to the top of the window (before the server answers: nothing above it moves).
SCROLL_TO_WHY = ("() => { const h = document.getElementById('me-why-heading'); if (!h) return; " + _PINNED +
                 " window.scrollBy({top: h.getBoundingClientRect().top - pad, behavior: 'smooth'}); }")
# Run in the page when new results are in: on a phone they start ~1,100 px down, below the examples and the
# budget, and a search seemed to do nothing; after "more like this" they are above, out of sight. Where the
# results' caption and a row of them are in view (a desktop after a search), nothing moves; nor when the
# caption did not change (a search refused with a notice, which also counts as a success).
SCROLL_TO_RESULTS = ("() => { const c = document.getElementById('me-results-caption'); if (!c) return;"
                     " const text = c.innerText; if (text === c.dataset.seen || text.startsWith('Type a query'))"
                     " return; c.dataset.seen = text; " + _PINNED +
                     " const top = c.getBoundingClientRect().top;"
                     " if (top < pad || top > window.innerHeight - 160)"
                     " window.scrollBy({top: top - pad, behavior: 'smooth'}); }")


def budget_readout(studio: Studio, r_q: int, r_c: int) -> str:
    engine = studio.engine
    full = engine.num_candidate_vectors * engine.dim * 2
    per_item = r_c * engine.dim * 2
    preset = (r_q, r_c) in engine.presets
    kind = "a trained preset" if preset else "a custom budget (between the trained presets)"
    note = ""
    store = studio.local.index(engine, create=False) if studio.local is not None and studio.local.store else None
    if store is not None and store.scored_budget((r_q, r_c)) != (r_q, r_c):
        note = (f" Your collection lives in Qdrant, which keeps the presets' r_c only: it is scored at "
                f"{store.scored_budget((r_q, r_c))}.")
    return (f"**Budget ({r_q}, {r_c})** — {kind}: the first {r_q} of {engine.num_query_vectors} query vectors "
            f"against the first {r_c} of {engine.num_candidate_vectors} vectors per item "
            f"({per_item:,} of {full:,} bytes per item read).{note}")


def clamped(value: object, low: int, high: int) -> int:
    """A slider's value as the page sent it, unprocessed (the slider events skip Gradio's preprocessing, which
    answered 0 or 99 typed into a slider's number box with a traceback and "Error" over the outputs), brought
    into low..high; `high` when the box holds no number (it was emptied)."""
    try:
        return int(np.clip(round(float(value)), low, high))
    except (TypeError, ValueError, OverflowError):  # None, "", NaN, inf
        return high


def position_of(hits: list[Hit], selected: tuple[str, str] | list | None) -> int | None:
    """Where the open result `selected` (collection key, item id) is among `hits`, for the gallery's highlight,
    which must follow the item, not its old place; None when it is not among them."""
    if selected is None:
        return None
    key = tuple(selected)
    return next((i for i, h in enumerate(hits) if (h.collection, h.id) == key), None)


def query_picture(value: dict | None) -> Image.Image | None:
    """The query image as the page sent it (its file in Gradio's cache: the events that read it skip Gradio's
    preprocessing, which met a broken file with an internal error and a server traceback), opened as the
    collection's photos are (app.ingest.images.load_image: only the listed decoders, a pixel cap). ValueError,
    in plain words naming the file, when it is not a usable image."""
    if not value:
        return None
    path = value.get("path")
    name = value.get("orig_name") or (Path(path).name if path else "the image")
    try:
        data = Path(path).read_bytes() if path else None
    except OSError:
        data = None
    if data is None:
        raise ValueError(f"{name} could not be read: drop it again")
    try:
        return load_image(data)
    except ValueError as e:  # the reason in plain words, e.g. "not a readable image (...)"
        raise ValueError(f"{name} is {e}") from None


def gallery_value(studio: Studio, hits: list[Hit], session: str | None, r_q: int) -> list[tuple[str, str]]:
    # The comparable score (MaxSim / r_q, the mean best similarity of the query's vectors) reads the same at
    # every budget; score first: long file names are cut off at the end of the caption.
    return [(studio.thumbnail(h, session),
             f"{score_text(comparable_score(h.score, r_q))} · {h.label}" + (" · sample" if h.collection == "samples" else "")) for h in hits]


def gallery_payload(items: list[tuple[str, str]]) -> list[dict]:
    """`items` (thumbnail file, caption) as Gallery.postprocess would send them, for the slider's events, which
    skip Gradio's postprocessing: that starts a thread pool for the 24 thumbnails and checks each file against
    the static paths twice (once would do), 20-35 ms of a move's server time on the 2-core machine at load 4-6."""
    return GalleryData(root=[GalleryImage(image=ImageData(path=path, orig_name=Path(path).name,
                                                          mime_type="image/jpeg"), caption=caption)
                             for path, caption in items]).model_dump()


def results_caption(query: QueryState, hits: list[Hit], budget: tuple[int, int], rank_ms: float,
                    indexing: tuple[float, str] | None = None, calibration: Calibration | None = None,
                    whole: float | None = None, samples_left_out: bool = False, only: str | None = None,
                    cut: bool = False) -> str:
    """The line above the results; with the checkpoint's `calibration` and the search's whole-query score
    (`whole`, Studio.whole_match) it says when nothing in the collection is close to the query.
    `samples_left_out`: the sample collection exists but was not searched (its box is unticked, as it is by
    default once the visitor has files of their own), which the caption says. `only`: the search ranked
    "photos" or "documents" alone (the *Show* choice). `cut`: more items matched than `hits` shows."""
    among = f" among the {only}" if ONLY.get(only) else ""
    # While files are still being indexed (the samples on first start), results are partial: say so.
    partial = (f"⏳ **Still indexing** ({indexing[1]}, {100 * indexing[0]:.0f}%): these results cover only what "
               "is indexed so far.\n\n") if indexing is not None else ""
    if not hits:
        if partial:
            return partial + f"Nothing indexed yet matches {query.label}{among}."
        if among:
            return (f"No results for {query.label}: there are no {only} in the collection. Choose *Everything* "
                    "under *Show*, or add files in the **Collection** tab.")
        return (f"No results for {query.label}: the collection is empty. Add files in the **Collection** tab, or "
                "tick *Include the sample collection*.")
    weak = ""
    best = comparable_score(hits[0].score, budget[0])
    if calibration is not None and whole is not None and calibration.no_close_match(whole, best, budget):
        # What to do about it, for what was searched: words, a picture, or a result's own content.
        advice = ("Nothing else in the collection is close to it." if query.about is not None else
                  "Try another picture, or add files." if query.image is not None and not query.text else
                  "Try other words, or add files.")
        weak = (f"**No close match** for {query.label}: taken as a whole (one vector for the query, one for each "
                f"item: budget {WHOLE_MATCH}), the closest item scores {score_text(whole)}, where searches whose answer is "
                f"there usually score {score_text(calibration.weak_below)} or more, and no part of the query matches "
                f"strongly either (best {score_text(best)} at budget {tuple(budget)}). {advice}\n\n")
    encoded = (f"the query was encoded once, in {query.encode_ms:.0f} ms" if query.encode_ms else
               "reused from the cache: an earlier search encoded this query")
    # A visitor with files of their own searches them alone by default: say so, or a photo of the samples they
    # remember seems lost (the box is easy to miss).
    left_out = (" in your files only (tick *Include the sample collection* to search the samples too)"
                if samples_left_out else "")
    # Every item scores, so a list cut at RESULTS is the best of more: "24 results" read as all there was.
    count = f"Top {len(hits)} results" if cut else plural(len(hits), "result")
    return (partial + weak + f"**{count}** for {query.label}{among} at budget **{budget}**{left_out} · "
            f"ranked in {rank_ms:.0f} ms from the cached query vectors ({encoded}). Scores are the mean best "
            f"similarity of the query's vectors ({SCORE_SCALE}). Click a result to see why it "
            "matched.")


SNIPPET_WORDS = 28


def snippets_html(hits: list[Hit], query_text: str | None, r_q: int, limit: int = 5) -> str:
    """The best pages and passages among the results that hold a query word, each as "p. N · file" and the
    stretch of its text that holds most of the query's words, those words highlighted (photos are shown by
    their pictures; a page without any of the words was listed with nothing marked, which said nothing)."""
    words = {w for w in re.findall(r"\w+", (query_text or "").lower()) if len(w) > 1 and w not in ui_explain.STOPWORDS}
    rows = []
    for h in hits:
        if h.kind == "image" or not (h.item.text or "").strip() or not words:
            continue
        stretch = _best_stretch(h.item.text, words)
        if stretch is None:
            continue
        rows.append(f"<li><span class='me-caption'>{score_text(comparable_score(h.score, r_q))}</span> <b>{html.escape(h.label)}</b>"
                    f"{' · sample' if h.collection == 'samples' else ''} — {stretch}</li>")
        if len(rows) == limit:
            break
    return f"<ul class='me-snippets'>{''.join(rows)}</ul>" if rows else ""


def same_word(a: str, b: str) -> bool:
    """Whether two lower-case words are forms of one word for highlighting: equal, or sharing a prefix of at
    least 4 letters that misses at most 2 letters of the shorter one and 3 of the longer ("install" /
    "installer" / "installed", "boat" / "boats"; not "cat" / "category", "port" / "portrait", "organ" /
    "organization")."""
    if a == b:
        return True
    common = len(os.path.commonprefix([a, b]))
    return common >= 4 and common >= min(len(a), len(b)) - 2 and common >= max(len(a), len(b)) - 3


def _best_stretch(text: str, words: set[str]) -> str | None:
    """The SNIPPET_WORDS-word stretch of `text` with most of `words` (marked), or None when it has none."""
    tokens = text.split()
    hit = [any(same_word(w, q) for w in re.findall(r"\w+", t.lower()) for q in words) for t in tokens]
    if not any(hit):
        return None
    n = min(SNIPPET_WORDS, len(tokens))
    best = max(range(len(tokens) - n + 1), key=lambda i: (sum(hit[i:i + n]), -i))
    shown = [f"<mark>{html.escape(t)}</mark>" if hit[i] else html.escape(t) for i, t in enumerate(tokens[best:best + n],
                                                                                                  start=best)]
    return ("… " if best > 0 else "") + " ".join(shown) + (" …" if best + n < len(tokens) else "")


def build(studio: Studio) -> SimpleNamespace:
    engine = studio.engine
    presets = engine.presets
    full_idx = len(presets) - 1
    s = SimpleNamespace(query_state=gr.State(None), hits_state=gr.State([]),
                        selected_state=gr.State(None),  # selected: (collection key, item id)
                        # (n, r_q, r_c, selected) of the latest re-rank while a result is open, n numbering them
                        explain_request=gr.State(None))
    with gr.Row(equal_height=True):
        s.query_box = gr.Textbox(label="Search", show_label=False, placeholder="Describe what you are "
                                 "looking for, e.g. “an owl in a tree” or “how do I install Debian”", scale=6,
                                 lines=1, max_lines=2, elem_id="me-query", container=False)
        s.search_btn = gr.Button("Search", variant="primary", scale=1, min_width=120, elem_id="me-search")
    # The image in the query, shown where the query is (issue 17.2: hidden in a collapsed accordion, it joined
    # every later search without the user knowing).
    with gr.Row(visible=False, equal_height=True, elem_id="me-query-chip") as s.chip:
        s.chip_image = gr.Image(show_label=False, interactive=False, height=64, width=64, container=False,
                                buttons=[], scale=0, min_width=72, elem_id="me-chip-image")
        gr.Markdown("**Searching with this image** (and your words, if any). A new search with other words "
                    "leaves it out unless you keep it.", elem_classes="me-caption")
        s.keep_image = gr.Checkbox(value=False, label="Keep it", scale=0, min_width=110, elem_id="me-chip-keep")
        s.remove_image = gr.Button("✕ Remove image", size="sm", scale=0, min_width=140, elem_id="me-chip-remove")
    s.image_words = gr.State(None)  # the words last searched with the current image (None: not searched yet)
    with gr.Accordion("More like this: search with an image", open=False):
        with gr.Row():
            # Its events skip Gradio's preprocessing and open the file with query_picture.
            s.query_image = gr.Image(label="Query image",
                                     type="filepath", height=180, sources=["upload", "clipboard"],
                                     elem_id="me-query-image", scale=1)
            # The words: a review read "combined with the text above" as for every later search too, and lost
            # the photo on typing more (new words start a text search unless Keep it is ticked, issue 17.2).
            gr.Markdown("Drop a photo here and press **Search** to find similar photos and pages (with the words "
                        "in the box, if any). Other words later start a text search, unless you tick **Keep it** "
                        "where the image then shows, under the search box. "
                        "After opening a result, **Search for more like this result** does the same "
                        "with that result.", elem_classes="me-caption")
    with gr.Row(equal_height=True):
        s.examples = gr.Examples(EXAMPLE_QUERIES, inputs=s.query_box, label="Try")
        # Pages win many photo queries on their words, and photos some page queries: a collection of both can
        # be searched one kind at a time (app.search.ONLY). Changing it re-ranks like the budget slider.
        s.only = gr.Radio([(what.capitalize(), what) for what in ONLY], value="everything", label="Show",
                          scale=0, min_width=420, elem_id="me-only")
        # Without samples the box is hidden, and its width must go too: Gradio's form around the two still
        # reserved it as an empty grey block beside Show.
        has_samples = studio.samples is not None
        s.include_samples = gr.Checkbox(value=True, label="Include the sample collection", scale=0,
                                        min_width=240 if has_samples else 0, visible=has_samples,
                                        elem_id="me-search-samples")
    with gr.Row(equal_height=True, elem_id="me-budget-row"):
        s.preset = gr.Slider(0, full_idx, value=full_idx, step=1, scale=2,
                             label="Budget: how many meta vectors are compared",
                             info=preset_info(presets), elem_id="me-preset")
        s.readout = gr.Markdown(budget_readout(studio, *presets[-1]), elem_classes="me-budget")
    with gr.Accordion("Advanced: any budget (r_q, r_c)", open=False):
        with gr.Row():
            s.r_q = gr.Slider(1, engine.num_query_vectors, value=presets[-1][0], step=1,
                              label="r_q — query vectors used", elem_id="me-rq")
            s.r_c = gr.Slider(1, engine.num_candidate_vectors, value=presets[-1][1], step=1,
                              label="r_c — vectors per item used", elem_id="me-rc")
    s.results_md = gr.Markdown("Type a query and press **Search** (or Enter).", elem_id="me-results-caption")
    s.gallery = gr.Gallery(label="Results", columns=6, height=430, allow_preview=False, object_fit="cover",
                           show_label=False, elem_id="me-results")
    s.snippets = gr.HTML(elem_id="me-snippets")  # the pages and passages among the results, words highlighted
    # explain_request's n: its change event redraws the open explanation once a re-rank's results are out. (A
    # State's own change event would not fire: the slider's events skip the queue, and only queued events
    # report changed States to the page.)
    s.explain_trigger = gr.Number(visible=False, precision=0)

    gr.Markdown("## Why it matched", elem_id="me-why-heading")
    s.why_md = gr.Markdown(NO_SELECTION, elem_id="me-why-title")
    with gr.Row(visible=False, elem_id="me-why") as s.why_row:
        with gr.Column(scale=5):
            s.why_image = gr.Image(label="Where the matching tokens lie", type="pil", height=420,
                                   interactive=False, buttons=["fullscreen"], elem_id="me-overlay")
            # Worded for the open result's kind (overlay_caption): a text file's spoke of the sky and faces.
            s.why_caption = gr.Markdown(overlay_caption("image"), elem_classes="me-caption",
                                        elem_id="me-overlay-caption")
            s.why_text = gr.HTML(label="What the model read")
        with gr.Column(scale=6):
            s.heatmap = gr.Plot(label="Similarity of every query vector with every result vector",
                                elem_id="me-heatmap", show_label=False)
            gr.Markdown("Each row is one query meta vector, each column one of the result's meta "
                        "vectors. MaxSim keeps only the best cell of each row (★).",
                        elem_classes="me-caption")
            s.bars = gr.Plot(label="Contributions", elem_id="me-bars", show_label=False)
    with gr.Column(visible=False) as s.table_col:
        gr.Markdown("### What each meta vector reads")
        s.why_table = gr.HTML(elem_id="me-why-table")
        s.more_btn = gr.Button("Search for more like this result", size="sm")
    return s


def wire(studio: Studio, s: SimpleNamespace, page: gr.Tab | None = None) -> None:
    """`page`: the tab this view sits in; opening it re-ranks the shown query when the collection changed."""
    rank_outs = [s.query_state, s.hits_state, s.gallery, s.results_md, s.snippets]
    reset_outs = [s.selected_state, s.why_md, s.why_row, s.table_col]
    select_outputs = [s.selected_state, s.why_md, s.why_row, s.why_image, s.why_caption, s.heatmap, s.bars,
                      s.why_text, s.table_col, s.why_table]
    explained = select_outputs[1:]

    @gpu
    def do_search(text, image, keep, image_words, rq, rc, with_samples, only, selected, request: gr.Request):
        """Its inputs come unprocessed (see query_picture): the image as its file, the sliders as sent."""
        session = session_of(request)
        words = (text or "").strip()
        # New words after an image search start a text search, unless the user keeps the image.
        drop = image is not None and image_words is not None and not keep and words and words != image_words
        if drop:
            image = None
        try:
            query = studio.encode_query(text, query_picture(image))
        except ValueError as e:
            return mistake(str(e), len(rank_outs) + len(reset_outs) + 2)
        rq, rc = in_range(rq, rc)
        return new_results(rank_outputs(studio, query, rq, rc, bool(with_samples), session, only), selected) + (
            None, gr.update(value=NO_SELECTION), gr.update(visible=False), gr.update(visible=False),
            None if drop else gr.skip(), words if image is not None else None)

    engine = studio.engine
    presets = engine.presets
    requests = itertools.count(1)  # numbers the explanation requests: each one changes explain_trigger

    def in_range(rq, rc) -> tuple[int, int]:
        """r_q and r_c as the page sent them (`clamped`), within the model's vectors."""
        return clamped(rq, 1, engine.num_query_vectors), clamped(rc, 1, engine.num_candidate_vectors)

    def at_budget(query, rq: int, rc: int, with_samples: bool, only: str | None, selected, session: str | None,
                  before: list[Hit] | None) -> tuple:
        """The results at one budget, with the gallery in its wire format (these events skip Gradio's
        postprocessing, see gallery_payload), and, while a result is open, the request to redraw its
        explanation at that budget: explain_trigger's change event draws it once the results are out. Drawn
        here, the explanation held the new gallery back (70-200 ms on the server, then a Plotly redraw of
        300-570 ms in the browser before anything painted)."""
        if query is None:
            return (gr.skip(),) * (len(rank_outs) + 2)
        query, hits, gallery, caption, snippets = rank_outputs(studio, query, rq, rc, bool(with_samples), session,
                                                               only)
        if selected is None:
            return query, hits, gallery_payload(gallery), caption, snippets, gr.skip(), gr.skip()
        # The highlight follows the open result to its new place (the gallery keeps its old index otherwise);
        # when it left the page, explain_latest clears the highlight. Sent only when the result moved: a new
        # selected_index costs the page ~30 ms per move (bench/studio.py rerank --open, 149-159 vs 122-127 ms).
        where = position_of(hits, selected)
        moved = where is not None and where != position_of(before or [], selected)
        shown = gr.update(value=gallery_payload(gallery), selected_index=where) if moved else gallery_payload(gallery)
        n = next(requests)
        return query, hits, shown, caption, snippets, (n, rq, rc, tuple(selected)), n

    def on_preset(index, query, with_samples, only, selected, before, request: gr.Request):
        i = clamped(index, 0, len(presets) - 1)
        rq, rc = presets[i]
        return (i if i != index else gr.skip(), rq, rc, budget_readout(studio, rq, rc)) + at_budget(
            query, rq, rc, with_samples, only, selected, session_of(request), before)

    def on_budget(rq, rc, query, with_samples, only, selected, before, request: gr.Request):
        sent = rq, rc
        rq, rc = in_range(rq, rc)
        # A value brought into range goes back to its box; one in range is not sent back, or a reply that lags
        # behind a drag would pull the handle back. A trained preset moves the main slider to it.
        fixed = tuple(v if v != s else gr.skip() for v, s in zip((rq, rc), sent))
        preset = presets.index((rq, rc)) if (rq, rc) in presets else gr.skip()
        return fixed + (preset, budget_readout(studio, rq, rc)) + at_budget(query, rq, rc, with_samples, only,
                                                                            selected, session_of(request), before)

    def explain_latest(wanted, selected, query, hits, request: gr.Request):
        """The open explanation at the budget of the latest re-rank (issue 17.1: it must end at the budget the
        results show). The State inputs are read on the server when this runs, not when it was triggered, and
        the event is `always_last`, so the last redraw is at the last re-rank's budget however fast the slider
        moves."""
        still = standing_request(wanted, selected)
        if still is None or query is None:
            return (gr.skip(),) * (len(explained) + 1)
        rq, rc, coll, item = still
        main, table = explain_panel(studio, coll, item, query, rq, rc, session_of(request))
        # The highlight on the open result's place, or none when it left the page: a returned component
        # keeps selected_index=None, which Gradio drops from a gr.update.
        return main + (table, gr.Gallery(selected_index=position_of(hits, selected)))

    def select_handler(evt: gr.SelectData, hits, query, rq, rc, request: gr.Request):
        if not hits or evt.index is None or query is None:
            return (gr.skip(),) * len(select_outputs)
        hit = hits[int(evt.index)]
        main, table = explain_panel(studio, hit.collection, hit.id, query, rq, rc, session_of(request))
        return ((hit.collection, hit.id),) + main + (table,)

    def more_like_this(selected, rq, rc, with_samples, only, request: gr.Request):
        if selected is None:
            return mistake("select a result first", 3 + len(rank_outs) + len(reset_outs))
        # A new query: the open explanation (of the old one) closes, as after any search.
        return more_like(studio, selected, int(rq), int(rc), with_samples, session_of(request), only) + (
            None, gr.update(value=NO_SELECTION), gr.update(visible=False), gr.update(visible=False))

    search_inputs = [s.query_box, s.query_image, s.keep_image, s.image_words, s.r_q, s.r_c, s.include_samples,
                     s.only, s.selected_state]
    # The examples are queries judged on the sample collection (test_the_example_queries_are_judged_on_the_
    # sample_collection), so clicking one includes the samples again: the checkbox turns itself off once the
    # visitor has files of their own (app._wire_samples_default), and "a mountain lake" then found "no close
    # match in your collection".
    with_samples = s.examples.load_input_event.then(lambda: True, None, s.include_samples, queue=False,
                                                    show_progress="hidden", **PRIVATE)
    # `always_last`: a new query sent (button or Enter: one listener) while a search runs is searched next;
    # Gradio's default ('once') dropped it, leaving the old query's results under the new words.
    searched = dict(fn=do_search, inputs=search_inputs, outputs=rank_outs + reset_outs + [s.query_image, s.image_words],
                    preprocess=False, trigger_mode="always_last", **PRIVATE)
    for event in (gr.on([s.search_btn.click, s.query_box.submit], **searched), with_samples.then(**searched)):
        event.success(None, None, None, js=SCROLL_TO_RESULTS, queue=False, **PRIVATE)
    _wire_query_image(s)
    # The slider's events send only the results (explain_latest follows while a result is open) and skip
    # Gradio's postprocessing (their values are sent as they are) and its queue: one HTTP request instead of
    # joining the queue and waiting for its messages. (The queue's concurrency limit is not needed for them:
    # `always_last` keeps at most one re-rank per page in flight, and it reads only cached query vectors.)
    # They skip its preprocessing too: the values are brought into range (`clamped`) instead of refused.
    rerank = dict(show_progress="hidden", preprocess=False, postprocess=False, queue=False, **PRIVATE)
    explain_outs = [s.explain_request, s.explain_trigger]
    s.preset.input(on_preset, [s.preset, s.query_state, s.include_samples, s.only, s.selected_state, s.hits_state],
                   [s.preset, s.r_q, s.r_c, s.readout] + rank_outs + explain_outs, trigger_mode="always_last",
                   **rerank)
    budget_inputs = [s.r_q, s.r_c, s.query_state, s.include_samples, s.only, s.selected_state, s.hits_state]
    budget_outputs = [s.r_q, s.r_c, s.preset, s.readout] + rank_outs + explain_outs
    for slider in (s.r_q, s.r_c):
        slider.input(on_budget, budget_inputs, budget_outputs, trigger_mode="always_last", **rerank)
    for choice in (s.include_samples, s.only):
        choice.input(on_budget, budget_inputs, budget_outputs, **rerank)
    # Queued (it runs the model, and its notices need the queue); a small timer on the panel while it catches up.
    s.explain_trigger.change(gpu(explain_latest), [s.explain_request, s.selected_state, s.query_state, s.hits_state],
                             explained + [s.gallery], trigger_mode="always_last", show_progress="minimal",
                             **PRIVATE)
    s.gallery.select(gpu(select_handler), [s.hits_state, s.query_state, s.r_q, s.r_c], select_outputs, **PRIVATE)
    # A listener of its own, in the page only: a `js=` on the one above would replace its inputs with the
    # script's return value.
    s.gallery.select(None, None, None, js=SCROLL_TO_WHY, queue=False, **PRIVATE)
    if page is not None:
        # Files added or removed in the Collection tab: a removed file stayed among the results until the next
        # search (opening it said it was gone). Opening the tab re-ranks the shown query at its budget, as the
        # slider does, and sends nothing when the results are the same.
        def on_open(rq, rc, query, with_samples, only, selected, before, request: gr.Request):
            if query is None:
                return (gr.skip(),) * (len(rank_outs) + len(explain_outs))
            rq, rc = in_range(rq, rc)
            fresh = at_budget(query, rq, rc, with_samples, only, selected, session_of(request), before)
            same = [(h.collection, h.id, h.score) for h in fresh[1]] == [
                (h.collection, h.id, h.score) for h in before or []]
            return (gr.skip(),) * len(fresh) if same else fresh

        page.select(on_open, budget_inputs, rank_outs + explain_outs, **rerank)
    s.more_btn.click(more_like_this, [s.selected_state, s.r_q, s.r_c, s.include_samples, s.only],
                     [s.query_box, s.query_image, s.image_words] + rank_outs + reset_outs,
                     **PRIVATE).success(None, None, None, js=SCROLL_TO_RESULTS, queue=False, **PRIVATE)


def standing_request(wanted: tuple | None, selected: tuple[str, str] | None) -> tuple[int, int, str, str] | None:
    """(r_q, r_c, collection key, item id) of an explanation request (n, r_q, r_c, selected) made by a re-rank,
    or None when it no longer stands: the panel was closed (a new search) or another result was opened since,
    and the redraw would bring back a stale panel."""
    if wanted is None or selected is None or tuple(wanted[3]) != tuple(selected):
        return None
    _, rq, rc, (coll, item) = wanted
    return rq, rc, coll, item


def more_like(studio: Studio, selected: tuple[str, str], rq: int, rc: int, with_samples: bool,
              session: str | None, only: str | None = None) -> tuple:
    """Search with the selected result itself (Studio.more_like_this: its photo, or its text): the query box,
    the query image, the words searched with it, then the ranking."""
    try:
        query = studio.more_like_this(selected[0], selected[1], session)
    except (FileNotFoundError, ValueError) as e:
        raise gr.Error(str(e)) from e
    image = query.image
    return (gr.update(value=query.text or ""), image, "" if image is not None else None) + new_results(
        rank_outputs(studio, query, rq, rc, with_samples, session, only), selected)


def _wire_query_image(s: SimpleNamespace) -> None:
    """The chip that shows the image in the query, with its Keep and Remove controls."""

    def show_chip(image):
        # The query image's own file (unprocessed, see query_picture), shown as it is: not decoded and saved
        # again.
        return gr.update(visible=image is not None), image, gr.update(value=False) if image is None else gr.skip()

    def check_upload(image):
        """A new image, not searched yet; one that is not a usable image is named in a calm notice and taken
        out of the query."""
        try:
            query_picture(image)
        except ValueError as e:
            gr.Warning(str(e))
            return None, None
        return None, gr.skip()

    s.query_image.change(show_chip, s.query_image, [s.chip, s.chip_image, s.keep_image], show_progress="hidden",
                         preprocess=False, postprocess=False, **PRIVATE)
    s.query_image.upload(check_upload, s.query_image, [s.image_words, s.query_image], preprocess=False, **PRIVATE)
    s.remove_image.click(lambda: (None, None), None, [s.query_image, s.image_words], **PRIVATE)


def rank_outputs(studio: Studio, query: QueryState, rq: int, rc: int, with_samples: bool,
                 session: str | None, only: str | None = None) -> tuple:
    """The query state, hits, gallery and caption of one search at budget (rq, rc), of `only` photos or
    documents (the *Show* choice; a value it does not offer, as a hand-made request may send, shows
    everything)."""
    query = studio.ensure_current(query)
    only = only if only in ONLY else None
    t0 = time.perf_counter()
    # One more than is shown tells whether the list is cut (the caption says "top 24", not "24 results").
    hits = studio.search(query, session, rq, rc, k=RESULTS + 1, include_samples=with_samples, only=only)
    ms = (time.perf_counter() - t0) * 1000
    cut = len(hits) > RESULTS
    hits = hits[:RESULTS]
    calibration = studio.engine.calibration
    whole = None
    # The whole-query score takes a (1, 1) search of its own; it can only flag a search whose best part is below
    # the budget's strong-part bar, so most slider moves over a real match skip it.
    if calibration is not None and hits and comparable_score(hits[0].score, rq) < calibration.strong_at((rq, rc)):
        try:
            whole = studio.whole_match(query, session, with_samples, only)
        except (KeyError, ValueError):  # e.g. the model changed in between (CheckpointMismatch): not flagged
            pass
    caption = results_caption(query, hits, (rq, rc), ms, studio.indexing_progress, calibration, whole,
                              samples_left_out=not with_samples and studio.samples is not None, only=only,
                              cut=cut)
    return (query, hits, gallery_value(studio, hits, session, rq), caption, snippets_html(hits, query.text, rq))


def new_results(outputs: tuple, selected: tuple[str, str] | list | None) -> tuple:
    """rank_outputs of a new query, with no tile highlighted in its gallery while a result was open (`selected`).

    The page keeps the gallery's selected_index when its value changes, so the tile of the result open before
    a new search stayed outlined, now on another result (issue 17). A returned component sends
    selected_index=None (a gr.update would drop it); it is built only then, since building it with a value
    postprocesses the 24 thumbnails once more (~16 ms)."""
    if selected is None:
        return outputs
    query, hits, gallery, caption, snippets = outputs
    return query, hits, gr.Gallery(value=gallery, selected_index=None), caption, snippets


def explain_panel(studio: Studio, coll_key: str, item_id: str, query: QueryState, rq, rc,
                  session: str | None) -> tuple[tuple, str]:
    """The "Why it matched" outputs for one result at budget (rq, rc): (panel outputs, per-vector table)."""
    rq, rc = studio.check_budget(rq, rc)
    query = studio.ensure_current(query)
    try:
        coll, item, c_vectors = studio.item(coll_key, item_id, session)
    except KeyError:
        return (gr.update(value="That item is no longer in the collection."), gr.update(visible=False),
                None, gr.skip(), None, None, "", gr.update(visible=False)), ""
    q_insp = studio.inspect_query(query)
    try:
        c_insp, source = studio.inspect_item(coll, item)
    except (FileNotFoundError, ValueError) as e:
        c_insp, source = None, None
        gr.Warning(f"Showing scores only: {e}")
    ex = ui_explain.explain_match(query.vectors, c_vectors, (rq, rc), q_insp, c_insp)
    q_labels = _vector_labels(ex.q_unit_attention, ex.q_units, rq)
    c_labels = _vector_labels(ex.c_unit_attention, ex.c_units, rc)
    heat = plots.similarity_heatmap(ex.sim, ex.argmax, (rq, rc), q_labels, c_labels)
    bar = plots.contribution_bars(ex.contributions, ex.argmax, ex.score, q_labels)
    image = None
    if source is not None and source.image is not None:
        image = plots.overlay(source.image, ui_explain.overlay_marks(ex, item.kind, source))
    where = f", page {item.page}" if item.page else ""
    of = (f"the mean of the best similarities of the {rq} query vectors (MaxSim {ex.score:.3f}, their sum)" if rq > 1
          else f"the best similarity of the one query vector (MaxSim {ex.score:.3f})")
    title = (f"### “{echoed(item.title, 120)}”{where} for {query.label}\nScore **{score_text(comparable_score(ex.score, rq))}** at budget "
             f"**({rq}, {rc})**: {of}. ")
    top = ui_explain.summary_units(ex)
    if top:
        # The shares are of what the matching vectors read, not of the score (a teacher read them as the latter).
        title += ("Mostly because of (share of what the matching vectors read): "
                  + ", ".join(f"{ui_explain.kind_mark(k, lab)}{lab} {100 * s:.0f}%" for lab, k, s in top))
    title += alike_rows_note(query, ex, rq)
    read = ui_explain.highlighted_text_html(ex)
    if read:
        read = "<p class='me-caption'>What the model read for this result, shaded by relevance:</p>" + read
    caption = overlay_caption("pdf_page" if item.page else item.kind)  # a page's passage is shown on its page
    return (title, gr.update(visible=True), gr.update(value=image, visible=image is not None),
            gr.update(value=caption or "", visible=image is not None and caption is not None), heat, bar, read,
            gr.update(visible=True)), ui_explain.match_table_html(ex)


def overlay_caption(kind: str) -> str | None:
    """The caption under the picture of a result of `kind` ("image", "pdf_page", "text"): what its marks
    show there; None for a text file, which has no picture (what the model read is shown as text instead)."""
    if kind == "image":
        return ("Where the content tokens behind the winning matches lie, stronger where the matching meta "
                "vectors attended more: a heat map for each concept seen in the photo (◆), outlined areas for "
                "the sky (☁, in sky blue) and for colours (●, drawn in that colour), boxes around faces (☺, "
                "people words) and around text read in the photo (✎). Dimmed parts played no role.")
    if kind == "pdf_page":
        return ("Where the words behind the winning matches lie on the page: boxes around them (✎), stronger "
                "where the matching meta vectors attended more; a picture on the page is marked as a photo is "
                "(◆ concepts, ☁ sky, ● colours, ☺ faces). Dimmed parts played no role.")
    return None


def alike_rows_note(query: QueryState, ex: ui_explain.Explanation, rq: int) -> str:
    """Why rows of the per-vector table are alike, for a text query ("" otherwise). It speaks of words, so not
    of a picture's query: a dropped photo (no text) got "a short query has fewer words than vectors"."""
    if rq <= 1 or query.text is None or query.image is not None:
        return ""
    words = [u for u in ex.q_units if ui_explain.meaningful(u)]
    if len(words) == 1:
        # A teacher's first query is often one word, and 16 identical rows looked like one vector copied 16 times.
        return (f"\n\nThe query is one word, so all {rq} query vectors read it and their rows below are alike; a "
                "longer query (\"a dog on a sofa\") gives each vector its own part.")
    if _read_alike(ex.q_unit_attention, 0, 1):
        # A teacher saw q1 and q2 agree on every query and took it for a fault: it is MetaEmbed-Mini's layout.
        return ("\n\nq1 and q2 both read the whole query (the query's first two levels have one vector each), so "
                "their rows are alike; from q3 on, each level reads smaller parts of it, and a part that repeats "
                "(a short query has fewer words than vectors) gives a row like another's.")
    return ""


def _read_alike(att: np.ndarray | None, i: int, j: int) -> bool:
    """Whether query vectors i and j read the same tokens alike (their attention rows agree)."""
    return att is not None and len(att) > max(i, j) and bool(np.allclose(att[i], att[j], atol=1e-4))


def _vector_labels(att: np.ndarray | None, units: list, n: int) -> list[str]:
    """For hover text: the content unit each meta vector attends to most."""
    if att is None or not units:
        return [""] * n
    keep = [k for k, u in enumerate(units) if ui_explain.meaningful(u)]
    if not keep:
        return [""] * n
    return [ui_explain.short_label(units[keep[int(np.argmax(att[i][keep]))]]) if i < len(att) else ""
            for i in range(n)]
