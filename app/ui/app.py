"""The Gradio Blocks app: search, why it matched, the collection, test-time scaling, how it works, the model.

Layout and event wiring live here; the work is done by `app.service.studio.Studio` (model, collections,
search, indexing), `app.ui.explain` (the numbers behind "why it matched") and `app.ui.plots` (figures).
Teaching views live in `app.ui.teach`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr
import numpy as np

from app.search import Hit
from app.service import QueryState, Studio
from app.ui import explain as ui_explain
from app.ui import plots
from app.ui import teach as ui_teach

RESULTS = 24
MAX_TABLE_ROWS = 500  # rows of the collection table and choices of the remove list
EXAMPLE_QUERIES = ["a red panda", "a kitten", "boats at sunset", "autumn mountains", "hot air balloon",
                   "how do I install Debian", "fruit in a bowl", "an orange flower"]

CSS = """
.me-caption {color: var(--body-text-color-subdued); font-size: 0.92em; margin: 2px 0 6px 0;}
.me-table {width: 100%; border-collapse: collapse; font-size: 0.92em;}
.me-table th {text-align: left; font-weight: 600; border-bottom: 1px solid var(--border-color-primary);
              padding: 4px 6px; vertical-align: bottom;}
.me-table td {border-bottom: 1px solid var(--border-color-primary); padding: 4px 6px; vertical-align: top;}
.me-read {max-height: 260px; overflow-y: auto; line-height: 1.7; padding: 8px 10px; white-space: pre-wrap;
          border: 1px solid var(--border-color-primary); border-radius: 8px; font-size: 0.93em;}
.me-budget {font-size: 0.95em; padding-top: 6px;}
#me-preset .tab-like-container, #me-preset .min_value, #me-preset .max_value {display: none;}
.me-tokens span {display: inline-block; margin: 2px; padding: 1px 7px; border-radius: 6px; font-size: 0.92em;}
.me-tok {background: #e2e8f0;}
.me-meta {background: #fed7aa; font-weight: 600;}
.me-header h1 {margin-bottom: 0;}
#me-results .caption-label {font-size: 0.85em;}
"""

try:  # ZeroGPU on Hugging Face Spaces: functions that run the model ask for a GPU only while they run.
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # everywhere else the decorator does nothing

    def gpu(fn):
        return fn


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def budget_readout(studio: Studio, r_q: int, r_c: int) -> str:
    engine = studio.engine
    full = engine.num_candidate_vectors * engine.dim * 2
    per_item = r_c * engine.dim * 2
    preset = (r_q, r_c) in engine.presets
    kind = "a trained preset" if preset else "a custom budget (between the trained presets)"
    return (f"**Budget ({r_q}, {r_c})** — {kind}: the first {r_q} of {engine.num_query_vectors} query vectors "
            f"against the first {r_c} of {engine.num_candidate_vectors} vectors per item "
            f"({per_item:,} of {full:,} bytes per item read).")


def preset_of(studio: Studio, index: float) -> tuple[int, int]:
    presets = studio.engine.presets
    return presets[int(np.clip(round(index), 0, len(presets) - 1))]


def gallery_value(studio: Studio, hits: list[Hit], session: str | None) -> list[tuple[str, str]]:
    # Score first: long file names are cut off at the end of the caption.
    return [(studio.thumbnail(h, session), f"{h.score:.2f} · {h.label}") for h in hits]


def results_caption(query: QueryState, hits: list[Hit], budget: tuple[int, int], rank_ms: float) -> str:
    if not hits:
        return (f"No results for {query.label}: the collection is empty. Add files in the **Collection** tab, or "
                "tick *Include the sample collection*.")
    encoded = f"encoded once, in {query.encode_ms:.0f} ms" if query.encode_ms else "encoded earlier"
    return (f"**{len(hits)} results** for {query.label} at budget **{budget}** · ranked in {rank_ms:.0f} ms from "
            f"the cached query vectors (the query was {encoded}). Click a result to see why it matched.")


def build_demo(studio: Studio) -> gr.Blocks:
    engine = studio.engine
    presets = engine.presets
    full_idx = len(presets) - 1
    # Thumbnails are served from where they are written (see Studio.thumbnail): a re-rank sends 24 file URLs
    # without Gradio copying or re-checking each file, which is most of a slider move's server time.
    gr.set_static_paths([str(studio.thumb_dir)])

    with gr.Blocks(title="MetaEmbed Studio", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        query_state = gr.State(None)
        hits_state = gr.State([])
        selected_state = gr.State(None)  # (collection key, item id)

        gr.Markdown("# MetaEmbed Studio\nSearch photos and documents with **MetaEmbed**, a multi-vector embedding "
                    "made of learnable *meta tokens*: see why each result matched, and trade accuracy for speed "
                    "at search time with one slider.", elem_classes="me-header")
        status = gr.Markdown(elem_classes="me-caption")

        with gr.Tabs():
            # ------------------------------------------------------------------------------ search
            with gr.Tab("Search", id="search"):
                with gr.Row(equal_height=True):
                    query_box = gr.Textbox(label="Search", show_label=False, placeholder="Describe what you are "
                                           "looking for, e.g. “a red panda” or “how do I install Debian”", scale=6,
                                           lines=1, max_lines=2, elem_id="me-query", container=False)
                    search_btn = gr.Button("Search", variant="primary", scale=1, min_width=120, elem_id="me-search")
                with gr.Accordion("More like this: search with an image", open=False):
                    with gr.Row():
                        query_image = gr.Image(label="Query image (combined with the text above, if any)",
                                               type="pil", height=180, sources=["upload", "clipboard"],
                                               elem_id="me-query-image", scale=1)
                        gr.Markdown("Drop a photo here and press **Search** to find similar photos and pages. "
                                    "After opening a result, **Search for more like this result** does the same "
                                    "with that result.", elem_classes="me-caption")
                with gr.Row(equal_height=True):
                    examples = gr.Examples(EXAMPLE_QUERIES, inputs=query_box, label="Try")
                    include_samples = gr.Checkbox(value=True, label="Include the sample collection", scale=0,
                                                  min_width=240, visible=studio.samples is not None)
                with gr.Row(equal_height=True):
                    preset = gr.Slider(0, full_idx, value=full_idx, step=1, scale=2,
                                       label="Budget: how many meta vectors are compared",
                                       info=_preset_info(presets), elem_id="me-preset")
                    readout = gr.Markdown(budget_readout(studio, *presets[-1]), elem_classes="me-budget")
                with gr.Accordion("Advanced: any budget (r_q, r_c)", open=False):
                    with gr.Row():
                        r_q = gr.Slider(1, engine.num_query_vectors, value=presets[-1][0], step=1,
                                        label="r_q — query vectors used", elem_id="me-rq")
                        r_c = gr.Slider(1, engine.num_candidate_vectors, value=presets[-1][1], step=1,
                                        label="r_c — vectors per item used", elem_id="me-rc")
                results_md = gr.Markdown("Type a query and press **Search** (or Enter).", elem_id="me-results-caption")
                gallery = gr.Gallery(label="Results", columns=6, height=430, allow_preview=False, object_fit="cover",
                                     show_label=False, elem_id="me-results")

                gr.Markdown("## Why it matched")
                why_md = gr.Markdown("Click a result above to open its explanation.", elem_id="me-why-title")
                with gr.Row(visible=False, elem_id="me-why") as why_row:
                    with gr.Column(scale=5):
                        why_image = gr.Image(label="Where the matching tokens lie", type="pil", height=420,
                                             interactive=False, buttons=["fullscreen"], elem_id="me-overlay")
                        gr.Markdown("Where the content tokens behind the winning matches lie, stronger where "
                                    "the matching meta vectors attended more: a heat map for each concept seen "
                                    "in the photo (◆), outlined areas for colours (●, drawn in that colour), "
                                    "boxes around faces (☺, people words) and around words on pages and text "
                                    "read in images (✎). Dimmed parts "
                                    "played no role.", elem_classes="me-caption")
                        why_text = gr.HTML(label="What the model read")
                    with gr.Column(scale=6):
                        heatmap = gr.Plot(label="Similarity of every query vector with every result vector",
                                          elem_id="me-heatmap", show_label=False)
                        gr.Markdown("Each row is one query meta vector, each column one of the result's meta "
                                    "vectors. MaxSim keeps only the best cell of each row (★).",
                                    elem_classes="me-caption")
                        bars = gr.Plot(label="Contributions", elem_id="me-bars", show_label=False)
                with gr.Column(visible=False) as table_col:
                    gr.Markdown("### What each meta vector reads")
                    why_table = gr.HTML(elem_id="me-why-table")
                    more_btn = gr.Button("Search for more like this result", size="sm")

            # ------------------------------------------------------------------------------ collection
            with gr.Tab("Collection", id="collection"):
                gr.Markdown(_collection_intro(studio))
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Add photos, PDFs, text files or zip archives", file_count="multiple",
                                         file_types=sorted(_accepted_types()), height=200, elem_id="me-upload")
                        index_btn = gr.Button("Add to collection", variant="primary", elem_id="me-index")
                        report_md = gr.Markdown(elem_id="me-report")
                    with gr.Column(scale=1):
                        stats_md = gr.Markdown(elem_id="me-stats")
                items_df = gr.Dataframe(headers=["file", "kind", "page", "id"], datatype=["str", "str", "number", "str"],
                                        interactive=False, label="Your items", max_height=320, wrap=True,
                                        elem_id="me-items")
                with gr.Row():
                    remove_sel = gr.Dropdown(choices=[], multiselect=True, label="Files to remove", scale=4)
                    with gr.Column(scale=1, min_width=180):
                        remove_btn = gr.Button("Remove selected")
                        clear_btn = gr.Button("Clear my collection", variant="stop")

            # ------------------------------------------------------------------------------ scaling
            with gr.Tab("Scaling", id="scaling"):
                gr.Markdown("## Test-time scaling on your collection\nMetaEmbed trains nested budgets, so one index "
                            "serves all of them: pick a small budget for speed or a large one for precision, at "
                            "search time. This measures, for the current collection, what each trained budget "
                            "costs and how close its top results (top 10, or a third of a small collection) are "
                            "to the largest budget's.")
                with gr.Row():
                    scale_queries = gr.Textbox("\n".join(EXAMPLE_QUERIES), lines=6, label="Queries (one per line)",
                                               scale=3)
                    with gr.Column(scale=1):
                        scale_btn = gr.Button("Measure", variant="primary", elem_id="me-measure")
                        scale_samples = gr.Checkbox(value=True, label="Include the sample collection",
                                                    visible=studio.samples is not None)
                scale_md = gr.Markdown()
                with gr.Row():
                    size_plot = gr.Plot(show_label=False, elem_id="me-size")
                    lat_plot = gr.Plot(show_label=False, elem_id="me-latency")
                    agree_plot = gr.Plot(show_label=False, elem_id="me-agreement")

            # ------------------------------------------------------------------------------ how it works
            with gr.Tab("How it works", id="how"):
                teach = ui_teach.build_tab(studio, gpu)

            # ------------------------------------------------------------------------------ model
            with gr.Tab("Model", id="model"):
                model_md = gr.Markdown(_model_info(studio), elem_id="me-model")
                with gr.Row(equal_height=True):
                    model_src = gr.Textbox(label="Load another checkpoint", scale=4,
                                           placeholder="a local checkpoint folder, or a Hugging Face Hub id "
                                                       "(owner/name); empty = the bundled MetaEmbed-Mini",
                                           interactive=studio.allow_model_switch)
                    model_btn = gr.Button("Load", scale=1, interactive=studio.allow_model_switch)
                model_status = gr.Markdown(
                    "" if studio.allow_model_switch else "This is a shared deployment: the model is fixed for "
                    "everyone. Run the app on your own machine to load other checkpoints.")

        # API-only endpoints (gradio_client): documented in the README.
        with gr.Row(visible=False):
            api_query = gr.Textbox(label="query")
            api_rq = gr.Number(value=presets[-1][0], precision=0, label="r_q")
            api_rc = gr.Number(value=presets[-1][1], precision=0, label="r_c")
            api_k = gr.Number(value=10, precision=0, label="k")
            api_samples = gr.Checkbox(value=True, label="include_samples")
            # JSON as text: gradio_client (1.x/2.x, protocol sse_v3) takes any JSON object with a "path" string
            # for a file and tries to download it, so objects with a "path" key cannot travel as gr.JSON.
            api_results = gr.Textbox(label="results_json")
            api_files = gr.File(file_count="multiple", label="files")
            api_report = gr.Textbox(label="report_json")
            api_search_btn = gr.Button()
            api_index_btn = gr.Button()

        # ============================================================================ callbacks
        def status_line(request: gr.Request) -> str:
            return _status(studio, _session(request))

        @gpu
        def do_search(text, image, rq, rc, with_samples, request: gr.Request):
            session = _session(request)
            try:
                query = studio.encode_query(text, image)
            except ValueError as e:
                return mistake(str(e), len(rank_outs) + len(reset_outs))
            return _rank_outputs(query, int(rq), int(rc), with_samples, session) + (
                None, gr.update(value="Click a result above to open its explanation."), gr.update(visible=False),
                gr.update(visible=False))

        def _rank_outputs(query: QueryState, rq: int, rc: int, with_samples: bool, session: str | None):
            query = studio.ensure_current(query)
            t0 = time.perf_counter()
            hits = studio.search(query, session, rq, rc, k=RESULTS, include_samples=with_samples)
            ms = (time.perf_counter() - t0) * 1000
            return (query, hits, gallery_value(studio, hits, session), results_caption(query, hits, (rq, rc), ms))

        def on_preset(index, query, with_samples, request: gr.Request):
            rq, rc = preset_of(studio, index)
            head = (gr.update(value=rq), gr.update(value=rc), budget_readout(studio, rq, rc))
            if query is None:
                return head + (query, gr.skip(), gr.skip(), gr.skip())
            return head + _rank_outputs(query, rq, rc, with_samples, _session(request))

        def on_budget(rq, rc, query, with_samples, request: gr.Request):
            rq, rc = int(rq), int(rc)
            head = (budget_readout(studio, rq, rc),)
            if query is None:
                return head + (query, gr.skip(), gr.skip(), gr.skip())
            return head + _rank_outputs(query, rq, rc, with_samples, _session(request))

        def explain_outputs(coll_key: str, item_id: str, query: QueryState, rq, rc, session: str | None):
            rq, rc = studio.check_budget(rq, rc)
            query = studio.ensure_current(query)
            try:
                coll, item, c_vectors = studio.item(coll_key, item_id, session)
            except KeyError:
                return (gr.update(value="That item is no longer in the collection."), gr.update(visible=False),
                        None, None, None, "", gr.update(visible=False))
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
            title = (f"### “{item.title}”{where} for {query.label}\nScore **{ex.score:.3f}** at budget **({rq}, {rc})**"
                     f" — the sum of the best similarity of each of the {rq} query vectors. ")
            top = ui_explain.summary_units(ex)
            if top:
                title += "Mostly because of: " + ", ".join(f"{_kind_mark(k)}{lab} ({100 * s:.0f}%)" for lab, k, s in top)
            read = ui_explain.highlighted_text_html(ex)
            if read:
                read = "<p class='me-caption'>What the model read for this result, shaded by relevance:</p>" + read
            return (title, gr.update(visible=True), gr.update(value=image, visible=image is not None), heat, bar, read,
                    gr.update(visible=True)), ui_explain.match_table_html(ex)

        select_outputs = [selected_state, why_md, why_row, why_image, heatmap, bars, why_text, table_col, why_table]

        def select_handler(evt: gr.SelectData, hits, query, rq, rc, request: gr.Request):
            if not hits or evt.index is None or query is None:
                return (gr.skip(),) * len(select_outputs)
            hit = hits[int(evt.index)]
            main, table = explain_outputs(hit.collection, hit.id, query, rq, rc, _session(request))
            return ((hit.collection, hit.id),) + main + (table,)

        def refresh_handler(selected, query, rq, rc, request: gr.Request):
            if selected is None or query is None:
                return (gr.skip(),) * (len(select_outputs) - 1)
            main, table = explain_outputs(selected[0], selected[1], query, rq, rc, _session(request))
            return main + (table,)

        def more_like_this(selected, rq, rc, with_samples, request: gr.Request):
            if selected is None:
                return mistake("select a result first", 2 + len(rank_outs))
            session = _session(request)
            coll, item, _ = studio.item(selected[0], selected[1], session)
            try:
                source = studio.load_source_item(item)
            except FileNotFoundError as e:
                raise gr.Error(str(e)) from e
            image = source.image
            text = None if image is not None else (source.text or "")[:500]
            query = studio.encode_query(text, image)
            return (gr.update(value=text or ""), image) + _rank_outputs(query, int(rq), int(rc), with_samples,
                                                                         session)

        # ---- collection
        def collection_view(request: gr.Request):
            session = _session(request)
            coll = studio.user_collection(session, create=False)
            items = studio.items(coll) if coll is not None else []
            # The table shows the newest items first, capped so a large collection still loads quickly.
            rows = [[coll.display_path(it.path), _kind_name(it.kind), it.page, it.id]
                    for it in reversed(items[-MAX_TABLE_ROWS:])]
            files = sorted({coll.display_path(it.path).partition("!/")[0] for it in items}) if coll else []
            if len(files) > MAX_TABLE_ROWS:
                files = files[:MAX_TABLE_ROWS]
            stats = _stats_md(studio, coll)
            return rows, gr.update(choices=files, value=[]), stats, _status(studio, session)

        @gpu
        def do_index(files, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
            if not _paths(files):
                return mistake("choose one or more files to add first", 6)
            report = index_files(files, request, progress)
            return (_report_md(report), None) + collection_view(request)

        def index_files(files, request: gr.Request, progress=None) -> dict:
            paths = _paths(files)
            if not paths:
                raise gr.Error("choose one or more files to add first")
            coll = studio.user_collection(_session(request))
            if coll is None:
                raise gr.Error("no session: reload the page")

            def report_progress(fraction: float, what: str) -> None:
                if progress is not None:
                    progress(fraction, desc=what)

            report = studio.index_files(coll, paths, report_progress)
            _forget_uploads(paths)
            return report

        @gpu
        def api_index(files, request: gr.Request) -> str:
            return json.dumps(index_files(files, request), ensure_ascii=False)

        def do_remove(chosen, request: gr.Request):
            coll = studio.user_collection(_session(request), create=False)
            if coll is None or not chosen:
                return mistake("pick files to remove first", 5)
            try:
                removed = studio.remove(coll, chosen)
            except KeyError as e:
                raise gr.Error(str(e)) from e
            return (f"Removed {len(removed)} item(s).",) + collection_view(request)

        def do_clear(confirmed, request: gr.Request):
            if not confirmed:  # the visitor pressed Cancel in the confirmation dialog
                return (gr.skip(),) * 5
            coll = studio.user_collection(_session(request), create=False)
            n = studio.clear(coll) if coll is not None else 0
            return (f"Cleared your collection ({n} item(s) removed).",) + collection_view(request)

        # ---- scaling
        @gpu
        def do_scaling(text, with_samples, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
            queries = [q.strip() for q in (text or "").splitlines() if q.strip()][:20]
            if not queries:
                return mistake("write at least one query, one per line", 4)
            result = ui_teach.measure_scaling(studio, queries, _session(request), with_samples,
                                              lambda f, w: progress(f, desc=w))
            if result["items"] == 0:
                return mistake("the collection is empty: add files or include the sample collection", 4)
            ps = result["presets"]
            return (result["summary"],
                    plots.index_size_figure(ps, result["bytes"], result["items"]),
                    plots.latency_figure(ps, result["ms"], result["items"]),
                    plots.agreement_figure(ps, result["agreement"], result["k"], len(queries)))

        # ---- model
        def do_load_model(source, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
            try:
                new = studio.switch_model(source, lambda f, w: progress(f, desc=w))
            except PermissionError as e:
                raise gr.Error(str(e)) from e
            except (OSError, ValueError, RuntimeError) as e:
                return (f"**Could not load {source or 'the bundled model'}:** {e}", gr.skip(), gr.skip(), gr.skip(),
                        gr.skip())
            ps = new.presets
            return (f"Loaded **{new.source}**. Queries are re-encoded with it on the next search.", _model_info(studio),
                    gr.update(maximum=len(ps) - 1, value=len(ps) - 1, info=_preset_info(ps)),
                    gr.update(maximum=new.num_query_vectors, value=ps[-1][0]),
                    gr.update(maximum=new.num_candidate_vectors, value=ps[-1][1]))

        # ---- API
        @gpu
        def api_search(query, r_q, r_c, k, include_samples, request: gr.Request) -> str:
            # The parameter names are the API's keyword arguments (client.predict(query=..., r_q=...)).
            try:
                encoded = studio.encode_query(query, None)
                r_q, r_c = studio.check_budget(r_q, r_c)
                k = max(1, min(int(k or 10), 1000))
            except ValueError as e:
                raise gr.Error(str(e)) from e
            hits = studio.search(encoded, _session(request), r_q, r_c, k=k, include_samples=bool(include_samples))
            return json.dumps([h.to_json() for h in hits], ensure_ascii=False)

        def end_session(request: gr.Request):
            studio.end_session(_session(request))

        # ============================================================================ wiring
        private = dict(api_visibility="private")
        clear_ok = gr.Checkbox(value=False, visible=False)  # the confirmation dialog's answer
        demo.load(status_line, None, status, **private)
        # While the samples are indexed on first start, the status line follows their progress.
        timer = gr.Timer(2.0, active=studio.indexing_progress is not None)

        def tick(request: gr.Request):
            return _status(studio, _session(request)), gr.Timer(active=studio.indexing_progress is not None)

        timer.tick(tick, None, [status, timer], show_progress="hidden", **private)
        demo.load(collection_view, None, [items_df, remove_sel, stats_md, status], **private)
        rank_outs = [query_state, hits_state, gallery, results_md]
        reset_outs = [selected_state, why_md, why_row, table_col]
        search_inputs = [query_box, query_image, r_q, r_c, include_samples]
        for trigger in (search_btn.click, query_box.submit, examples.load_input_event.then):
            trigger(do_search, search_inputs, rank_outs + reset_outs, **private)
        preset.input(on_preset, [preset, query_state, include_samples], [r_q, r_c, readout] + rank_outs,
                     trigger_mode="always_last", show_progress="hidden", **private).then(
            refresh_handler, [selected_state, query_state, r_q, r_c], select_outputs[1:], show_progress="hidden",
            **private)
        for slider in (r_q, r_c):
            slider.input(on_budget, [r_q, r_c, query_state, include_samples], [readout] + rank_outs,
                         trigger_mode="always_last", show_progress="hidden", **private).then(
                refresh_handler, [selected_state, query_state, r_q, r_c], select_outputs[1:],
                show_progress="hidden", **private)
        include_samples.input(on_budget, [r_q, r_c, query_state, include_samples], [readout] + rank_outs,
                              show_progress="hidden", **private)
        gallery.select(gpu(select_handler), [hits_state, query_state, r_q, r_c], select_outputs, **private)
        more_btn.click(more_like_this, [selected_state, r_q, r_c, include_samples],
                       [query_box, query_image] + rank_outs, **private)

        # One progress display, on the report, not repeated over every output of the event.
        index_btn.click(do_index, [upload], [report_md, upload, items_df, remove_sel, stats_md, status],
                        show_progress_on=[report_md], **private)
        remove_btn.click(do_remove, [remove_sel], [report_md, items_df, remove_sel, stats_md, status], **private)
        clear_btn.click(do_clear, clear_ok, [report_md, items_df, remove_sel, stats_md, status],
                        js="(ok) => confirm('Remove every item from your collection?')", **private)
        scale_btn.click(do_scaling, [scale_queries, scale_samples], [scale_md, size_plot, lat_plot, agree_plot],
                        **private)
        model_btn.click(do_load_model, [model_src], [model_status, model_md, preset, r_q, r_c], **private).then(
            status_line, None, status, **private)
        ui_teach.wire_tab(teach, studio, gpu)

        api_search_btn.click(api_search, [api_query, api_rq, api_rc, api_k, api_samples], api_results,
                             api_name="search", api_description="Search your collection and the samples: query "
                             "text, budget r_q and r_c, k results -> JSON text of a list of {rank, id, path, page, "
                             "score, collection, kind} (use json.loads)")
        api_index_btn.click(api_index, [api_files], api_report, api_name="index",
                            api_description="Add files (photos, PDFs, text, zip) to your collection -> JSON text "
                            "of {indexed: [{id, path, page, kind}], skipped_duplicates, replaced, errors: [{path, error}], "
                            "notes} (use json.loads)")
        demo.unload(end_session)
    return demo


# ------------------------------------------------------------------------------------------------ helpers


def _preset_info(presets: list[tuple[int, int]]) -> str:
    steps = " → ".join(f"({q}, {c})" for q, c in presets)
    return f"Left: fast and small. Right: precise. Trained budgets (r_q, r_c): {steps}"


def _accepted_types() -> set[str]:
    from app.ingest import SUPPORTED_EXTENSIONS

    return set(SUPPORTED_EXTENSIONS)


def _paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    return [str(getattr(f, "name", f)) for f in files]


def _forget_uploads(paths: list[str]) -> None:
    """Delete Gradio's temporary copies once the files live in the collection's own folder."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    for p in paths:
        path = Path(p).resolve()
        if root in path.parents and path.is_file():
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # the per-upload hash folder, if now empty
            except OSError:
                pass


def _vector_labels(att: np.ndarray | None, units: list, n: int) -> list[str]:
    """For hover text: the content unit each meta vector attends to most."""
    if att is None or not units:
        return [""] * n
    keep = [k for k, u in enumerate(units) if ui_explain.meaningful(u)]
    if not keep:
        return [""] * n
    return [ui_explain.short_label(units[keep[int(np.argmax(att[i][keep]))]]) if i < len(att) else ""
            for i in range(n)]


def _kind_mark(kind: str) -> str:
    return {"concept": "◆ ", "people": "☺ ", "colour": "● ", "ocr": "✎ "}.get(kind, "")


def _kind_name(kind: str) -> str:
    return {"image": "photo", "pdf_page": "PDF page", "text": "text passage"}.get(kind, kind)


def _status(studio: Studio, session: str | None) -> str:
    engine = studio.engine
    parts = [f"Model: **{engine.config.name}** ({engine.source}, on {engine.model.device.type})"]
    if studio.samples is not None:
        parts.append(f"sample collection: {studio.stats(studio.samples)['items']} items")
    coll = studio.user_collection(session, create=False)
    n = studio.stats(coll)["items"] if coll is not None else 0
    parts.append(f"{'your private' if studio.private_sessions else 'your'} collection: {n} items")
    if studio.indexing_progress is not None:
        fraction, what = studio.indexing_progress
        parts.append(f"indexing in the background ({100 * fraction:.0f}%, {what})")
    return " · ".join(parts)


def _collection_intro(studio: Studio) -> str:
    if studio.private_sessions:
        lim = studio.limits
        from app.humanize import human_bytes

        caps = []
        if lim.max_files:
            caps.append(f"up to {lim.max_files} files per upload")
        if lim.max_file_bytes:
            caps.append(f"{human_bytes(lim.max_file_bytes)} per file")
        if lim.max_session_items:
            caps.append(f"{lim.max_session_items} items in all")
        hours = studio.sessions.ttl_s / 3600 if studio.sessions is not None else 2
        limits = ("Limits on this shared server: " + ", ".join(caps) + ".") if caps else ""
        return ("## Your private collection\nFiles you add here are visible to you only, in this browser tab, and "
                f"are deleted when you close it (or after {hours:g} idle hour{'s' if hours != 1 else ''}). "
                + limits)
    return (f"## Your collection\nFiles you add are copied to `{studio.local.files_dir}` and indexed once; "
            "every budget is then served from the same index.")


def _stats_md(studio: Studio, coll) -> str:
    stats = studio.stats(coll)
    if not stats["items"]:
        return "### Statistics\nYour collection is empty."
    kinds = ", ".join(f"{n} {_kind_name(k)}{'s' if n != 1 else ''}" for k, n in sorted(stats["kinds"].items()))
    rows = "\n".join(f"| {b['budget']} | {b['vectors']:,} | {b['size']} |" for b in stats["budgets"])
    return (f"### Statistics\n**{stats['items']} items** from {stats['files']} file(s): {kinds}. On disk: "
            f"{stats['on_disk']}.\n\n| budget (r_q, r_c) | vectors read per query | bytes read per query |\n"
            f"|---|---|---|\n{rows}\n\nOne index stores all {studio.engine.num_candidate_vectors} vectors per item; "
            "a budget reads only the first r_c of them.")


def _report_md(report: dict) -> str:
    n = len(report["indexed"])
    lines = [f"**Added {n} item{'s' if n != 1 else ''}.**"]
    if report["skipped_duplicates"]:
        lines.append(f"Skipped {len(report['skipped_duplicates'])} duplicate(s) already in the collection.")
    if report.get("replaced"):
        lines.append(f"Replaced the older version of {len(report['replaced'])} edited file(s).")
    if report["errors"]:
        lines.append(f"**{len(report['errors'])} file(s) could not be added:**")
        lines += [f"- {e['error']}" for e in report["errors"]]
    for note in report.get("notes", []):
        lines.append(f"- note: {note['note']}")
    return "\n".join(lines)


def mistake(message: str, outputs: int) -> tuple:
    """A user mistake (nothing typed, nothing chosen): one calm notice, and every output stays as it was.
    Raising gr.Error instead marks every output of the event as failed (red badges over the stats and the
    tables) and logs the exception on the server."""
    gr.Warning(message)
    return (gr.skip(),) * outputs


def _model_info(studio: Studio) -> str:
    d = studio.engine.describe()
    presets = ", ".join(f"({q}, {c})" for q, c in d["presets"])
    return (f"## Model\n| setting | value |\n|---|---|\n| name | **{d['name']}** |\n| loaded from | {d['source']} |\n"
            f"| checkpoint id | `{d['checkpoint_id']}` |\n| backbone | {d['backbone']} |\n"
            f"| images read by | {d['front_end']} |\n| query / candidate vectors | {d['query_vectors']} / "
            f"{d['candidate_vectors']} of dimension {d['dim']} |\n| trained budgets | {presets} |\n"
            f"| device | {d['device']} |\n\nA checkpoint is a folder with `metaembed_config.json` and "
            "`metaembed.safetensors` (start the app with `--checkpoint` or `METAEMBED_CHECKPOINT` to choose one). "
            "Indexes are kept per checkpoint, so switching models never mixes vectors: the sample collection and "
            "your files are indexed again for the new model." + _quality_info(studio))


def _quality_info(studio: Studio) -> str:
    """The checkpoint's own quality-vs-budget table (its quality.json, written from `python -m app.cli eval`)."""
    from app.evaluation import budget_table, load_quality

    reports = load_quality(getattr(studio.engine.model, "checkpoint_path", None), studio.engine.checkpoint_id)
    if not reports:
        return ""
    return ("\n\n### Quality against budget\nMRR (mean reciprocal rank of the first relevant result) of this "
            "checkpoint at each trained budget, measured with `python -m app.cli eval` on its evaluation splits, "
            "beside one mean-pooled vector of the base model over the same content:\n\n" + budget_table(reports))
