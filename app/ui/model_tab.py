"""The Model tab: what is loaded, its quality against budget, and loading another checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.evaluation import budget_table, is_sample_split, split_title
from app.service import Studio
from app.ui.common import PRIVATE, preset_info, session_of, status_line
from app.ui.scaling_tab import quality_plot


def build(studio: Studio) -> SimpleNamespace:
    m = SimpleNamespace()
    m.info = gr.Markdown(model_info(studio), elem_id="me-model")
    with gr.Row(equal_height=True):
        m.source = gr.Textbox(label="Load another checkpoint", scale=4,
                              placeholder="a local checkpoint folder, or a Hugging Face Hub id "
                                          "(owner/name); empty = the bundled MetaEmbed-Mini",
                              interactive=studio.allow_model_switch)
        m.button = gr.Button("Load", scale=1, interactive=studio.allow_model_switch)
    m.status = gr.Markdown(
        "" if studio.allow_model_switch else "This is a shared deployment: the model is fixed for "
        "everyone. Run the app on your own machine to load other checkpoints.")
    return m


def wire(studio: Studio, m: SimpleNamespace, search: SimpleNamespace, scaling: SimpleNamespace,
         status: gr.Markdown, started) -> None:
    """Loading a checkpoint resets the Search tab's budget sliders to the new model's presets and redraws the
    views that describe the model; every page load redraws them too, since the page built at start-up
    still describes the model loaded then."""
    views = [m.info, scaling.quality, search.preset, search.r_q, search.r_c]

    def model_views() -> tuple:
        ps = studio.engine.presets
        quality = quality_plot(studio)
        return (model_info(studio), gr.update(value=quality, visible=quality is not None),
                gr.update(maximum=len(ps) - 1, value=len(ps) - 1, info=preset_info(ps)),
                gr.update(maximum=studio.engine.num_query_vectors, value=ps[-1][0]),
                gr.update(maximum=studio.engine.num_candidate_vectors, value=ps[-1][1]))

    def do_load_model(source, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        try:
            new = studio.switch_model(source, lambda f, w: progress(f, desc=w))
        except PermissionError as e:
            raise gr.Error(str(e)) from e
        except (OSError, ValueError, RuntimeError) as e:
            return (f"**Could not load {source or 'the bundled model'}:** {e}",) + (gr.skip(),) * len(views)
        return (f"Loaded **{new.source}**. Queries are re-encoded with it on the next search.",) + model_views()

    def refresh_status(request: gr.Request) -> str:
        return status_line(studio, session_of(request))

    m.button.click(do_load_model, [m.source], [m.status] + views, **PRIVATE).then(refresh_status, None, status,
                                                                                   **PRIVATE)
    if studio.allow_model_switch:  # otherwise the model never changes
        started.then(model_views, None, views, **PRIVATE)


def model_info(studio: Studio) -> str:
    d = studio.engine.describe()
    presets = ", ".join(f"({q}, {c})" for q, c in d["presets"])
    return (f"## Model\n| setting | value |\n|---|---|\n| name | **{d['name']}** |\n| loaded from | {d['source']} |\n"
            f"| checkpoint id | `{d['checkpoint_id']}` |\n| backbone | {d['backbone']} |\n"
            f"| images read by | {d['front_end']} |\n| query / candidate vectors | {d['query_vectors']} / "
            f"{d['candidate_vectors']} of dimension {d['dim']} |\n| trained budgets | {presets} |\n"
            f"| device | {d['device']} |\n\nA checkpoint is a folder with `metaembed_config.json` and "
            "`metaembed.safetensors` (start the app with `--checkpoint` or `METAEMBED_CHECKPOINT` to choose one). "
            "Indexes are kept per checkpoint, so switching models never mixes vectors: the sample collection and "
            "your files are indexed again for the new model." + quality_info(studio))


def quality_info(studio: Studio) -> str:
    """The checkpoint's own quality-vs-budget tables (its quality.json, written by `python -m app.cli eval
    --record`): the evaluation splits, then the sample collection's small set in a table of its own."""
    reports = studio.engine.quality
    if not reports:
        return ""
    splits = {name: r for name, r in reports.items() if not is_sample_split(name)}
    samples = {name: r for name, r in reports.items() if is_sample_split(name)}
    out = ("\n\n### Quality against budget\nMRR (mean reciprocal rank of the first relevant result) of this "
           "checkpoint at each trained budget, measured with `python -m app.cli eval`, beside one mean-pooled "
           "vector of the base model over the same content")
    out += " — on its evaluation splits:\n\n" + scrolling(budget_table(splits)) if splits else "."
    for name, report in samples.items():
        title = split_title(name, report)
        out += (f"\n\n**{title[:1].upper() + title[1:]}**: the photos and pages this app opens with "
                f"({report['units']['photo']} photos, {report['units']['document']} pages), too few to compare "
                "checkpoints by" + ("; the evaluation splits above are what counts" if splits else "") + ".\n\n"
                + scrolling(budget_table({name: report})))
    return out


def scrolling(table: str) -> str:
    """A Markdown table in a box that scrolls sideways on its own where the screen is narrower than the table
    (a phone): the whole page scrolled sideways with it, 460 px of table in a 326 px column."""
    return f"<div class='me-scroll'>\n\n{table}\n\n</div>"
