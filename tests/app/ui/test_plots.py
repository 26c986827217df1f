"""app.ui.plots' figure layouts, checked on their numbers (no browser): the heatmap's titles and legend, the
Scaling tab's titles on a phone and its size chart's units."""

from __future__ import annotations

import numpy as np
import pytest

from app.ui import plots

PRESETS = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
CHAR_PX = 0.62  # a generous width of one character, as a share of the font size (measured ~0.6 in Chromium)
PHONE_PLOT_PX = 320  # a chart's width on a 390 px screen, without Gradio's padding and borders (measured 324)


@pytest.mark.parametrize("budget", PRESETS + [(3, 5), (16, 1)])
def test_heatmap_titles_and_legend_never_overlap(budget):
    """At (1, 1) and (2, 4) the y title ran into the chart's title and the legend sat on the x title."""
    r_q, r_c = budget
    fig = plots.similarity_heatmap(np.random.default_rng(0).random(budget), np.zeros(r_q, dtype=int), budget)
    layout = fig.layout
    plot_px = layout.height - layout.margin.t - layout.margin.b
    # The y title (rotated) fits the plot's height, so it reaches neither the chart's title nor the x axis.
    y_title_px = len(layout.yaxis.title.text) * CHAR_PX * plots.FONT["size"]
    assert y_title_px <= plot_px, (y_title_px, plot_px)
    # The legend hangs from a fixed point under the plot, below the x tick labels (~16 px) and title (~20 px
    # after a standoff), and its row (~24 px) ends inside the bottom margin.
    legend = layout.legend
    assert legend.yanchor == "top" and legend.orientation == "h"
    drop_px = -legend.y * plot_px
    assert drop_px >= 55, drop_px
    assert drop_px + 24 <= layout.margin.b, (drop_px, layout.margin.b)


@pytest.mark.parametrize("r_q", [1, 2])
def test_one_query_vector_reads_in_the_singular(r_q):
    from app.ui.explain import Explanation, match_table_html

    contributions = np.full(r_q, 0.4, dtype=np.float32)
    bars = plots.contribution_bars(contributions, np.zeros(r_q, dtype=int), float(contributions.sum()))
    ex = Explanation(budget=(r_q, 1), sim=np.full((r_q, 1), 0.4), argmax=np.zeros(r_q, dtype=int),
                     contributions=contributions, score=float(contributions.sum()))
    note = match_table_html(ex)
    if r_q == 1:
        assert bars.layout.title.text.endswith("= this one bar")
        assert "The one query vector is" in note and "1 query vectors" not in note
    else:
        assert bars.layout.title.text == "MaxSim 0.800 = sum of these 2 bars"
        assert bars.layout.title.subtitle.text == "the score shown, 0.40, is MaxSim / 2"
        assert "Each of the 2 query vectors is" in note


def _title_lines_fit_a_phone(fig) -> None:
    title = fig.layout.title
    for text, size in ((title.text, title.font.size), (title.subtitle.text, title.subtitle.font.size)):
        for line in (text or "").split("<br>"):
            assert len(line) * CHAR_PX * size <= PHONE_PLOT_PX, (line, len(line) * CHAR_PX * size)


def test_the_scaling_charts_titles_fit_a_phone():
    """Issue 17: at 390 px "Scoring time per query over 4 items (measured now)" was cut off (Plotly does not
    wrap titles); the counts, at their largest, go on a smaller line of their own."""
    items, k, queries = 1_234_567, 10, 20
    figures = [plots.index_size_figure(PRESETS, [items * c * 768 for _, c in PRESETS], items),
               plots.latency_figure(PRESETS, [1.5] * len(PRESETS), items),
               plots.agreement_figure(PRESETS, [0.9] * len(PRESETS), k, queries)]
    for fig in figures:
        _title_lines_fit_a_phone(fig)
        assert fig.layout.title.subtitle.text  # what it was measured on is still said
    assert "1,234,567 items" in figures[0].layout.title.subtitle.text
    assert "top-10" in figures[2].layout.title.subtitle.text and "20 queries" in figures[2].layout.title.subtitle.text
    # The subtitle's room is added to the figure, so the plot keeps its size.
    plain = plots.quality_figure(PRESETS, [plots.QualityLine("dev", "photos", [0.5] * len(PRESETS))], "Quality")
    sub = plots.quality_figure(PRESETS, [plots.QualityLine("dev", "photos", [0.5] * len(PRESETS))], "Quality",
                               "metaembed-mini on judged queries")
    assert sub.layout.height - sub.layout.margin.t == plain.layout.height - plain.layout.margin.t
    assert sub.layout.margin.b == plain.layout.margin.b


def test_the_quality_chart_title_fits_a_phone():
    from app.evaluation import load_quality
    from app.ui.scaling_tab import quality_plot
    from model.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id_of_folder
    from tests.app.ui.test_quality_views import studio_with

    fig = quality_plot(studio_with(load_quality(DEFAULT_CHECKPOINT, checkpoint_id_of_folder(DEFAULT_CHECKPOINT))))
    _title_lines_fit_a_phone(fig)
    assert "judged queries" in fig.layout.title.subtitle.text
    # The y-axis title is short enough to stay beside a phone's plot; the dotted baselines are named in the legend.
    assert fig.layout.yaxis.title.text == "MRR"
    dotted = [t for t in fig.data if t.legendgroup == "baseline"]
    assert len(dotted) == 1 and dotted[0].line.dash == "dot" and dotted[0].name == "one mean-pooled vector"
    assert any(t.line.dash == "dot" and t.showlegend is False for t in fig.data)  # the baselines themselves


def test_the_size_chart_labels_its_bars_in_its_axis_unit():
    """Issue 17: the axis said MiB while the bars read "48 KB" and "1.5 MB"."""
    sizes = [300 * c * 384 * 2 for _, c in PRESETS]  # 225 KB at (1, 1) to 14 MB at (16, 64)
    fig = plots.index_size_figure(PRESETS, sizes, 300)
    bar = fig.data[0]
    unit = fig.layout.yaxis.title.text.rsplit("(", 1)[1].rstrip(")")
    assert {label.split()[1] for label in bar.text} == {unit}
    # Each label is its bar's height, in that unit.
    for label, height in zip(bar.text, bar.y):
        assert float(label.split()[0]) == pytest.approx(height, rel=0.05)


def test_every_chart_names_the_vectors_q1_and_c1():
    """A reviewer found four names for the same 16 vectors (1…16, q1…q16, M1…M16, v1…v16)."""
    fig = plots.similarity_heatmap(np.zeros((4, 8)), np.zeros(4, dtype=int), (4, 8))
    assert list(fig.layout.yaxis.ticktext) == ["q1", "q2", "q3", "q4"] and fig.layout.xaxis.ticktext[0] == "c1"
    assert list(plots.vectors_figure(np.eye(4, 8), [(1, 1), (2, 4)], "query").data[0].y) == ["q1", "q2", "q3", "q4"]
    attention = plots.attention_figure(np.full((2, 3), 1 / 3), ["a", "b", "c"], "attention")
    assert list(attention.data[0].y) == ["q1", "q2"]


def test_step_four_works_maxsim_out_by_hand_and_names_the_vectors_as_the_search_does():
    """A teacher's review: step 4 drew the budget blocks but no row maxima or sum, with axes numbered 1 … 64
    where the search's explanation says q1 … and c1 …."""
    from app.ui.how_it_works import _worked_budget, worked_maxsim

    presets = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
    assert _worked_budget(presets) == (4, 8) and _worked_budget([(1, 1), (2, 4)]) == (2, 4)
    sim = np.zeros((16, 64))
    sim[0, 2], sim[1, 2], sim[2, 7], sim[3, 0] = 0.7, 0.6, 0.5, 0.4
    sim[3, 20] = 0.9  # outside the (4, 8) block: not counted there
    text = worked_maxsim(sim, (4, 8))
    assert "q1 → c3 0.70, q2 → c3 0.60, q3 → c8 0.50, q4 → c1 0.40" in text
    assert "0.70 + 0.60 + 0.50 + 0.40 = **2.20**" in text and "MaxSim / 4 = **0.55**" in text
    assert "rounded" not in text
    # Rounded terms that add up to another number than the exact sum: no false equation on the board.
    sim[0, 2], sim[1, 2], sim[2, 7], sim[3, 0] = 0.574, 0.574, 0.604, 0.474  # 0.57 + 0.57 + 0.60 + 0.47 = 2.21
    text = worked_maxsim(sim, (4, 8))
    assert "0.57 + 0.57 + 0.60 + 0.47 ≈ **2.23**" in text and "terms are rounded" in text
    fig = plots.prefix_matrix_figure(sim, presets)
    assert list(fig.layout.xaxis.ticktext) == ["c1", "c4", "c8", "c16", "c64"]
    assert list(fig.layout.yaxis.ticktext) == ["q1", "q2", "q4", "q8", "q16"]
    # Labels hang below their block's corner, but the whole matrix's sits inside it, off the "c64" tick label.
    anchors = {a.text: (a.xanchor, a.yanchor) for a in fig.layout.annotations}
    assert anchors["(4, 8)"] == ("left", "top") and anchors["(16, 64)"] == ("right", "bottom")
