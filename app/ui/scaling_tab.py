"""The Scaling tab: what each trained budget costs and how close its results are to the largest budget's."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import gradio as gr
import numpy as np

from app.evaluation import is_sample_split, split_title
from app.humanize import files_of, human_bytes, plural
from app.search import rank
from app.service import Studio
from app.ui import plots
from app.ui.common import PRIVATE, gpu, mistake, session_of
from app.ui.search_tab import EXAMPLE_QUERIES


def build(studio: Studio) -> SimpleNamespace:
    m = SimpleNamespace()
    gr.Markdown("## Test-time scaling on your collection\nMetaEmbed trains nested budgets, so one index "
                "serves all of them: pick a small budget for speed or a large one for finer matching, at "
                "search time. Whether finer matching ranks better depends on the model and the content: the "
                "quality chart shows it for the loaded model on judged queries. This measures, for the current "
                "collection, what each trained budget costs and how close its top results (top 10, or a third "
                "of a small collection) are to the largest budget's.")
    with gr.Row():
        m.queries = gr.Textbox("\n".join(EXAMPLE_QUERIES), lines=6, label="Queries (one per line)", scale=3)
        with gr.Column(scale=1):
            m.button = gr.Button("Measure", variant="primary", elem_id="me-measure")
            m.samples = gr.Checkbox(value=True, label="Include the sample collection",
                                    visible=studio.samples is not None, elem_id="me-scaling-samples")
    m.summary = gr.Markdown("Press **Measure** to time each trained budget on this collection: its index size, "
                            "scoring time per query and agreement with the largest budget appear here.")
    # Quality against budget, measured once per checkpoint on judged queries (its quality.json, from
    # `python -m app.cli eval`): the other half of the paper's trade-off, beside cost measured live below.
    quality = quality_plot(studio)
    m.quality = gr.Plot(quality, show_label=False, elem_id="me-quality", visible=quality is not None)
    # Drawn by Measure: until then three empty chart frames stood below the quality chart, looking broken.
    # (Not measured on opening: on a shared Space every visitor would cost a run.)
    with gr.Row():
        m.size_plot = gr.Plot(show_label=False, elem_id="me-size", visible=False)
        m.latency_plot = gr.Plot(show_label=False, elem_id="me-latency", visible=False)
        m.agreement_plot = gr.Plot(show_label=False, elem_id="me-agreement", visible=False)
    return m


def wire(studio: Studio, m: SimpleNamespace) -> None:
    outputs = [m.summary, m.size_plot, m.latency_plot, m.agreement_plot]

    @gpu
    def do_scaling(text, with_samples, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        queries = [q.strip() for q in (text or "").splitlines() if q.strip()][:20]
        if not queries:
            return mistake("write at least one query, one per line", len(outputs))
        result = measure_scaling(studio, queries, session_of(request), with_samples,
                                 lambda f, w: progress(f, desc=w))
        if result["items"] == 0:
            return mistake("the collection is empty: add files or include the sample collection", len(outputs))
        ps = result["presets"]
        figures = (plots.index_size_figure(ps, result["bytes"], result["items"]),
                   plots.latency_figure(ps, result["ms"], result["items"]),
                   plots.agreement_figure(ps, result["agreement"], result["k"], len(queries)))
        return (result["summary"], *(gr.update(value=f, visible=True) for f in figures))

    m.button.click(do_scaling, [m.queries, m.samples], outputs, **PRIVATE)


def measure_scaling(studio: Studio, queries: list[str], session: str | None, include_samples: bool,
                    progress: Callable[[float, str], None], k: int | None = None, repeats: int = 3) -> dict:
    """Per trained budget: bytes the index reads, median scoring time per query, top-k overlap with the largest.

    k defaults to 10, or to a third of a small collection: a top 10 of 12 items would agree at every budget.
    """
    engine = studio.engine
    presets = engine.presets
    colls = studio.collections(session, include_samples)
    sources = [(c.key, idx) for c in colls if (idx := c.index(engine, create=False)) is not None]
    items = sum(len(idx) for _, idx in sources)
    k = k or max(1, min(10, items // 3))
    out = {"presets": presets, "items": items, "k": k, "bytes": [], "ms": [], "agreement": [], "summary": ""}
    if items == 0:
        return out
    progress(0.05, f"encoding {len(queries)} queries")
    vectors = engine.encode(queries, "query")
    tops: dict[tuple[int, int], list[set]] = {}
    for n, (r_q, r_c) in enumerate(presets):
        progress(0.1 + 0.85 * n / len(presets), f"scoring at budget ({r_q}, {r_c})")
        times, sets = [], []
        for qv in vectors:
            best = None
            for _ in range(repeats):
                t0 = time.perf_counter()
                hits = rank(sources, qv, (r_q, r_c), k)
                elapsed = time.perf_counter() - t0
                best = elapsed if best is None else min(best, elapsed)
            times.append(best * 1000)
            sets.append({(h.collection, h.id) for h in hits})
        out["ms"].append(statistics.median(times))
        out["bytes"].append(items * r_c * engine.dim * 2)
        tops[(r_q, r_c)] = sets
    ref = tops[presets[-1]]
    for p in presets:
        overlap = [len(a & b) / max(1, len(b)) for a, b in zip(tops[p], ref)]
        out["agreement"].append(float(np.mean(overlap)))
    rows = "\n".join(f"| ({q}, {c}) | {human_bytes(b)} | {ms:.2f} ms | {100 * a:.0f}% |"
                     for (q, c), b, ms, a in zip(presets, out["bytes"], out["ms"], out["agreement"]))
    small = f" The collection is small, so agreement is measured on the top {k} (a third of it)." if k < 10 else ""
    # The files too, counted as the status line and the Collection tab count them: "50 searchable items" beside
    # "13 files" and "15 files" could not be checked against either.
    files = files_of(it for _, idx in sources for it in idx.items())
    out["summary"] = (f"Measured on **{plural(items, 'searchable item')}** of {files} (a photo, a PDF page or a "
                      f"passage count one each) with {plural(len(queries), 'query', 'queries')} (exact MaxSim "
                      f"over every item, best of {repeats} runs, median over queries, on "
                      f"{str(engine.model.device)}).{small}\n\n"
                      f"| budget | bytes read per query | time per query | top-{k} shared with the largest budget |\n"
                      f"|---|---|---|---|\n{rows}")
    if set(queries) <= set(EXAMPLE_QUERIES) and not (include_samples and studio.samples is not None):
        # The default queries describe the samples: over other files their top results are near-ties that any
        # budget reorders, and a class was shown "32-40 % agreement" as if small budgets were poor.
        out["summary"] += ("\n\nThese are the sample collection's example queries, measured without it: over "
                           "files they do not describe, their top results are near-ties that any budget orders "
                           "differently, so agreement reads low. Write queries about your own files above.")
    progress(1.0, "done")
    return out


def quality_lines(studio: Studio) -> list[plots.QualityLine]:
    """MRR per preset of each judged split and kind of query of the loaded checkpoint, with its baseline: the
    evaluation splits (dev, held-out) first, then the sample collection's small set, marked as an illustration."""
    engine = studio.engine
    reports = engine.quality
    out: list[plots.QualityLine] = []
    for split, report in sorted(reports.items(), key=lambda kv: is_sample_split(kv[0])):
        sample = is_sample_split(split)
        title = split_title(split, report) if sample else f"{split_title(split)} ({report['queries']['all']} queries)"
        for kind, table in report["results"].items():
            if kind == "all" or not table:
                continue
            out.append(plots.QualityLine(title, f"{kind}s", [table[f"{q},{c}"]["mrr"] for q, c in engine.presets],
                                         table["baseline"]["mrr"], illustrative=sample))
    return out


def quality_plot(studio: Studio):
    lines = quality_lines(studio)
    if not lines:
        return None
    return plots.quality_figure(studio.engine.presets, lines, "Quality against budget",
                                f"{studio.engine.config.name} on judged queries")
