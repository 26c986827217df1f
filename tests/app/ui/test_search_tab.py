"""app.ui.search_tab's pure helpers: the highlighted snippets of text results (issue 17.6), the gallery's wire
format and the explanation requests of the slider's events."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from app.search import Hit
from app.ui.search_tab import gallery_payload, snippets_html, standing_request


def _hit(rank: int, kind: str, text: str, page: int | None = None, collection: str | None = "yours") -> Hit:
    item = SimpleNamespace(id=f"id{rank}", kind=kind, title="guide.pdf" if page else "notes.txt", passage=0, text=text)
    return Hit(rank, item.id, item.title, page, 8.0 - rank, item, collection)


def test_snippets_show_the_stretch_with_most_query_words_highlighted_and_skip_photos():
    filler = " ".join(f"word{i}" for i in range(60))
    hits = [_hit(1, "image", "tabby kitten"),
            _hit(2, "pdf_page", f"{filler} the ferry to the harbour leaves at eight {filler}", page=3),
            _hit(3, "text", "nothing relevant here", collection="samples")]
    out = snippets_html(hits, "When does the ferry leave the harbour?", 8)
    assert out.count("<li>") == 2  # the photo is shown by its picture, not a snippet
    first = out.split("</li>")[0]
    assert "p. 3 · guide.pdf" in first and "<mark>ferry</mark>" in first and "<mark>harbour</mark>" in first
    assert "<mark>the</mark>" not in first  # common words are not what matched
    assert first.count("…") == 2  # cut from a longer page on both sides
    assert "sample" in out.split("</li>")[1]
    assert snippets_html(hits, None, 8) == ""  # an image-only query has no words to show


def test_snippets_escape_the_text():
    out = snippets_html([_hit(1, "text", "<script>alert(1)</script> harbour")], "harbour", 4)
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_gallery_payload_is_what_the_gallery_would_send(tmp_path):
    """The slider's events skip Gradio's postprocessing and send gallery_payload's value instead: it must stay
    what Gallery.postprocess makes of the same (thumbnail, caption) pairs."""
    import gradio as gr

    items = [(str(tmp_path / f"{i}.jpg"), f"0.{i}1 · photo-{i}.jpg") for i in range(3)]
    for path, _ in items:
        Path(path).write_bytes(b"\xff\xd8\xff\xd9")
    expected = gr.Gallery().postprocess(items).model_dump()
    assert gallery_payload(items) == expected
    assert [e["caption"] for e in expected] == [c for _, c in items]


def test_a_request_stands_only_while_its_result_is_open():
    wanted = (7, 4, 8, ("yours", "abc"))
    assert standing_request(wanted, ("yours", "abc")) == (4, 8, "yours", "abc")
    assert standing_request(wanted, ["yours", "abc"]) == (4, 8, "yours", "abc")  # as a State may hold it
    assert standing_request(wanted, ("yours", "other")) is None  # another result was opened since
    assert standing_request(wanted, None) is None  # a new search closed the panel
    assert standing_request(None, ("yours", "abc")) is None


def test_the_example_queries_are_judged_on_the_sample_collection():
    """The Search tab's "Try" queries are among the sample collection's judged queries, so the eval command
    measures them on the photos they are meant to find."""
    import json

    from app.ui.search_tab import EXAMPLE_QUERIES
    from tests.helpers import EXAMPLES

    judged = {q["query"]: q["relevant"] for q in json.loads((EXAMPLES / "queries.json").read_text())}
    assert [q for q in EXAMPLE_QUERIES if q not in judged] == []
