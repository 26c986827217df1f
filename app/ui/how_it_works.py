"""The How it works tab: one query walked through the live model, from tokens to MaxSim at every budget."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import numpy as np

from app.humanize import human_bytes, score_text
from app.service import Studio
from app.ui import plots
from app.ui.common import PRIVATE, gpu, mistake, on_first_open, session_of
from model.scoring import explain as maxsim_explain

DEFAULT_QUERY = "an owl hiding in a tree"
RANK_DEPTH = 50  # ranks beyond this read as "> 50"


def build(studio: Studio) -> SimpleNamespace:
    engine = studio.engine
    t = SimpleNamespace()
    gr.Markdown(
        "## How MetaEmbed turns a query into vectors, and why one index serves every budget\n"
        f"A walk through one query with the live model. MetaEmbed appends a few learnable **meta tokens** after "
        f"the content; their final hidden states, projected and normalised, are the embedding: "
        f"{engine.num_query_vectors} vectors for a query, {engine.num_candidate_vectors} for each photo or page. "
        "Two items are compared with **MaxSim**: every query vector finds its most similar item vector, and the "
        "similarities are added up.")
    with gr.Row(equal_height=True):
        t.query = gr.Textbox(DEFAULT_QUERY, label="Query to walk through", scale=4, elem_id="me-teach-query")
        t.button = gr.Button("Walk through", variant="primary", scale=1, elem_id="me-teach-go")
    gr.Markdown("### 1 · Tokens, then meta tokens")
    t.tokens = gr.HTML("<p class='me-caption'>Press <b>Walk through</b>.</p>")
    gr.Markdown("The backbone reads the query's tokens followed by the meta tokens (orange). Content tokens never "
                "look at the meta tokens. In the paper's layout (the vision-language backbones) meta token *i* "
                "looks at all content and at meta tokens 1…*i*; in MetaEmbed-Mini's granular layout meta token 1 "
                "reads the whole text and each later level splits it into ever smaller parts, one per meta token: "
                "at sentence ends first, then at commas, then between words. (A page's 48 finest meta tokens read "
                "clusters of alike words from anywhere in the passage instead.)",
                elem_classes="me-caption")
    gr.Markdown("### 2 · Each meta token reads the content")
    t.attention = gr.Plot(show_label=False, elem_id="me-teach-attention")
    gr.Markdown("Attention of each meta token over the query's words (each row sums to 1 over the words, leaving "
                "out [CLS] and [SEP]): the last layer's, averaged over heads, in the paper's layout; MetaEmbed-Mini's "
                "span readout, which reads each meta token's own part of the text, in the granular one. Different "
                "meta tokens weigh the words differently, which lets several vectors match several aspects of a "
                "photo or page.", elem_classes="me-caption")
    gr.Markdown("### 3 · Their states become the vectors — and the first few are a complete embedding")
    t.vectors = gr.Plot(show_label=False, elem_id="me-teach-vectors")
    t.prefix = gr.Markdown()
    gr.Markdown("### 4 · MaxSim, at any budget, from one index")
    t.matrix = gr.Plot(show_label=False, elem_id="me-teach-matrix")
    t.budgets = gr.Plot(show_label=False, elem_id="me-teach-budgets")
    t.matrix_md = gr.Markdown()
    return t


def wire(studio: Studio, t: SimpleNamespace, with_samples: gr.Checkbox, page: gr.Tab | None = None) -> None:
    """`with_samples`: the Search tab's "include the sample collection" box, which step 4's search follows (it
    always included them, so its "top two results" were not the ones the Search tab showed). `page`: the tab this
    view sits in; opening it the first time walks through the query in the box, so the lesson is there to read
    instead of four empty charts."""
    outputs = [t.tokens, t.attention, t.vectors, t.prefix, t.matrix, t.budgets, t.matrix_md]

    @gpu
    def walk(text: str, include_samples: bool, request: gr.Request):
        text = (text or "").strip()
        if not text:
            return mistake("type a query to walk through", len(outputs))
        return walkthrough(studio, text, session_of(request), bool(include_samples))

    # A press (or Enter in the box: one listener) while an earlier press's walk-through runs runs next: under
    # Gradio's default trigger mode ('once') it was dropped, and the charts stayed on the old query. (The walk
    # that opening the tab starts is another listener: a press within its second or so runs beside it.)
    gr.on([t.button.click, t.query.submit], walk, [t.query, with_samples], outputs, trigger_mode="always_last",
          **PRIVATE)
    if page is not None:
        on_first_open(page, walk, [t.query, with_samples], outputs)


def tokens_html(tokens: list[str], num_meta: int) -> str:
    content = "".join(f"<span class='me-tok'>{html.escape(tok)}</span>" for tok in tokens)
    meta = "".join(f"<span class='me-meta'>M{i + 1}</span>" for i in range(num_meta))
    return (f"<div class='me-tokens'>{content}<span style='opacity:.6'>→</span>{meta}</div>"
            f"<p class='me-caption'>{len(tokens)} content tokens (word pieces; [CLS] and [SEP] mark the ends) and "
            f"{num_meta} meta tokens M1 … M{num_meta}, each of which becomes one query vector, q1 … "
            f"q{num_meta} (the names the charts below and the search's explanations use).</p>")


def walkthrough(studio: Studio, text: str, session: str | None, include_samples: bool = True) -> tuple:
    engine = studio.engine
    presets = engine.presets
    query = studio.encode_query(text)
    insp = studio.inspect_query(query)
    tokens = list(insp["tokens"])
    att = insp["attention"].float().numpy() if insp.get("attention") is not None else np.zeros((1, len(tokens)))
    # [CLS]/[SEP] soak up much of the attention (a known "sink"); the figure shows how the rest is shared out.
    keep = [i for i, tok in enumerate(tokens) if tok not in ("[CLS]", "[SEP]")] or list(range(len(tokens)))
    shown = att[:, keep]
    shown = shown / np.clip(shown.sum(axis=1, keepdims=True), 1e-9, None)
    rq_full = engine.num_query_vectors

    # Step 3: the Matryoshka property, checked live: run fewer meta tokens, compare with the prefix.
    rows = []
    for r in sorted({p[0] for p in presets if p[0] < rq_full}):
        short = engine.encode([text], "query", num_tokens=r)[0]
        diff = float((short - query.vectors[:r]).abs().max())
        rows.append(f"| {r} of {rq_full} | {diff:.1e} |")
    prefix_md = ("Running only the first *r* meta tokens gives exactly the first *r* vectors of the full run "
                 "(differences are float rounding), because meta token *i* never sees the later ones. Training "
                 "makes each prefix a good embedding on its own (the Matryoshka groups "
                 f"{', '.join(str(p) for p in presets)}).\n\n| meta tokens run | largest difference to the full "
                 "run's prefix |\n|---|---|\n" + "\n".join(rows))

    # Step 4: MaxSim with the best result at the largest budget.
    full = presets[-1]
    hits = studio.search(query, session, *full, k=2, include_samples=include_samples)
    if hits:
        _, item, c = studio.item(hits[0].collection, hits[0].id, session)
        sim = (query.vectors.float() @ c.float().T).numpy()
        label = f"“{hits[0].label}”"
        matrix = plots.prefix_matrix_figure(sim, presets)
        budgets = _top_two_at_every_budget(studio, query, session, hits, presets, include_samples)
        per_item = engine.num_candidate_vectors * engine.dim * 2
        matrix_md = (f"The similarity of all {rq_full} query vectors with all {engine.num_candidate_vectors} vectors "
                     f"of the top result, {label}. A budget (r_q, r_c) is the top-left r_q × r_c block: MaxSim takes "
                     "the maximum of each row inside the block and adds the rows up. The index stores every item's "
                     f"vectors once ({human_bytes(per_item)} per item); a small budget just reads fewer of them, so "
                     "nothing is re-encoded or re-indexed when you move the budget slider. The second chart follows this "
                     "search's top two results across the budgets: their comparable scores (MaxSim / r_q) and "
                     "where the first one ranks at each budget.\n\n" + worked_maxsim(sim, _worked_budget(presets)))
    else:
        matrix = plots.empty_figure("Add files to your collection (or include the samples) to see step 4.")
        budgets = plots.empty_figure("")
        matrix_md = ""
    return (tokens_html(tokens, rq_full),
            plots.attention_figure(shown, [tokens[i] for i in keep], f"Attention of the {rq_full} meta tokens",
                                   subtitle=f"over the words of “{plots.chart_text(text)}”"),
            plots.vectors_figure(query.vectors.numpy(), presets, "query"),
            prefix_md, matrix, budgets, matrix_md)


def _worked_budget(presets) -> tuple[int, int]:
    """The budget step 4 works out by hand: the smallest with at least 4 query vectors (few rows to add, and
    past MetaEmbed-Mini's first two, which both read the whole query)."""
    several = [p for p in presets if p[0] >= 4]
    return min(several) if several else max(presets)


def worked_maxsim(sim: np.ndarray, budget: tuple[int, int]) -> str:
    """MaxSim at one budget, worked out row by row from the full similarity matrix, as a teacher would on a
    board: each query vector's best result vector inside the block, the sum, and the score shown (sum / r_q)."""
    r_q, r_c = budget
    block = np.asarray(sim, dtype=np.float64)[:r_q, :r_c]
    best = block.argmax(axis=1)
    values = block[np.arange(r_q), best]
    rows = ", ".join(f"q{i + 1} → c{int(j) + 1} {score_text(v)}" for i, (j, v) in enumerate(zip(best, values)))
    total = float(values.sum())
    # The sum is of the exact values: where the rounded terms shown add up to another number (a teacher checked
    # "0.57 + 0.57 + 0.60 + 0.47 = 2.20"), the sign says so instead of an equation that does not hold.
    terms = [score_text(v) for v in values]
    exact = score_text(sum(float(t) for t in terms)) == score_text(total)
    equals = "=" if exact else "≈"
    rounded = "" if exact else " (the terms are rounded; the sum is of their exact values)"
    return (f"Worked out at budget **({r_q}, {r_c})**: each of the first {r_q} query vectors keeps its best match "
            f"among the first {r_c} result vectors ({rows}); MaxSim = "
            f"{' + '.join(terms)} {equals} **{score_text(total)}**{rounded}, and the score the search "
            f"shows is MaxSim / {r_q} = **{score_text(total / r_q)}**.")


def _top_two_at_every_budget(studio: Studio, query, session: str | None, hits: list, presets,
                             include_samples: bool) -> object:
    """Step 4's second chart: the largest budget's #1 and #2, scored and ranked at every budget. It differs
    from query to query (where a small budget already separates them, or ranks them the other way)."""
    top = hits[:2]
    vectors = [studio.item(h.collection, h.id, session)[2] for h in top]
    comparable: list[list[float]] = [[] for _ in top]
    ranks = []
    for r_q, r_c in presets:
        for scores, c in zip(comparable, vectors):
            scores.append(float(maxsim_explain(query.vectors, c, (r_q, r_c))["score"]) / r_q)
        ranked = studio.search(query, session, r_q, r_c, k=RANK_DEPTH, include_samples=include_samples)
        ranks.append(next((h.rank for h in ranked if (h.collection, h.id) == (top[0].collection, top[0].id)),
                          RANK_DEPTH + 1))
    second = comparable[1] if len(top) > 1 else [0.0] * len(presets)
    return plots.budget_race_figure(presets, comparable[0], second, ranks, top[0].label,
                                    top[1].label if len(top) > 1 else "(none)")
