"""The app's named API endpoints (gradio_client): `search` and `index`, documented in the README.

They run the same code as the tabs (Studio.encode_query / Studio.search, and the Collection tab's upload
path), from hidden components, so scripts get exactly what a visitor sees.
"""

from __future__ import annotations

import json

import gradio as gr

from app.search import ONLY, Hit, kinds_of
from app.service import Studio
from app.ui.collection_tab import index_upload
from app.ui.common import gpu, session_of


def api_entry(hit: Hit) -> dict:
    """One result as the `search` endpoint returns it: which collection it came from and its kind, and the
    scores (MaxSim, and comparable_score as the app shows it) rounded to what bf16 vectors can tell apart."""
    comparable = hit.comparable
    return {"rank": hit.rank, "id": hit.id, "path": hit.path, "page": hit.page, "score": round(hit.score, 5),
            "comparable_score": round(comparable, 5) if comparable is not None else None,
            "collection": hit.collection, "kind": hit.kind}


def build_and_wire(studio: Studio) -> None:
    presets = studio.engine.presets
    with gr.Row(visible=False):
        query = gr.Textbox(label="query")
        r_q = gr.Number(value=presets[-1][0], precision=0, label="r_q")
        r_c = gr.Number(value=presets[-1][1], precision=0, label="r_c")
        k = gr.Number(value=10, precision=0, label="k")
        samples = gr.Checkbox(value=True, label="include_samples")
        only = gr.Radio(list(ONLY), value="everything", label="only")
        # JSON as text: gradio_client (1.x/2.x, protocol sse_v3) takes any JSON object with a "path" string
        # for a file and tries to download it, so objects with a "path" key cannot travel as gr.JSON.
        results = gr.Textbox(label="results_json")
        files = gr.File(file_count="multiple", label="files")
        report = gr.Textbox(label="report_json")
        search_btn = gr.Button()
        index_btn = gr.Button()

    @gpu
    def api_search(query, r_q, r_c, k, include_samples, only, request: gr.Request) -> str:
        """Search the user's photos and documents (and the sample collection) with MetaEmbed multi-vector
        late interaction. Returns JSON text (use json.loads): a list of {rank, id, path, page, score,
        comparable_score, collection, kind}, best first, one per photo, PDF page or text file; score is MaxSim,
        the sum of r_q cosine similarities; comparable_score is score / r_q (at most 1, 0 or below for nothing
        alike, comparable across budgets: the score the app shows).

        Args:
            query: what to look for, in words (e.g. "an owl in a tree", "how to install Debian").
            r_q: query vectors used, 1-16 (with r_c: the budget; the trained presets are 1,1 2,4 4,8 8,16 16,64).
            r_c: vectors per item used, 1-64; smaller budgets are faster and coarser.
            k: how many results, 1-1000.
            include_samples: also search the bundled sample collection.
            only: "everything" (the default), "photos", or "documents" (PDF pages and text files) alone.
        """
        # The parameter names are the API's keyword arguments (client.predict(query=..., r_q=...)).
        try:
            encoded = studio.encode_query(query, None)
            r_q, r_c = studio.check_budget(r_q, r_c)
            k = max(1, min(int(k or 10), 1000))
            kinds_of(only or None)  # an unknown choice is refused by name
        except ValueError as e:
            raise gr.Error(str(e)) from e
        hits = studio.search(encoded, session_of(request), r_q, r_c, k=k, include_samples=bool(include_samples),
                             only=only or None)
        return json.dumps([api_entry(h) for h in hits], ensure_ascii=False)

    @gpu
    def api_index(files, request: gr.Request) -> str:
        """Add files (photos, PDFs, text files or zip archives) to the user's collection so that search finds
        them. Returns JSON text (use json.loads): {indexed: [{id, path, page, kind}], skipped_duplicates,
        replaced, errors: [{path, error}], notes}.

        Args:
            files: the files to add.
        """
        return json.dumps(index_upload(studio, files, request), ensure_ascii=False)

    # The functions' docstrings are the endpoints' descriptions: in the API page, and as MCP tool descriptions.
    search_btn.click(api_search, [query, r_q, r_c, k, samples, only], results, api_name="search")
    index_btn.click(api_index, [files], report, api_name="index")
