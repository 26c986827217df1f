"""app.service.Studio without a server or a real model: a small fake engine whose vectors are hashed words.

The fake keeps what Studio relies on (R_q x D query vectors, R_c x D candidate vectors, nested presets) and
makes results predictable: a text shares vectors with a query exactly when it shares words with it.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.service import SAMPLE_DIR, Engine, Studio
from app.service.sessions import UploadLimits
from app.ui.api import api_entry
from tests.helpers import FakeItem, make_pdf

DIM = 32
R_Q, R_C = 4, 8


def _word_vector(word: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed))


class FakeModel:
    """Vector i of a text is its (i mod words)-th word's hashed vector; an image is its mean colour."""

    def __init__(self):
        presets = [(1, 1), (2, 4), (4, 8)]
        self.config = SimpleNamespace(name="fake", backbone="fake", backbone_id="none", front_end=None,
                                      num_query_tokens=R_Q, num_candidate_tokens=R_C, presets=presets, embed_dim=DIM)
        self.dim = DIM
        self.device = torch.device("cpu")
        self.calls = 0

    def _vectors(self, item, count: int) -> torch.Tensor:
        if isinstance(item, Image.Image):
            colour = torch.tensor(item.convert("RGB").resize((1, 1)).getpixel((0, 0)), dtype=torch.float32)
            base = torch.cat([colour, torch.zeros(DIM - 3)])
            return F.normalize(base.repeat(count, 1) + 1e-3, dim=-1)
        if isinstance(item, dict):
            item = item["text"]
        words = [w for w in str(item).split() if w.isalpha()] or ["empty"]
        return F.normalize(torch.stack([_word_vector(words[i % len(words)]) for i in range(count)]), dim=-1)

    def encode(self, items: list, side: str, batch_size: int = 8, num_tokens: int | None = None) -> torch.Tensor:
        self.calls += 1
        count = num_tokens or (R_Q if side == "query" else R_C)
        return torch.stack([self._vectors(it, count) for it in items])

    def encode_candidates(self, items: list, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        return self.encode(items, "candidate")


@pytest.fixture(params=["index", "qdrant-local"])
def studio(tmp_path, request):
    """A Studio whose collection is the embedded index, or (`python app.py --store ...`) a Qdrant store."""
    model = FakeModel()
    store = f"qdrant-local:{tmp_path / 'qdrant'}" if request.param == "qdrant-local" else None
    s = Studio(Engine(model=model, checkpoint_id="fake-0001", source="a fake"), tmp_path / "data", sample_dir=None,
               thumb_root=tmp_path / "thumbs", store=store)
    yield s
    s.close()


def test_a_qdrant_store_is_one_shared_collection(tmp_path):
    engine = Engine(model=FakeModel(), checkpoint_id="fake-0001", source="a fake")
    with pytest.raises(ValueError, match="use one or the other"):
        Studio(engine, tmp_path / "data", sample_dir=None, private_sessions=True, store=f"qdrant-local:{tmp_path}")
    s = Studio(engine, tmp_path / "data", sample_dir=None, store=f"qdrant-local:{tmp_path / 'q'}")
    # The CLI indexed two files elsewhere into the same store; one of them was deleted since.
    kept, gone = _write(tmp_path / "elsewhere", "kept.txt", "kept"), tmp_path / "elsewhere" / "gone.txt"
    items = [FakeItem(str(p), hashlib.sha256(str(p).encode()).hexdigest()) for p in (kept, gone)]
    s.local.index(engine).add(items, torch.stack([engine.model._vectors("kept", R_C)] * 2))
    _write(s.local.files_dir, "mine.txt", "uploaded words")
    s.sync_files(s.local)  # the app's start: indexes its own folder, drops what is gone, keeps the rest
    assert sorted(it.title for it in s.local.index(engine).items()) == ["fake.txt", "mine.txt"]
    assert [it.path for it in s.local.index(engine).items() if it.title == "fake.txt"] == [str(kept)]
    s.close()
    other = Engine(model=FakeModel(), checkpoint_id="fake-0002", source="another fake")
    s = Studio(other, tmp_path / "data", sample_dir=None, store=f"qdrant-local:{tmp_path / 'q'}")
    with pytest.raises(ValueError, match="made by checkpoint 'fake-0001', not 'fake-0002'"):
        s.local.index(other)  # loading another model says so instead of mixing vectors
    s.close()


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_indexed_files_are_found_with_paths_relative_to_the_collection(studio, tmp_path):
    up = tmp_path / "uploads"
    paths = [_write(up, "cats.txt", "tabby cat kitten whiskers purring"),
             _write(up, "ships.txt", "harbour ship anchor sailor mast")]
    report = studio.index_files(studio.local, paths)
    assert len(report["indexed"]) == 2 and not report["errors"]
    assert {e["path"] for e in report["indexed"]} == {"cats.txt", "ships.txt"}  # no server paths

    hits = studio.search(studio.encode_query("kitten whiskers"), None, 4, 8, k=2)
    assert [h.path for h in hits] == ["cats.txt", "ships.txt"]
    assert hits[0].collection == "yours" and hits[0].kind == "text" and hits[0].score > hits[1].score
    assert api_entry(hits[0])["collection"] == "yours" and api_entry(hits[0])["kind"] == "text"
    # The API reports the score the app shows (MaxSim / r_q) next to MaxSim itself.
    assert api_entry(hits[0])["comparable_score"] == pytest.approx(hits[0].score / 4, abs=1e-5)
    assert 0 < api_entry(hits[0])["comparable_score"] <= 1 + 1e-3  # bf16 vectors: a hair over 1 at most
    # The upload was copied into the collection's own folder.
    assert (studio.local.files_dir / "cats.txt").is_file()


def test_a_pdf_page_is_one_result_labelled_by_its_page(studio, tmp_path):
    """Issue 17.6: a page used to appear two or three times (as the page and as its passages)."""
    pdf = tmp_path / "u" / "guide.pdf"
    pdf.parent.mkdir(parents=True)
    lines = [(72, 700 - 16 * i, 11, "harbour lantern ferry quay boats evening tide " * 2) for i in range(30)]
    pdf.write_bytes(make_pdf([lines, [(72, 700, 12, "granite meadow orchard violin")]]))
    studio.index_files(studio.local, [pdf])
    kinds = [(it.page, it.kind, it.passage) for it in studio.items(studio.local)]
    assert len([k for k in kinds if k[0] == 1]) >= 2  # page 1 is indexed as its page item and its passages
    hits = studio.search(studio.encode_query("harbour lantern ferry"), None, 4, 8, k=10)
    assert [(h.path, h.page) for h in hits] == [("guide.pdf", 1), ("guide.pdf", 2)]
    assert hits[0].label == "p. 1 · guide.pdf"


def test_more_like_a_pdf_page_searches_by_its_indexed_text_and_a_photo_by_its_picture(studio, tmp_path,
                                                                                        monkeypatch):
    """Tester report: more like this on a PDF page encoded the rendered page as an image (OCR over a page of
    text: 23 s), emptied the query box and said "for your image"; issue 17: so did a photo's."""
    pdf = tmp_path / "u" / "guide.pdf"
    pdf.parent.mkdir(parents=True)
    pdf.write_bytes(make_pdf([[(72, 700, 12, "harbour lantern ferry quay")], [(72, 700, 12, "granite meadow")]]))
    photo = tmp_path / "u" / "red.png"
    Image.new("RGB", (40, 30), (220, 20, 20)).save(photo)
    studio.index_files(studio.local, [pdf, photo])
    hit = studio.search(studio.encode_query("granite meadow"), None, 4, 8, k=1)[0]
    assert (hit.path, hit.page) == ("guide.pdf", 2)
    real_load = studio.load_source_item
    read_again = []
    monkeypatch.setattr(studio, "load_source_item", lambda item: read_again.append(item) or real_load(item))

    query = studio.more_like_this(hit.collection, hit.id, None)
    assert query.image is None and query.text == "granite meadow" and read_again == []  # the index's text
    assert query.label == "the text of p. 2 · guide.pdf"
    # UX review (s33): the page itself came first, at 1.00; it is left out of its own results, on every path
    # that ranks this query (a re-rank at another budget, the weak-match check's k=1).
    similar = studio.search(query, None, 4, 8, k=10)
    assert [(h.path, h.page) for h in similar] == [("guide.pdf", 1), ("red.png", None)]
    assert [h.rank for h in similar] == [1, 2]
    assert studio.search(query, None, 1, 1, k=1)[0].page == 1

    red = next(it for it in studio.items(studio.local) if it.kind == "image")
    query = studio.more_like_this("yours", red.id, None)
    assert query.image is not None and query.text is None and query.label == f"the photo {red.title}"
    assert red.title == "red.png"
    assert [it.id for it in read_again] == [red.id]


def test_a_query_is_encoded_once_for_every_budget(studio, tmp_path):
    studio.index_files(studio.local, [_write(tmp_path / "u", "a.txt", "red panda tree")])
    model = studio.engine.model
    first = studio.encode_query("red panda")
    calls = model.calls
    for budget in studio.engine.presets:
        assert studio.search(studio.encode_query("red panda"), None, *budget, k=1)
    assert model.calls == calls  # the cache served every later encode
    assert torch.equal(studio.encode_query("red panda").vectors, first.vectors)


def test_whole_match_is_the_best_whole_query_score_at_every_budget(studio, tmp_path):
    """The weak-match flag's statistic: how close the nearest item comes to the query as a whole (its first
    vector against each item's first), whatever budget the results are ranked at."""
    assert studio.whole_match(studio.encode_query("red panda"), None) is None  # nothing indexed
    studio.index_files(studio.local, [_write(tmp_path / "u", "a.txt", "red panda tree"),
                                      _write(tmp_path / "u", "b.txt", "quiet harbour")])
    query = studio.encode_query("red panda")
    [top] = studio.search(query, None, 1, 1, k=1)
    assert studio.whole_match(query, None) == pytest.approx(top.score) == pytest.approx(1.0, abs=0.01)  # bf16
    # The same words in another order: at (4, 8) every query vector finds its word in a.txt, but the first
    # vectors ("panda" against "red", "quiet") are far apart: as a whole, nothing is close.
    swapped = studio.encode_query("panda red")
    [best] = studio.search(swapped, None, 4, 8, k=1)
    assert best.score / 4 == pytest.approx(1.0, abs=0.01)
    assert studio.whole_match(swapped, None) < 0.5


def test_budgets_outside_the_model_are_refused_with_the_allowed_range(studio):
    with pytest.raises(ValueError, match=f"allowed 1..{R_Q}"):
        studio.check_budget(R_Q + 1, 1)
    with pytest.raises(ValueError, match=f"allowed 1..{R_C}"):
        studio.check_budget(1, 0)
    assert studio.check_budget(2.0, 4) == (2, 4)
    with pytest.raises(ValueError, match="type a query"):
        studio.encode_query("  ", None)


class _Killed(BaseException):
    """Stands for the server being stopped mid-run (a SIGKILL ends the process between two commits)."""


def test_a_pdf_cut_short_by_a_stopped_server_is_finished_at_the_next_start(studio, tmp_path, monkeypatch):
    """The app's start re-reads a file whose indexing never ended. It read only files with no items at all, so
    a PDF stopped after its first commits kept those pages and never got the others; uploading it again
    then split it across "guide.pdf" and "guide (2).pdf"."""
    pdf = tmp_path / "u" / "guide.pdf"
    pdf.parent.mkdir(parents=True)
    words = ["harbour", "lantern", "ferry", "granite", "meadow", "orchard", "violin", "tide", "quay", "evening"]
    pdf.write_bytes(make_pdf([[(72, 700, 12, f"page {w} text")] for w in words]))
    model, encode = studio.engine.model, studio.engine.model.encode_candidates
    encoded = []

    def stops_on_the_second_batch(items, batch_size=8, progress=False):
        if len(encoded) >= 8:  # the first batch of 8 items is committed
            raise _Killed
        encoded.extend(items)
        return encode(items, batch_size, progress)

    monkeypatch.setattr(model, "encode_candidates", stops_on_the_second_batch)
    with pytest.raises(_Killed):
        studio.index_files(studio.local, [pdf])
    assert sorted(it.page for it in studio.items(studio.local)) == list(range(1, 9))  # the first batch of 8
    monkeypatch.setattr(model, "encode_candidates", encode)
    studio.sync_files(studio.local)  # the next start
    assert sorted(it.page for it in studio.items(studio.local)) == list(range(1, 11))
    assert studio.sync_files(studio.local) is None  # finished: the next start reads nothing again


def test_a_file_uploaded_again_under_its_name_is_read_in_place(studio, tmp_path, monkeypatch):
    """A PDF cut short (here: a failed run) and uploaded again became "guide (2).pdf" holding the other pages,
    so removing either copy lost half the document."""
    pdf = tmp_path / "u" / "guide.pdf"
    pdf.parent.mkdir(parents=True)
    pdf.write_bytes(make_pdf([[(72, 700, 12, f"page {n} words")] for n in range(10)]))
    model, encode = studio.engine.model, studio.engine.model.encode_candidates
    encoded = []

    def fails_on_the_second_batch(items, batch_size=8, progress=False):
        if len(encoded) >= 8:
            raise _Killed
        encoded.extend(items)
        return encode(items, batch_size, progress)

    monkeypatch.setattr(model, "encode_candidates", fails_on_the_second_batch)
    with pytest.raises(_Killed):
        studio.index_files(studio.local, [pdf])
    monkeypatch.setattr(model, "encode_candidates", encode)
    report = studio.index_files(studio.local, [pdf])
    assert sorted(e["page"] for e in report["indexed"]) == [9, 10]
    assert sorted(p.name for p in studio.local.files_dir.iterdir()) == ["guide.pdf"]
    assert {it.path for it in studio.items(studio.local)} == {str((studio.local.files_dir / "guide.pdf").resolve())}
    other = tmp_path / "v" / "guide.pdf"  # another file of that name is still kept apart
    other.parent.mkdir()
    other.write_bytes(make_pdf([[(72, 700, 12, "other words")]]))
    studio.index_files(studio.local, [other])
    assert sorted(p.name for p in studio.local.files_dir.iterdir()) == ["guide (2).pdf", "guide.pdf"]


def test_a_collection_says_how_far_an_upload_is_while_it_runs(studio, tmp_path):
    """A page reloaded mid-upload lost its progress bar: the collection itself now says how far it is, for the
    status line of any page of that visitor."""
    seen = []
    studio.index_files(studio.local, [_write(tmp_path / "u", "note.txt", "harbour lantern")],
                       lambda fraction, what: seen.append(studio.local.adding))
    assert seen and all(state is not None for state in seen)
    assert seen[-1] == (1.0, "done")
    assert studio.local.adding is None  # and nothing once it is over


def test_remove_by_displayed_path_and_clear_delete_the_stored_files(studio, tmp_path):
    up = tmp_path / "u"
    studio.index_files(studio.local, [_write(up, "one.txt", "alpha beta"), _write(up, "two.txt", "gamma delta")])
    with pytest.raises(KeyError, match="an empty name"):  # files_dir / "" would name every file
        studio.remove(studio.local, [""])
    removed = studio.remove(studio.local, ["one.txt"])
    assert [it.title for it in removed] == ["one.txt"] and not (studio.local.files_dir / "one.txt").exists()
    assert [it.title for it in studio.items(studio.local)] == ["two.txt"]
    assert [it.title for it in studio.clear(studio.local)] == ["two.txt"]  # what was removed, for the message
    assert studio.items(studio.local) == [] and not any(studio.local.files_dir.iterdir())


def test_text_results_get_a_card_thumbnail_written_once(studio, tmp_path):
    studio.index_files(studio.local, [_write(tmp_path / "u", "note.txt", "lantern harbour evening")])
    hit = studio.search(studio.encode_query("lantern"), None, 4, 8, k=1)[0]
    path = studio.thumbnail(hit, None)
    assert Image.open(io.BytesIO(Path(path).read_bytes())).size == (320, 320)
    assert studio.thumbnail(hit, None) == path  # served from the file written the first time


def test_private_sessions_keep_visitors_apart_and_end_with_their_files(tmp_path):
    model = FakeModel()
    studio = Studio(Engine(model=model, checkpoint_id="fake-0001", source="a fake"), tmp_path / "data",
                    private_sessions=True, sample_dir=None, limits=UploadLimits(), thumb_root=tmp_path / "t")
    try:
        alice, bob = studio.user_collection("alice"), studio.user_collection("bob")
        studio.index_files(alice, [_write(tmp_path / "a", "mine.txt", "secret garden roses")])
        assert studio.search(studio.encode_query("garden"), "bob", 4, 8) == []
        assert [h.path for h in studio.search(studio.encode_query("garden"), "alice", 4, 8)] == ["mine.txt"]
        folder = alice.root
        studio.end_session("alice")
        assert not folder.exists() and bob.root.exists()
        with pytest.raises(PermissionError):
            studio.switch_model(None)  # a shared deployment keeps its model
    finally:
        studio.close()


def test_a_collection_full_of_items_names_what_it_left_out(tmp_path):
    """The item cap stopped a 56-page PDF at page 34 and said only "the remaining files were not added": the
    PDF was then listed as an ordinary "PDF, 34 pages"."""
    studio = Studio(Engine(model=FakeModel(), checkpoint_id="fake-0001", source="a fake"), tmp_path / "data",
                    private_sessions=True, sample_dir=None, limits=UploadLimits(max_session_items=6),
                    thumb_root=tmp_path / "t")
    try:
        coll = studio.user_collection("alice")
        pdf = tmp_path / "u" / "guide.pdf"
        pdf.parent.mkdir(parents=True)
        pdf.write_bytes(make_pdf([[(72, 700, 12, f"page {n} words")] for n in range(10)]))
        note = _write(tmp_path / "u", "note.txt", "harbour lantern")
        report = studio.index_files(coll, [pdf, note])
        assert len(studio.items(coll)) == 8  # one batch of 8 pages went in before the cap of 6 was seen
        assert [e["error"].split(",")[0] for e in report["errors"]] == [
            "guide.pdf: only 8 of its 10 pages were added", "note.txt: not added"]
        assert all("limit of 6 items" in e["error"] for e in report["errors"])
    finally:
        studio.close()


def test_a_reloaded_page_finds_its_browsers_collection_until_it_idles_out(tmp_path):
    """Issue 17.5: each page load is a new Gradio session; the browser's key ties them to one collection."""
    studio = Studio(Engine(model=FakeModel(), checkpoint_id="fake-0001", source="a fake"), tmp_path / "data",
                    private_sessions=True, sample_dir=None, limits=UploadLimits(), thumb_root=tmp_path / "t")
    try:
        key = studio.bind_browser("page-1", None)  # first visit: a fresh random key for the browser to keep
        assert key and studio.bind_browser("page-x", "../../etc") != "../../etc"  # never a key made of input
        studio.index_files(studio.user_collection("page-1"), [_write(tmp_path / "a", "mine.txt", "quiet lake")])
        studio.end_session("page-1")  # F5: the old page unloads...
        assert studio.bind_browser("page-2", key) == key  # ...and the new one brings the key back
        assert [it.title for it in studio.items(studio.user_collection("page-2"))] == ["mine.txt"]
        assert studio.items(studio.user_collection("page-x")) == []  # another browser sees nothing of it
        studio.sessions.ttl_s = 0.001  # idling out still removes it
        time.sleep(0.01)
        studio.sessions.sweep()
        assert studio.items(studio.user_collection("page-2")) == []
    finally:
        studio.close()


def test_the_bundled_sample_collection_is_found():
    photos = [p for p in SAMPLE_DIR.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    assert SAMPLE_DIR.name == "examples" and SAMPLE_DIR.parent.name == "assets" and len(photos) >= 5


def test_a_space_keeps_its_data_on_a_mounted_bucket(tmp_path, monkeypatch):
    from app.service import studio as studio_mod

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert studio_mod.default_data_dir() == tmp_path / "xdg" / "metaembed-studio"
    monkeypatch.setenv("SPACE_ID", "someone/metaembed")
    monkeypatch.setattr(studio_mod, "SPACES_BUCKET", tmp_path / "no-bucket")
    assert studio_mod.default_data_dir() == tmp_path / "xdg" / "metaembed-studio"  # no bucket: the Space's disk
    (tmp_path / "bucket").mkdir()
    monkeypatch.setattr(studio_mod, "SPACES_BUCKET", tmp_path / "bucket")
    assert studio_mod.default_data_dir() == tmp_path / "bucket" / "metaembed-studio"


def test_the_start_says_what_it_indexed_in_plain_words(studio):
    _write(studio.local.files_dir, "note.txt", "harbour lantern")
    said: list[str] = []
    studio.prepare_in_background(log=said.append).join()
    assert [line.split(":")[0] for line in said] == ["indexed your collection"]  # was "indexed the your collection"


def test_a_query_from_the_cache_reports_no_encoding_time(studio):
    """A repeated query's caption said "encoded once, in 0 ms": the cache look-up's microseconds counted as an
    encode. Its encode_ms is 0 when the cache served it; the first one's is the model's time."""
    first = studio.encode_query("red panda")
    again = studio.encode_query("red panda")
    assert first.encode_ms > 0
    assert again.encode_ms == 0.0
    assert "“red panda”" == again.label
    assert studio.encode_query("<i>x</i>").label == "“&lt;i&gt;x&lt;/i&gt;”"


def test_the_app_makes_the_class_prior_vectors_at_start_not_at_a_first_upload(tmp_path):
    """MetaEmbed-Mini v3.1's class prior needs one vector per ImageNet class (~1 s to make): the app's start-up
    thread makes them, so a visitor's first upload does not wait for them."""
    from app.server import create_app
    from model import MetaEmbed, MetaEmbedConfig

    cfg = MetaEmbedConfig(front_end="visual-tokenizer", meta_attention="phrases", lora_r=None, embed_dim=None,
                          num_query_tokens=4, num_candidate_tokens=8, groups=[(1, 1), (4, 8)], class_prior=0.5)
    ckpt = MetaEmbed.from_config(cfg, device="cpu").save_pretrained(tmp_path / "ckpt")
    for wait in (True, False):  # started for a test or a script, and in the background as the app starts
        studio, demo = create_app(str(ckpt), tmp_path / f"data-{wait}", sample_dir=None, wait_for_samples=wait,
                                  log=lambda *a: None)
        try:
            assert studio.wait_for_samples(60)
            assert studio.engine.model._class_vectors is not None
        finally:
            demo.close()
            studio.close()


def test_warm_up_builds_the_maxsim_kernel_before_the_first_search(tmp_path, monkeypatch):
    import model.maxsim_kernel as maxsim_kernel

    loads = []
    monkeypatch.setattr(maxsim_kernel, "load", lambda: loads.append(1))
    s = Studio(Engine(model=FakeModel(), checkpoint_id="fake-0001", source="a fake"), tmp_path / "data",
               sample_dir=None, thumb_root=tmp_path / "thumbs")
    assert not loads
    s.warm_up()
    assert loads == [1]
    s.close()
