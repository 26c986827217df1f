"""app.ui.search_tab's pure helpers: the highlighted snippets of text results (issue 17.6), the gallery's wire
format and the explanation requests of the slider's events."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from app.search import Calibration, Hit
from app.ui.search_tab import gallery_payload, snippets_html, standing_request


def _hit(rank: int, kind: str, text: str, page: int | None = None, collection: str | None = "yours") -> Hit:
    item = SimpleNamespace(id=f"id{rank}", kind=kind, title="guide.pdf" if page else "notes.txt", passage=0, text=text)
    return Hit(rank, item.id, item.title, page, 8.0 - rank, item, collection)


def test_snippets_show_the_stretch_with_most_query_words_highlighted_and_skip_photos():
    filler = " ".join(f"word{i}" for i in range(60))
    hits = [_hit(1, "image", "tabby kitten"),
            _hit(2, "pdf_page", f"{filler} the ferry to the harbour leaves at eight {filler}", page=3),
            _hit(3, "text", "the harbour office", collection="samples"),
            _hit(4, "text", "nothing relevant here")]  # holds no query word: nothing to show
    out = snippets_html(hits, "When does the ferry leave the harbour?", 8)
    assert out.count("<li>") == 2  # the photo is shown by its picture, not a snippet
    first = out.split("</li>")[0]
    assert "p. 3 · guide.pdf" in first and "<mark>ferry</mark>" in first and "<mark>harbour</mark>" in first
    assert "<mark>the</mark>" not in first  # common words are not what matched
    assert first.count("…") == 2  # cut from a longer page on both sides
    assert "sample" in out.split("</li>")[1]
    assert snippets_html(hits, None, 8) == ""  # an image-only query has no words to show


def test_snippets_mark_forms_of_a_query_word():
    """A reviewer searched "installer": the FAQ pages about installing showed nothing marked."""
    from app.ui.search_tab import same_word

    out = snippets_html([_hit(1, "text", "Debian is installed with its installation tools")], "installer", 4)
    assert "<mark>installed</mark>" in out and "<mark>Debian</mark>" not in out
    assert same_word("boat", "boats") and same_word("install", "installer") and not same_word("cat", "category")
    assert not same_word("sunset", "sunday") and same_word("dog", "dog")
    # A shared start is not a form of the word (a review: "port" marked a page about portraits).
    for a, b in (("port", "portrait"), ("card", "cardinal"), ("organ", "organization"), ("test", "testament"),
                 ("photos", "photographer"), ("informal", "information")):
        assert not same_word(a, b), (a, b)


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


def _query(text: str | None, encode_ms: float = 0.0):
    import torch

    from app.service import QueryState

    return QueryState("ckpt", text, None, torch.zeros(4, 8), encode_ms=encode_ms)


# A checkpoint's "no close match" calibration: whole-query threshold 0.3, strong-part bar 0.5 at every budget.
CAL = Calibration(0.3, {(1, 1): 0.5})


def test_captions_echo_the_query_escaped_and_shortened():
    """The query "<b>bold</b>" was shown in bold, and a 900-word query was repeated in full, twice."""
    from app.ui.search_tab import results_caption

    hits = [replace(_hit(1, "text", "bold"), score=1.0)]  # 0.25 at r_q = 4
    caption = results_caption(_query("<b>bold</b> **x** [a](b)"), hits, (4, 8), 3.0, calibration=CAL, whole=0.2)
    assert "<b>" not in caption and "&lt;b&gt;bold&lt;/b&gt;" in caption
    assert "\\*\\*x\\*\\*" in caption and "\\[a\\]\\(b\\)" in caption  # Markdown shown as typed
    long = "a dog on the beach at sunset " * 130
    caption = results_caption(_query(long), hits, (4, 8), 3.0, calibration=CAL, whole=0.2)
    assert caption.count("a dog on the beach") == 2 * 3  # the no-close-match line and the count line
    assert caption.count("…”") == 2 and len(caption) < 1000


def test_no_close_match_is_judged_on_the_whole_query_score():
    from app.ui.search_tab import results_caption

    hits = [replace(_hit(1, "text", "bold"), score=1.0)]  # comparable 0.25 at r_q = 4, 1.0 at r_q = 1

    def flagged(whole, budget=(4, 8), calibration=CAL) -> bool:
        return "No close match" in results_caption(_query("q"), hits, budget, 3.0, calibration=calibration, whole=whole)

    assert flagged(0.2) and not flagged(0.4)  # far from everything as a whole, or not
    assert not flagged(0.2, budget=(1, 4))  # ... but a part of it matches strongly (1.0 >= the bar 0.5)
    assert not flagged(0.1, calibration=None) and not flagged(None)  # uncalibrated, or nothing indexed
    # Two budgets in one note, each named (a tester read "at this budget" as the whole-query one).
    note = results_caption(_query("q"), hits, (4, 8), 3.0, calibration=CAL, whole=0.2)
    assert "budget (1, 1)), the closest item scores 0.20" in note and "(best 0.25 at budget (4, 8))" in note
    # What to try next fits what was searched: words, a picture (it said "Try other words"), a result's content.
    picture = replace(_query(None), image=object())
    similar = replace(_query("the text of p. 3 · guide.pdf"), about="the text of p. 3 · guide.pdf")
    advice = {name: results_caption(q, hits, (4, 8), 3.0, calibration=CAL, whole=0.2)
              for name, q in (("words", _query("q")), ("picture", picture), ("similar", similar))}
    assert "Try other words, or add files." in advice["words"]
    assert "Try another picture, or add files." in advice["picture"] and "other words" not in advice["picture"]
    assert "Nothing else in the collection is close to it." in advice["similar"]


def test_a_search_without_the_samples_says_so():
    """Issue: once a visitor has files, the samples box is unticked by default, and a sample photo they had
    found before seemed lost; the caption now says what was searched."""
    from app.ui.search_tab import results_caption

    hits = [_hit(1, "text", "bold")]
    assert "your files only" in results_caption(_query("a cat"), hits, (4, 8), 3.0, samples_left_out=True)
    assert "your files only" not in results_caption(_query("a cat"), hits, (4, 8), 3.0)


def test_a_cached_query_says_it_was_reused():
    from app.ui.search_tab import results_caption

    hits = [_hit(1, "text", "cat")]
    assert "encoded once, in 12 ms" in results_caption(_query("cat", encode_ms=12.3), hits, (4, 8), 3.0)
    reused = results_caption(_query("cat", encode_ms=0.0), hits, (4, 8), 3.0)
    assert "reused from the cache" in reused and "in 0 ms" not in reused


def test_slider_values_are_brought_into_range():
    """0 or 99 typed into the r_q box used to fail in Gradio's preprocessing ("Error" and a traceback)."""
    from app.ui.search_tab import clamped

    assert clamped(99, 1, 16) == 16 and clamped(0, 1, 16) == 1 and clamped(-3.0, 0, 4) == 0
    assert clamped(7.0, 1, 16) == 7 and clamped("5", 1, 16) == 5
    assert clamped(None, 1, 16) == 16 and clamped("", 1, 64) == 64 and clamped(float("nan"), 1, 8) == 8


def test_the_highlight_follows_the_open_result_to_its_new_place():
    from app.ui.search_tab import position_of

    hits = [_hit(1, "text", "a"), _hit(2, "text", "b", collection="samples"), _hit(3, "text", "c")]
    assert position_of(hits, ("samples", "id2")) == 1
    assert position_of(hits, ["yours", "id3"]) == 2  # as a State may hold it
    assert position_of(hits, ("yours", "id2")) is None  # same id, another collection
    assert position_of(hits, ("yours", "gone")) is None  # it left the page
    assert position_of(hits, None) is None


def test_a_broken_query_image_is_named_in_plain_words(tmp_path):
    """A text file named broken.jpg dropped as the query image used to reach Gradio's preprocessing
    ("Could not preprocess input component ... UnidentifiedImageError") and log a traceback."""
    import pytest
    from PIL import Image

    from app.ui.search_tab import query_picture

    broken = tmp_path / "0123abcd" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_text("not a picture")
    with pytest.raises(ValueError, match=r"^broken\.jpg is not a readable image"):
        query_picture({"path": str(broken), "orig_name": "broken.jpg"})
    empty = tmp_path / "0123abcd" / "holiday.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^holiday\.jpg is not a readable image \(the file is empty\)$"):
        query_picture({"path": str(empty), "orig_name": "holiday.jpg"})
    with pytest.raises(ValueError, match=r"^gone\.png could not be read"):
        query_picture({"path": str(tmp_path / "gone.png"), "orig_name": "gone.png"})
    photo = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 0, 0)).save(photo)
    image = query_picture({"path": str(photo), "orig_name": "red.png"})
    assert image.size == (40, 30) and image.mode == "RGB"
    assert query_picture(None) is None


def test_a_new_search_clears_the_highlight_of_the_result_open_before(tmp_path):
    """Issue 17: after a new search the gallery kept the old open result's tile outlined, now on another result.
    The page keeps its selected_index across new values unless one is sent, and None only travels in a returned
    component (a gr.update drops it)."""
    import gradio as gr

    from app.ui.search_tab import new_results

    items = [(str(tmp_path / f"{i}.jpg"), f"0.{i}1 · photo-{i}.jpg") for i in range(3)]
    outputs = ("query", ["hits"], items, "caption", "snippets")
    query, hits, gallery, caption, snippets = new_results(outputs, ("yours", "id2"))
    assert (query, hits, caption, snippets) == ("query", ["hits"], "caption", "snippets")
    assert isinstance(gallery, gr.Gallery)
    assert gallery.constructor_args == {"value": items, "selected_index": None}  # what Gradio sends as the update
    assert new_results(outputs, None) == outputs  # nothing was open: nothing to clear, the gallery as it was


def test_the_explanation_says_when_every_query_vector_reads_the_same_word(tmp_path, test_checkpoint):
    """A first-time review: "dog" opened a heatmap of 16 identical rows, which looked like one vector copied
    16 times; the explanation now says why, and suggests a longer query."""
    import shutil

    from app.server import create_app
    from app.ui.search_tab import explain_panel
    from tests.helpers import EXAMPLES

    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(EXAMPLES / "owl.jpg", files / "owl.jpg")
    studio, demo = create_app(str(test_checkpoint), tmp_path / "data", sample_dir=None, wait_for_samples=True,
                              log=lambda *a: None)
    try:
        studio.index_files(studio.local, [files / "owl.jpg"])
        for text, alike in (("owl", True), ("an owl on a branch", False)):
            query = studio.encode_query(text)
            [hit] = studio.search(query, None, 16, 64, k=1)
            (title, *_), _ = explain_panel(studio, hit.collection, hit.id, query, 16, 64, None)
            assert ("all 16 query vectors read it" in title) == alike, title
    finally:
        demo.close()
        studio.close()


def test_rows_that_read_alike_are_told_apart_from_a_fault():
    from app.ui.search_tab import _read_alike

    att = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert _read_alike(att, 0, 1) and not _read_alike(att, 0, 2)
    assert not _read_alike(None, 0, 1) and not _read_alike(att[:1], 0, 1)


def test_a_search_of_one_kind_says_so_and_an_empty_one_says_why():
    from app.ui.search_tab import results_caption

    hits = [_hit(1, "text", "cat")]
    assert "“a cat” among the photos at budget" in results_caption(_query("a cat"), hits, (4, 8), 3.0, only="photos")
    assert "among the" not in results_caption(_query("a cat"), hits, (4, 8), 3.0, only="everything")
    empty = results_caption(_query("a cat"), [], (4, 8), 3.0, only="documents")
    assert "there are no documents in the collection" in empty and "is empty" not in empty
    assert "the collection is empty" in results_caption(_query("a cat"), [], (4, 8), 3.0)


def _ranking_studio(n_items: int) -> SimpleNamespace:
    """A studio whose collection holds `n_items` text results, for rank_outputs."""
    hits = [_hit(r, "text", "notes") for r in range(1, n_items + 1)]
    return SimpleNamespace(ensure_current=lambda q: q, search=lambda *a, k, **kw: hits[:k],
                           engine=SimpleNamespace(calibration=None), indexing_progress=None, samples=None,
                           thumbnail=lambda hit, session: f"/thumbs/{hit.id}.jpg")


def test_a_list_cut_at_the_gallery_size_says_it_shows_the_top_results():
    """UX review (s33): "24 results" when more items matched and the list was cut at 24; "1 results"."""
    from app.ui.search_tab import RESULTS, rank_outputs

    def caption(n_items: int) -> str:
        _, hits, gallery, text, _ = rank_outputs(_ranking_studio(n_items), _query("notes"), 4, 8, False, None)
        assert len(hits) == len(gallery) == min(n_items, RESULTS)
        return text

    assert caption(RESULTS + 9).startswith(f"**Top {RESULTS} results** for")
    assert caption(RESULTS).startswith(f"**{RESULTS} results** for")  # all there is: not a top of more
    assert caption(1).startswith("**1 result** for")


def test_a_score_near_zero_reads_0_00_in_the_gallery():
    """UX review (s33): a gallery caption read "-0.00 · IMG_1434.jpg"."""
    from app.ui.search_tab import gallery_value

    hit = replace(_hit(1, "text", "notes"), score=-0.001 * 16)
    [(_, caption)] = gallery_value(_ranking_studio(0), [hit], None, 16)
    assert caption == "0.00 · notes.txt"


def test_the_picture_caption_fits_the_kind_of_result(tmp_path, test_checkpoint):
    """UX review (s33): a text file's explanation was captioned with a photo's marks (concepts in the photo,
    the sky, faces)."""
    import shutil

    from app.server import create_app
    from app.ui.search_tab import explain_panel, overlay_caption
    from tests.helpers import EXAMPLES

    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(EXAMPLES / "owl.jpg", files / "owl.jpg")
    (files / "install.txt").write_text("How do I install Debian? Boot the installer and follow its steps.\n")
    studio, demo = create_app(str(test_checkpoint), tmp_path / "data", sample_dir=None, wait_for_samples=True,
                              log=lambda *a: None)
    try:
        studio.index_files(studio.local, sorted(files.iterdir()))
        query = studio.encode_query("how do I install Debian")
        captions = {}
        for hit in studio.search(query, None, 16, 64, k=5):
            (_, _, picture, caption, *_), _ = explain_panel(studio, hit.collection, hit.id, query, 16, 64, None)
            captions[hit.kind] = (picture["visible"], caption["visible"], caption["value"])
        assert captions["image"] == (True, True, overlay_caption("image"))
        assert "photo" in captions["image"][2]
        assert captions["text"][:2] == (False, False)  # no picture, no caption about one
    finally:
        demo.close()
        studio.close()
    # A page's caption speaks of its words; a picture on it is marked with the photo's marks, all of them named.
    page = overlay_caption("pdf_page")
    assert "in the photo" not in page and "on the page" in page and all(m in page for m in "✎◆☁●☺")


def test_the_caption_gives_the_range_of_the_scores_it_shows():
    """A reviewer saw "-0.03" under a caption that promised scores of 0-1: a mean of cosines can fall below 0."""
    from app.humanize import SCORE_SCALE
    from app.ui.search_tab import results_caption

    hits = [replace(_hit(1, "text", "nothing alike"), score=-0.12)]  # -0.03 at r_q = 4
    caption = results_caption(_query("an owl"), hits, (4, 8), 3.0, calibration=CAL, whole=-0.03)
    assert SCORE_SCALE in caption and "0-1" not in caption and "below" in SCORE_SCALE


def test_the_note_on_rows_read_alike_is_for_text_queries_only(tmp_path):
    """UX review (s35): after a photo dropped in the query box (no words), the explanation said "a short query
    has fewer words than vectors". The bundled checkpoint's q1 and q2 read a query alike, whatever it is."""
    import shutil

    import pytest
    from PIL import Image

    from app.server import create_app
    from app.ui.search_tab import explain_panel
    from model.checkpoint import DEFAULT_CHECKPOINT
    from model.config import CONFIG_NAME
    from tests.helpers import EXAMPLES

    if not (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
        pytest.skip("the bundled checkpoint is not there")
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(EXAMPLES / "owl.jpg", files / "owl.jpg")
    studio, demo = create_app(None, tmp_path / "data", sample_dir=None, wait_for_samples=True, log=lambda *a: None)
    try:
        studio.index_files(studio.local, [files / "owl.jpg"])
        photo = Image.open(EXAMPLES / "tabby-cat.jpg").convert("RGB")
        for text, image, noted in (("a dog on the beach", None, True), (None, photo, False)):
            query = studio.encode_query(text, image)
            [hit] = studio.search(query, None, 16, 64, k=1)
            (title, *_), _ = explain_panel(studio, hit.collection, hit.id, query, 16, 64, None)
            assert ("q1 and q2 both read the whole query" in title) == noted, title
    finally:
        demo.close()
        studio.close()
