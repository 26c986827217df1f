"""Figures (plotly) and image overlays (PIL) for the app. Pure functions of numbers: no model, no Gradio.

Colours are shared across figures so the same thing always looks the same: similarities use one
sequential scale, the winning match of each query vector is an orange star, budgets are blue.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from app.humanize import byte_unit, human_bytes, plural, score_text, shortened

SIM_SCALE = "Viridis"
ACCENT = "#f97316"  # orange: winning matches, highlights
BUDGET = "#2563eb"  # blue: budgets
MUTED = "#94a3b8"
FONT = dict(family="Source Sans Pro, DejaVu Sans, Arial, sans-serif", size=13, color="#1f2937")
MIN_SHARE = 0.1  # marks weaker than this share of the strongest one are not drawn (less clutter)
_HEAT = np.array([[255, 255, 255], [253, 224, 71], [249, 115, 22], [220, 38, 38]], dtype=np.float32)


# Plotly does not wrap titles: a title longer than a phone's plot (about 320 px of a 390 px screen) was cut off
# (issue 17). Titles stay short; what a chart was measured on goes in a smaller subtitle under the title, which
# adds SUBTITLE_PX to the top margin and to the figure, so the plot keeps its size (and a legend its place).
TITLE_SIZE = 15
SUBTITLE_SIZE = 12
SUBTITLE_PX = 16


def _layout(fig: go.Figure, title: str, height: int = 340, subtitle: str | None = None, **kw) -> go.Figure:
    margin = kw.pop("margin", dict(l=60, r=20, t=56, b=50))
    head = dict(text=title, x=0.0, xanchor="left", font=dict(size=TITLE_SIZE))
    if subtitle:
        head["subtitle"] = dict(text=subtitle, font=dict(size=SUBTITLE_SIZE, color="#64748b"))
        margin = dict(margin, t=margin["t"] + SUBTITLE_PX)
        height += SUBTITLE_PX
    fig.update_layout(title=head, font=FONT, height=height, margin=margin, paper_bgcolor="white",
                      plot_bgcolor="white", **kw)
    return fig


def chart_text(text: str, limit: int = 40) -> str:
    """A visitor's words as a chart's title or subtitle may show them: on one line, at most `limit` characters
    (then "…"; Plotly does not wrap, and a long query ran off a phone's chart), with "<" and "&" escaped (Plotly
    reads a subset of HTML: "<b>" turned bold)."""
    return html.escape(shortened(text, limit), quote=False)


def empty_figure(message: str, height: int = 280) -> go.Figure:
    """A blank figure that says what to do to fill it."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#64748b"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height=height)


# ------------------------------------------------------------------------------------------ why it matched

# The similarity heatmap's frame, in pixels: the plot is at least 320 - 56 - 100 = 164 px high, room for its
# y title (about 160 px at 13 px); the legend starts 62 px under the plot, below the x tick labels and title
# (about 50 px), and its one row (about 22 px) ends inside the 100 px bottom margin.
HEATMAP_MARGIN = dict(l=60, r=20, t=56, b=100)
HEATMAP_MIN_HEIGHT = 320
HEATMAP_LEGEND_DROP = 62


def similarity_heatmap(sim: np.ndarray, argmax: np.ndarray, budget: tuple[int, int],
                       q_labels: Sequence[str] | None = None, c_labels: Sequence[str] | None = None) -> go.Figure:
    """Query meta vectors (rows) x candidate meta vectors (columns), each row's maximum starred."""
    sim = np.asarray(sim, dtype=np.float32)
    r_q, r_c = sim.shape
    xs = list(range(1, r_c + 1))
    ys = list(range(1, r_q + 1))
    q_labels = list(q_labels) if q_labels is not None else [""] * r_q
    c_labels = list(c_labels) if c_labels is not None else [""] * r_c
    # One name per vector everywhere in the app: q1 … q16 for the query's, c1 … c64 for a result's.
    hover = [[f"query vector q{i + 1}{_paren(q_labels[i])}<br>result vector c{j + 1}{_paren(c_labels[j])}"
              f"<br>similarity {sim[i, j]:.3f}" for j in range(r_c)] for i in range(r_q)]
    fig = go.Figure(go.Heatmap(
        z=sim, x=xs, y=ys, colorscale=SIM_SCALE, hoverinfo="text", text=hover, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="cosine", side="top"), thickness=10),
    ))
    best = np.asarray(argmax, dtype=int)
    fig.add_trace(go.Scatter(
        x=[int(j) + 1 for j in best], y=ys, mode="markers", name="best match of each row",
        marker=dict(symbol="star", size=13 if r_c <= 16 else 10, color=ACCENT, line=dict(color="white", width=1)),
        hovertemplate="query vector q%{y} → best: result vector c%{x}<extra></extra>",
    ))
    # Ticks every 1, 4 or 8 columns, upright: 64 rotated labels collided on a phone (issue 17.10).
    x_ticks = list(range(1, r_c + 1, 1 if r_c <= 16 else 4 if r_c <= 32 else 8))
    fig.update_xaxes(title_text=f"result's meta vectors (first r_c = {r_c})", tickmode="array", tickvals=x_ticks,
                     ticktext=[f"c{j}" for j in x_ticks], tickangle=0,
                     range=[0.5, r_c + 0.5], showgrid=False, zeroline=False)
    # The y title is short enough for the smallest plot (r_q is in the chart's title): "query meta vectors
    # (first r_q = 1)" ran past a one-row plot into the title and was cut off.
    y_ticks = list(range(1, r_q + 1, 1 if r_q <= 16 else 2))
    fig.update_yaxes(title_text="query meta vectors", range=[r_q + 0.5, 0.5], tickmode="array", tickvals=y_ticks,
                     ticktext=[f"q{i}" for i in y_ticks], showgrid=False, zeroline=False)
    # The legend hangs a fixed distance under the plot, in the bottom margin, below the x-axis title: a
    # fraction of the plot's height (y=-0.22) put it on that title when a small budget made the plot short.
    height = max(HEATMAP_MIN_HEIGHT, min(520, 166 + 22 * r_q))
    plot = height - HEATMAP_MARGIN["t"] - HEATMAP_MARGIN["b"]
    return _layout(fig, f"Query × result vectors at ({r_q}, {r_c})", height=height, showlegend=True,
                   legend=dict(orientation="h", x=0, y=-HEATMAP_LEGEND_DROP / plot, yanchor="top"),
                   margin=dict(HEATMAP_MARGIN))


def contribution_bars(contributions: np.ndarray, argmax: np.ndarray, score: float,
                      q_labels: Sequence[str] | None = None) -> go.Figure:
    """Each query vector's best similarity: the bars add up to the MaxSim score."""
    contributions = np.asarray(contributions, dtype=np.float32)
    r_q = len(contributions)
    q_labels = list(q_labels) if q_labels is not None else [""] * r_q
    names = [f"q{i + 1}" for i in range(r_q)]
    fig = go.Figure(go.Bar(
        x=contributions, y=names, orientation="h", marker_color=ACCENT,
        text=[score_text(v) for v in contributions], textposition="outside", cliponaxis=False,
        customdata=[[int(a) + 1, q_labels[i]] for i, a in enumerate(argmax)],
        hovertemplate="query vector %{y}%{customdata[1]}: best match is result vector c%{customdata[0]}"
                      "<br>adds %{x:.3f} to the score<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title_text="query vector")
    fig.update_xaxes(title_text="best similarity = its share of the score", rangemode="tozero")
    # The panel's title gives the score (MaxSim / r_q, comparable across budgets); the bars add up to MaxSim.
    title = f"MaxSim {score:.3f} = sum of these {r_q} bars" if r_q > 1 else f"MaxSim {score:.3f} = this one bar"
    subtitle = f"the score shown, {score_text(score / r_q)}, is MaxSim / {r_q}" if r_q > 1 else None
    return _layout(fig, title, subtitle=subtitle,
                   height=max(220, min(460, 100 + 22 * r_q)), showlegend=False)


def _paren(label: str) -> str:
    return f" ({label})" if label else ""


# ------------------------------------------------------------------------------------------------ overlays


@dataclass
class Mark:
    """Something to highlight on an image: a heat map, a colour area, or a box (all in image coordinates)."""

    weight: float  # relative importance (any scale: marks are compared with each other)
    heat: np.ndarray | None = None  # [h, w] >= 0, e.g. a concept's activation map; resized to the image
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in 0..1
    mask: np.ndarray | None = None  # [h, w] 0..1 coverage of a colour; drawn tinted with `tint` and outlined
    tint: tuple[int, int, int] = (249, 115, 22)


COLOUR_RGB = {
    "red": (220, 38, 38), "orange": (249, 115, 22), "yellow": (234, 179, 8), "green": (22, 163, 74),
    "blue": (37, 99, 235), "purple": (147, 51, 234), "pink": (236, 72, 153), "brown": (146, 64, 14),
    "black": (15, 23, 42), "white": (248, 250, 252), "gray": (107, 114, 128), "grey": (107, 114, 128),
}


def colour_rgb(name: str) -> tuple[int, int, int]:
    """RGB for a colour word ("dark green" -> green); orange when unknown."""
    words = name.lower().split()
    return COLOUR_RGB.get(words[-1] if words else "", COLOUR_RGB["orange"])


def _resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return np.zeros((size[1], size[0]), dtype=np.float32)
    im = Image.fromarray((heat / top * 255).astype(np.uint8), mode="L").resize(size, Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def heat_colours(t: np.ndarray) -> np.ndarray:
    """0..1 -> RGB along white-yellow-orange-red."""
    t = np.clip(t, 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_HEAT) - 2)
    frac = (t - lo)[..., None]
    return _HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac


def overlay(image: Image.Image, marks: Sequence[Mark], max_side: int = 720) -> Image.Image:
    """The image, dimmed where nothing matched, with heat where the matching tokens lie and their boxes."""
    img = image.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    w, h = img.size
    base = np.asarray(img, dtype=np.float32)
    # One scale for every kind of mark: a weak concept must not glow as brightly as the strongest match.
    top = max((m.weight for m in marks if m.weight > 0), default=0.0)
    marks = [m for m in marks if m.weight >= MIN_SHARE * top and m.weight > 0]
    heat = np.zeros((h, w), dtype=np.float32)
    for m in marks:
        if m.heat is not None:
            heat += (m.weight / top) * _resize_map(m.heat, (w, h))
    if heat.max() > 0:
        heat = np.clip(heat, 0, 1)
        alpha = (0.65 * heat)[..., None]
        dim = 0.55 + 0.45 * np.sqrt(heat)[..., None]  # unrelated areas fade, matched ones stay bright
        out = base * dim * (1 - alpha) + heat_colours(heat) * alpha
    else:
        out = base.copy()
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    areas = [m for m in marks if m.mask is not None]
    if areas:
        result = _colour_areas(result, areas, top)
    boxes = [m for m in marks if m.box is not None]
    if boxes:
        layer = Image.new("RGBA", result.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for m in sorted(boxes, key=lambda m: m.weight):
            s = m.weight / top
            x0, y0, x1, y1 = m.box
            rect = [x0 * w - 2, y0 * h - 2, x1 * w + 2, y1 * h + 2]
            draw.rectangle(rect, fill=(249, 115, 22, int(40 + 110 * s)),
                           outline=(194, 65, 12, int(120 + 135 * s)), width=2)
        result = Image.alpha_composite(result.convert("RGBA"), layer).convert("RGB")
    return result


def _colour_areas(img: Image.Image, areas: Sequence[Mark], top: float) -> Image.Image:
    """Colour areas: a light wash of the colour where it covers the image, and its outline (in that colour)."""
    from PIL import ImageFilter

    w, h = img.size
    base = np.asarray(img, dtype=np.float32)
    for m in sorted(areas, key=lambda m: m.weight):
        s = m.weight / top
        cover = _resize_map(m.mask, (w, h)) if float(np.max(m.mask)) > 0 else np.zeros((h, w), np.float32)
        inside = cover > 0.5
        tint = np.array(m.tint, dtype=np.float32)
        alpha = (0.35 * s * inside)[..., None]
        base = base * (1 - alpha) + tint * alpha
        edge = Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.FIND_EDGES)
        edge = np.asarray(edge.filter(ImageFilter.MaxFilter(3))) > 0
        base[edge] = base[edge] * (1 - 0.9 * s) + tint * 0.9 * s
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- scaling


def budget_labels(presets: Sequence[tuple[int, int]]) -> list[str]:
    return [f"({r_q}, {r_c})" for r_q, r_c in presets]


def index_size_figure(presets: Sequence[tuple[int, int]], sizes_bytes: Sequence[int], items: int) -> go.Figure:
    labels = budget_labels(presets)
    # One unit for the axis and every bar's label, both from humanize: the axis said MiB while the labels
    # read "12 KB" and "1.5 MB" (issue 17).
    unit, div = byte_unit(max(sizes_bytes, default=0))
    sizes = [b / div for b in sizes_bytes]
    fig = go.Figure(go.Bar(x=labels, y=sizes, marker_color=BUDGET, text=[human_bytes(b, unit) for b in sizes_bytes],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="budget %{x}: %{text}<extra></extra>"))
    fig.update_xaxes(title_text="budget (r_q, r_c)", type="category")
    fig.update_yaxes(title_text=f"bytes read per query ({unit})", rangemode="tozero")
    return _layout(fig, "Bytes read per query", height=320, subtitle=f"{items:,} items × r_c vectors")


def latency_figure(presets: Sequence[tuple[int, int]], ms: Sequence[float], items: int) -> go.Figure:
    labels = budget_labels(presets)
    fig = go.Figure(go.Scatter(x=labels, y=list(ms), mode="lines+markers+text", marker=dict(size=9, color=BUDGET),
                               line=dict(color=BUDGET), text=[f"{v:.1f} ms" for v in ms],
                               textposition="top center", cliponaxis=False,
                               hovertemplate="budget %{x}: %{y:.2f} ms<extra></extra>"))
    fig.update_xaxes(title_text="budget (r_q, r_c)", type="category")
    fig.update_yaxes(title_text="ms per query (median)", rangemode="tozero")
    return _layout(fig, "Scoring time per query", height=320, subtitle=f"{items:,} items · median, measured now")


def agreement_figure(presets: Sequence[tuple[int, int]], agreement: Sequence[float], k: int,
                     n_queries: int) -> go.Figure:
    labels = budget_labels(presets)
    pct = [100 * a for a in agreement]
    fig = go.Figure(go.Scatter(x=labels, y=pct, mode="lines+markers+text", marker=dict(size=9, color=ACCENT),
                               line=dict(color=ACCENT), text=[f"{v:.0f}%" for v in pct],
                               textposition="top center", cliponaxis=False,
                               hovertemplate="budget %{x}: %{y:.1f}% of the top-" + str(k) + "<extra></extra>"))
    fig.update_xaxes(title_text="budget (r_q, r_c)", type="category")
    fig.update_yaxes(title_text=f"shared top-{k} results (%)", range=[0, 110])
    return _layout(fig, "Agreement with the largest budget", height=320,
                   subtitle=f"top-{k} results shared · {plural(n_queries, 'query', 'queries')}")


@dataclass(frozen=True)
class QualityLine:
    """One line of `quality_figure`: MRR per preset of one kind of query on one judged split."""
    split: str  # the legend's group title, e.g. "held-out split (839 queries)"
    kind: str  # "photos" or "documents"
    mrr: Sequence[float]
    baseline: float | None = None  # one mean-pooled vector over the same content
    illustrative: bool = False  # a small set shown for illustration (dashed, open markers), not an evaluation


def quality_figure(presets: Sequence[tuple[int, int]], lines: Sequence[QualityLine], title: str,
                   subtitle: str | None = None) -> go.Figure:
    """MRR against budget, one line per judged split and kind of query, each with its single-vector baseline
    dotted: the paper's quality-vs-cost trade-off measured on this checkpoint. The legend groups the lines by
    split under the split's title; an illustrative split's lines are dashed, with open markers."""
    labels = budget_labels(presets)
    fig = go.Figure()
    palette = [ACCENT, BUDGET, "#16a34a", "#9333ea"]
    # The illustrative splits' colours, none near the palette's (teal and amber read as its blue and orange).
    extra = ["#db2777", "#475569", "#0891b2", "#a16207"]
    used = {False: 0, True: 0}
    for line in lines:
        colours = extra if line.illustrative else palette
        colour = colours[used[line.illustrative] % len(colours)]
        used[line.illustrative] += 1
        name = f"{line.kind}, {line.split}"
        fig.add_trace(go.Scatter(
            x=labels, y=list(line.mrr), mode="lines+markers", name=line.kind, legendgroup=line.split,
            legendgrouptitle_text=line.split,
            line=dict(color=colour, dash="dash" if line.illustrative else "solid"),
            marker=dict(size=8, color=colour, symbol="circle-open" if line.illustrative else "circle"),
            hovertemplate=name + " at %{x}: MRR %{y:.3f}<extra></extra>"))
        if line.baseline is not None:
            fig.add_trace(go.Scatter(x=[labels[0], labels[-1]], y=[line.baseline] * 2, mode="lines",
                                     line=dict(color=colour, dash="dot", width=1), showlegend=False,
                                     legendgroup=line.split,
                                     hovertemplate=f"{name}: one mean-pooled vector, MRR {line.baseline:.3f}"
                                                   "<extra></extra>"))
    if any(line.baseline is not None for line in lines):
        # What the dotted lines are, said in the legend: as the y-axis title ("MRR (dotted: one mean-pooled
        # vector)") it ran up into the chart's title on a phone (issue 17).
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="one mean-pooled vector",
                                 line=dict(color="#64748b", dash="dot", width=1), legendgroup="baseline",
                                 legendgrouptitle_text="dotted", hoverinfo="skip"))
    fig.update_xaxes(title_text="budget (r_q, r_c)", type="category")
    fig.update_yaxes(title_text="MRR", range=[0, 1])
    # The legend sits under the axis title, never on it, whatever the budget labels: the splits side by side,
    # each its title over its kinds of query. Anchored to the figure's bottom edge (not the plot's), so on a
    # phone, where the splits stack, it grows the bottom margin instead of climbing over the axis title.
    return _layout(fig, title, height=520, subtitle=subtitle,
                   legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, groupclick="toggleitem"),
                   margin=dict(l=60, r=20, t=56, b=150))


# ------------------------------------------------------------------------------------------ how it works


def attention_figure(attention: np.ndarray, tokens: Sequence[str], title: str, max_rows: int = 16,
                     side: str = "query", subtitle: str | None = None) -> go.Figure:
    """Each meta token's last-layer attention over the content tokens (rows: meta tokens, named by the vector
    each becomes: q1 … for a query's, c1 … for a candidate's)."""
    att = np.asarray(attention, dtype=np.float32)[:max_rows]
    rows = att.shape[0]
    cols = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(
        z=att, x=cols, y=[f"{side[0]}{i + 1}" for i in range(rows)], colorscale="Blues", xgap=1, ygap=1,
        colorbar=dict(title=dict(text="attention", side="top"), thickness=12),
        hovertemplate="the meta token of vector %{y} reads “%{x}” with weight %{z:.3f}<extra></extra>",
    ))
    fig.update_xaxes(title_text="content tokens", tickangle=-45, tickmode="array", tickvals=cols,
                     ticktext=list(tokens))
    fig.update_yaxes(title_text="meta tokens (by their vector)", autorange="reversed")
    return _layout(fig, title, height=max(260, min(480, 150 + 18 * rows)), subtitle=subtitle)


def vectors_figure(vectors: np.ndarray, presets: Sequence[tuple[int, int]], side: str = "query") -> go.Figure:
    """The R x D embedding as an image, with the nested prefix groups marked."""
    v = np.asarray(vectors, dtype=np.float32)
    r, d = v.shape
    lim = float(np.abs(v).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=v, x=list(range(1, d + 1)), y=[f"{side[0]}{i + 1}" for i in range(r)],
                               colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                               colorbar=dict(title=dict(text="value", side="top"), thickness=12),
                               hovertemplate="vector %{y}, dimension %{x}: %{z:.3f}<extra></extra>"))
    idx = 0 if side == "query" else 1
    seen = set()
    for p in presets:
        n = p[idx]
        if n in seen or n >= r:
            continue
        seen.add(n)
        fig.add_hline(y=n - 0.5, line=dict(color=ACCENT, width=2, dash="dot"))
        # Dark on a light box: orange text on the red/blue field could not be read.
        fig.add_annotation(x=d, y=n - 0.5, text=f"first {n}", showarrow=False, xanchor="right", yanchor="bottom",
                           font=dict(color="#111827", size=12), bgcolor="rgba(255,255,255,0.85)")
    fig.update_xaxes(title_text=f"dimension (D = {d})")
    fig.update_yaxes(title_text=f"{side} vectors", autorange="reversed")
    return _layout(fig, f"The {r} {side} vectors", height=max(240, min(420, 140 + 16 * r)),
                   subtitle="each row has length 1")


def prefix_matrix_figure(sim: np.ndarray, presets: Sequence[tuple[int, int]]) -> go.Figure:
    """The full R_q x R_c similarity matrix with each budget's top-left block outlined."""
    sim = np.asarray(sim, dtype=np.float32)
    r_q, r_c = sim.shape
    fig = go.Figure(go.Heatmap(z=sim, x=list(range(1, r_c + 1)), y=list(range(1, r_q + 1)), colorscale=SIM_SCALE,
                               xgap=1, ygap=1, colorbar=dict(title=dict(text="similarity", side="top"), thickness=12),
                               hovertemplate="q%{y} · c%{x}: %{z:.3f}<extra></extra>"))
    for i, (pq, pc) in enumerate(sorted(presets)):
        if pq > r_q or pc > r_c:
            continue
        fig.add_shape(type="rect", x0=0.5, y0=0.5, x1=pc + 0.5, y1=pq + 0.5,
                      line=dict(color=ACCENT if i % 2 == 0 else "white", width=2.5))
        # Each label hangs below its block's corner; the whole matrix's would hang over the axis' last tick
        # label ("c64"), so it sits inside its corner instead.
        whole = (pq, pc) == (r_q, r_c)
        fig.add_annotation(x=pc + 0.5, y=pq + 0.5, text=f"({pq}, {pc})", showarrow=False,
                           xanchor="right" if whole else "left", yanchor="bottom" if whole else "top",
                           font=dict(color="white", size=12), bgcolor="rgba(15,23,42,0.75)")
    # Ticks at the budgets' edges, named as the search's explanations name the vectors (q1 …, c1 …).
    xs = sorted({1, r_c} | {pc for _, pc in presets if pc <= r_c})
    ys = sorted({1, r_q} | {pq for pq, _ in presets if pq <= r_q})
    fig.update_xaxes(title_text="result's vectors", range=[0.5, r_c + 0.5], showgrid=False, zeroline=False,
                     tickvals=xs, ticktext=[f"c{v}" for v in xs])
    fig.update_yaxes(title_text="query vectors", range=[r_q + 0.5, 0.5], showgrid=False, zeroline=False,
                     tickvals=ys, ticktext=[f"q{v}" for v in ys])
    return _layout(fig, "One matrix, every budget", height=380, subtitle="a budget is its top-left corner")


def budget_race_figure(presets: Sequence[tuple[int, int]], first: Sequence[float], second: Sequence[float],
                       ranks: Sequence[int], first_label: str, second_label: str) -> go.Figure:
    """The two best results of the largest budget, at every budget: comparable scores (MaxSim / r_q) and the
    first one's rank, so the chart shows where a small budget already separates them, or swaps them."""
    labels = budget_labels(presets)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=labels, y=list(first), mode="lines+markers+text", name=f"#1 {first_label}",
                             line=dict(color=ACCENT), marker=dict(size=9, color=ACCENT), cliponaxis=False,
                             text=[f"rank {r}" for r in ranks], textposition="top center",
                             hovertemplate="%{x}: %{y:.3f} (%{text})<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=list(second), mode="lines+markers", name=f"#2 {second_label}",
                             line=dict(color=BUDGET, dash="dash"), marker=dict(size=8, color=BUDGET),
                             hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="budget (r_q, r_c)", type="category")
    top = max(list(first) + list(second) + [0.1])
    fig.update_yaxes(title_text="score (MaxSim / r_q)", range=[0, min(1.0, top * 1.25)])
    return _layout(fig, "The top two results at every budget", height=340, subtitle="label: #1's rank there",
                   legend=dict(orientation="h", y=-0.35, x=0), margin=dict(l=60, r=20, t=56, b=110))
