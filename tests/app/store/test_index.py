"""app.store + app.indexing: storage, ingest of every kind, duplicates, remove, reload, atomicity.

Tests marked with the `kind` parameter run against every store: the embedded index and Qdrant (through
qdrant-client's local mode, offline); the rest test the embedded index's own files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading

import numpy as np
import pytest
import torch

from app.indexing import encoder_input, index_paths, read_ahead
from app.ingest import ingest
from app.store import db as db_module
from app.store import index as index_module
from app.store import open_store, open_store_for
from app.store import segments as segments_module
from app.store.first_stage import NPROBE, probes
from app.store.index import CheckpointMismatch, Index, IndexError_
from model.checkpoint import checkpoint_id, checkpoint_id_of_folder
from tests.helpers import fake_items, has_visual_tokenizer, unit, write_mixed_corpus, write_texts


@pytest.fixture(scope="module")
def model(test_model):
    return test_model


# A Qdrant server joins the suite when QDRANT_URL is set (e.g. http://localhost:6333).
QDRANT_URL = os.environ.get("QDRANT_URL", "")
STORES = ["index", "qdrant-local",
          pytest.param("qdrant-server", marks=[pytest.mark.qdrant_server,
                                               pytest.mark.skipif(not QDRANT_URL, reason="QDRANT_URL is not set")])]
every_store = pytest.mark.parametrize("kind", STORES)


def spec(path, kind: str = "index") -> str:
    """What a user passes for a store of this kind at `path` (--index DIR or --store qdrant-local:DIR)."""
    if kind == "qdrant-server":  # one fresh collection per test folder
        host = QDRANT_URL.split("://", 1)[-1].rstrip("/")
        scheme = "qdrants://" if QDRANT_URL.startswith("https") else "qdrant://"
        return f"{scheme}{host}/metaembed-test-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    return str(path) if kind == "index" else f"qdrant-local:{path}"


def new_index(path, model, kind: str = "index"):
    if kind == "index":
        return Index.create(path, checkpoint_id(model), model.config.num_candidate_tokens, model.config.embed_dim)
    return open_store_for(spec(path, kind), checkpoint_id(model), model.config.num_candidate_tokens,
                          model.config.embed_dim)


# -------------------------------------------------------------------------------------- with the model


@every_store
def test_every_input_kind_is_indexed_through_ingest(tmp_path, model, kind):
    images = has_visual_tokenizer()
    files = write_mixed_corpus(tmp_path / "in", images=images)
    index = new_index(tmp_path / "idx", model, kind)
    run = index_paths(model, index, [tmp_path / "in"], ocr=None, batch_size=3)
    assert run.errors == []
    items = index.items()
    assert len(items) == len(run.indexed) == len(index)
    by_path = {}
    for it in items:
        by_path.setdefault(it.path, []).append(it)
    assert set(by_path) == ({str(p.resolve()) for k, p in files.items() if k != "zip"}
                            | {f"{files['zip'].resolve()}!/inner/poem.txt"})
    pdf_pages = by_path[str(files["pdf"].resolve())]
    assert [(p.kind, p.page) for p in pdf_pages] == [("pdf_page", 1), ("pdf_page", 2)]
    assert "Quarterly" in pdf_pages[0].text and {w for w, _ in pdf_pages[0].words} >= {"Quarterly", "report"}
    assert index.thumbnail(pdf_pages[0].id)[:2] == b"\xff\xd8"  # a JPEG
    txt = by_path[str(files["txt"].resolve())][0]
    assert txt.kind == "text" and txt.page is None and txt.char_span == (0, len(txt.text))
    assert index.thumbnail(txt.id) == b""
    if images:
        assert by_path[str(files["png"].resolve())][0].kind == "image"

    # The stored vectors are the model's encoding of each item, rounded to bf16.
    report = ingest([tmp_path / "in"], ocr=None)
    expected = model.encode_candidates([encoder_input(it) for it in report.items])
    for it, vec in zip(report.items, expected):
        stored = index.vectors(it.content_hash[:16])
        assert stored.dtype == torch.bfloat16 and stored.shape == vec.shape
        torch.testing.assert_close(stored.float(), vec.bfloat16().float(), atol=2e-2, rtol=0)


@every_store
def test_duplicates_are_indexed_once_and_reruns_skip_everything(tmp_path, model, kind):
    folder = tmp_path / "in"
    write_texts(folder, 3)
    (folder / "copy-of-0.txt").write_bytes((folder / "note-000.txt").read_bytes())
    index = new_index(tmp_path / "idx", model, kind)
    first = index_paths(model, index, [folder], ocr=None)
    assert len(first.indexed) == 3 and len(first.skipped_duplicates) == 1
    assert first.skipped_duplicates[0].endswith("note-000.txt") or first.skipped_duplicates[0].endswith("copy-of-0.txt")
    again = index_paths(model, index, [folder], ocr=None)
    assert again.indexed == [] and len(again.skipped_duplicates) == 4
    assert len(index) == 3 and len(index.known_hashes()) == 3


@every_store
def test_an_edited_file_replaces_its_old_version(tmp_path, model, kind):
    folder = tmp_path / "in"
    edited, other = write_texts(folder, 2)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [folder], ocr=None)
    other_ids = [it.id for it in index.items(str(other.resolve()))]
    edited.write_text("Completely rewritten: the lighthouse keeper's logbook for the winter storms.\n")
    run = index_paths(model, index, [folder], ocr=None)
    assert run.replaced == [str(edited.resolve())] and len(run.indexed) == 1
    assert [it.text for it in index.items(str(edited.resolve()))] == [edited.read_text().strip()]
    assert [it.id for it in index.items(str(other.resolve()))] == other_ids  # untouched
    assert len(index) == 2
    again = index_paths(model, index, [folder], ocr=None)
    assert again.replaced == [] and again.indexed == [] and len(index) == 2


@every_store
def test_a_copy_of_an_edited_files_old_version_keeps_an_item(tmp_path, model, kind):
    """Issue 19.2: `cp a.txt copy.txt`, edit a.txt, index both: copy.txt was reported "already indexed" while
    the item it matched (a.txt's old version) was being removed, so its text could not be found."""
    folder = tmp_path / "in"
    [original] = write_texts(folder, 1)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [original], ocr=None)
    old_text = original.read_text().strip()
    copy = folder / "copy.txt"
    copy.write_text(original.read_text())
    original.write_text("Completely rewritten: the lighthouse keeper's logbook for the winter storms.\n")
    run = index_paths(model, index, [original, copy], ocr=None)
    assert run.replaced == [str(original.resolve())]
    assert [it.text for it in index.items(str(copy.resolve()))] == [old_text]  # the copy's content exists
    assert str(copy.resolve()) not in run.skipped_duplicates
    assert sorted(e.path for e in run.indexed) == sorted([str(original.resolve()), str(copy.resolve())])
    assert len(index) == 2


@every_store
def test_a_renamed_file_takes_its_items_along(tmp_path, model, kind):
    """Issue 19.13: after `mv a.txt b.txt`, indexing b.txt said "already indexed" and results kept pointing at
    the deleted a.txt. A copy (old path still there) stays a plain duplicate."""
    folder = tmp_path / "in"
    first, second = write_texts(folder, 2)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [folder], ocr=None)
    ids = [it.id for it in index.items(str(first.resolve()))]
    renamed = folder / "renamed.txt"
    first.rename(renamed)
    copy = folder / "copy.txt"
    copy.write_text(second.read_text())
    run = index_paths(model, index, [renamed, copy], ocr=None)
    assert run.moved == [(str(first.resolve()), str(renamed.resolve()))]
    assert run.indexed == [] and run.skipped_duplicates == [str(copy.resolve())]
    assert index.items(str(first.resolve())) == []
    moved = index.items(str(renamed.resolve()))
    assert [it.id for it in moved] == ids and moved[0].title == "renamed.txt"  # same items, no re-encoding
    assert run.to_json()["moved"] == [{"from": str(first.resolve()), "to": str(renamed.resolve())}]


@every_store
def test_an_edited_file_that_fails_keeps_its_old_version(tmp_path, model, kind):
    (path,) = write_texts(tmp_path / "in", 1)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [path], ocr=None)
    before = index.items()
    path.write_bytes(b"binary\x00junk")
    run = index_paths(model, index, [path], ocr=None)
    assert run.errors and run.replaced == []
    assert [it.id for it in index.items()] == [it.id for it in before]


@every_store
def test_an_interrupted_replacement_finishes_on_the_next_run(tmp_path, model, kind):
    (path,) = write_texts(tmp_path / "in", 1)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [path], ocr=None)
    old_ids = [it.id for it in index.items()]
    path.write_text("The second version of this note talks about sourdough bread.\n")
    new_items = ingest([path], ocr=None).items  # the new version got in; the run stopped before the clean-up
    index.add(new_items, model.encode_candidates([encoder_input(it) for it in new_items]))
    assert len(index) == 2
    run = index_paths(model, index, [path], ocr=None)
    assert run.indexed == [] and run.replaced == [str(path.resolve())]
    assert [it.id for it in index.items()] != old_ids and len(index) == 1


def test_an_index_from_before_file_versions_opens_and_keeps_everything(tmp_path, model):
    import sqlite3

    (path,) = write_texts(tmp_path / "in", 1)
    index = new_index(tmp_path / "idx", model)
    index_paths(model, index, [path], ocr=None)
    index.close()
    conn = sqlite3.connect(tmp_path / "idx" / index_module.DB_NAME)
    conn.execute("ALTER TABLE items DROP COLUMN file_sha256")
    conn.commit()
    conn.close()
    index = Index.open(tmp_path / "idx", checkpoint_id(model))
    path.write_text("An edited note about mountain huts.\n")
    run = index_paths(model, index, [path], ocr=None)
    # Its old items have no recorded version, so they are never called stale; the new one has one.
    assert run.replaced == [] and len(index) == 2
    path.write_text("A third version, about rivers.\n")
    run = index_paths(model, index, [path], ocr=None)
    assert run.replaced == [str(path.resolve())] and len(index) == 2


@every_store
def test_remove_by_id_file_and_folder_then_reload(tmp_path, model, kind, monkeypatch):
    write_texts(tmp_path / "a", 3)
    write_texts(tmp_path / "b", 2, start=10)
    index = new_index(tmp_path / "idx", model, kind)
    index_paths(model, index, [tmp_path / "a", tmp_path / "b"], ocr=None, batch_size=2)
    items = index.items()
    keep_vectors = {it.id: index.vectors(it.id) for it in items}
    first = items[0]
    assert index.remove([first.id]) == [first]  # the removed items, as they were
    removed = index.remove([str(tmp_path / "a" / "note-001.txt")])
    assert [it.path for it in removed] == [str(tmp_path / "a" / "note-001.txt")]
    assert index.remove([str(tmp_path / "b")]) == sorted((it for it in items if "/b/" in it.path), key=lambda it: it.id)
    with pytest.raises(KeyError, match="nothing in .* matches 'no-such-id'"):
        index.remove(["no-such-id"])
    # An empty target (an unset shell variable) named the working directory, so everything indexed under it.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyError, match="nothing in .* matches '', '  '"):
        index.remove(["", "  "])
    index.compact()
    index.close()

    reopened = open_store(spec(tmp_path / "idx", kind), checkpoint_id(model))
    left = reopened.items()
    assert [it.path for it in left] == [str((tmp_path / "a" / "note-002.txt").resolve())]
    assert torch.equal(reopened.vectors(left[0].id), keep_vectors[left[0].id])
    assert reopened.info()["items"] == 1 and reopened.info().get("dead_rows", 0) == 0
    hits = reopened.search(model.encode_queries(["note"])[0], (16, 64), k=10)
    assert [rowid for rowid, _ in hits] == [left[0].rowid]


@every_store
def test_checkpoint_mismatch_is_a_clear_error(test_checkpoint, tmp_path, model, kind):
    index = new_index(tmp_path / "idx", model, kind)
    index.close()
    assert checkpoint_id(model) == checkpoint_id_of_folder(test_checkpoint)
    where = spec(tmp_path / "idx", kind)
    with pytest.raises(CheckpointMismatch, match="vectors of different checkpoints cannot be compared"):
        open_store(where, "another-checkpoint-0123")
    with pytest.raises(CheckpointMismatch):
        open_store_for(where, "another-checkpoint-0123", 64, 128)
    r_c, dim = model.config.num_candidate_tokens, model.config.embed_dim
    with pytest.raises(IndexError_, match=f"stores {r_c}x{dim} vectors per item, the model makes {r_c}x{dim + 1}"):
        open_store_for(where, checkpoint_id(model), r_c, dim + 1)
    with pytest.raises(FileNotFoundError, match="does not exist|holds no collection"):
        open_store(spec(tmp_path / "missing", kind))
    with open_store(where, checkpoint_id(model)) as store:  # the failures above left it as it was
        assert (store.num_vectors, store.dim) == (r_c, dim)
    if kind == "index":
        with pytest.raises(IndexError_, match="already holds an index"):
            new_index(tmp_path / "idx", model)


# --------------------------------------------------------------------------------- storage, no model


def test_add_is_atomic_when_a_write_fails(tmp_path, monkeypatch):
    index = Index.create(tmp_path / "idx", "ck", 8, 16)
    index.add(fake_items(4), unit(4, 8, 16))
    before = (len(index), index.info()["segments"])

    def broken_insert(*args, **kwargs):
        raise OSError("disk full")

    # Fail after the segment file is written but before the rows are committed.
    monkeypatch.setattr(index, "_new_id", broken_insert)
    with pytest.raises(OSError, match="disk full"):
        index.add(fake_items(3, start=100), unit(3, 8, 16, seed=1))
    monkeypatch.undo()
    assert (len(index), index.info()["segments"]) == before
    index.close()

    reopened = Index.open(tmp_path / "idx")
    assert len(reopened) == 4
    reopened.add(fake_items(1, start=200), unit(1, 8, 16, seed=2))  # the next writer sweeps the orphan
    files = sorted(p.name for p in (tmp_path / "idx" / "segments").iterdir())
    assert len(files) == reopened.info()["segments"]
    assert len(reopened) == 5


@every_store
def test_add_rejects_bad_shapes_and_skips_known_hashes(tmp_path, kind):
    index = open_store_for(spec(tmp_path / "idx", kind), "ck", 8, 16)
    with pytest.raises(ValueError, match=r"stores \[B, 8, 16\]"):
        index.add(fake_items(2), unit(2, 4, 16))
    with pytest.raises(ValueError, match="2 items but 3"):
        index.add(fake_items(2), unit(3, 8, 16))
    items = fake_items(3)
    assert None not in index.add(items, unit(3, 8, 16))
    ids = index.add(items[1:] + fake_items(1, start=9), unit(3, 8, 16, seed=3))
    assert ids[:2] == [None, None] and ids[2] is not None and len(index) == 4


@pytest.mark.parametrize("fast_path", ["bf16", "fp32"])
def test_segments_stay_few_and_search_matches_exact_scoring(tmp_path, monkeypatch, fast_path):
    import model.scoring as scoring

    # Both fast paths on any CPU: bf16 (then a precise re-scoring of the near-ties) or fp32 (none needed).
    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: fast_path == "bf16")
    monkeypatch.setattr(scoring, "_FP32_MIN_ROWS", 1)
    precise_calls = []
    score_rows = segments_module.View.score_rows

    def spy(self, qb, budget, candidates, precise=False):
        precise_calls.append(precise)
        return score_rows(self, qb, budget, candidates, precise)

    monkeypatch.setattr(segments_module.View, "score_rows", spy)
    gather_calls = []
    gather = segments_module._gather
    monkeypatch.setattr(segments_module, "_gather", lambda jobs: gather_calls.append(len(jobs)) or gather(jobs))
    index = Index.create(tmp_path / "idx", "ck", 8, 16)
    vectors = unit(700, 8, 16, seed=4)
    items = fake_items(700)
    for start in range(0, 700, 25):
        index.add(items[start:start + 25], vectors[start:start + 25])
    info = index.info()
    assert info["items"] == 700 and info["segments"] <= 8  # binary-counter merging: O(log n) segments
    order = {it.rowid: int(it.path.rsplit("/", 1)[1].split(".")[0]) for it in index.items()}
    query = unit(4, 16, seed=5)
    monkeypatch.setattr(index_module.FirstStage, "build", _small_build(index_module.FirstStage.build))
    for budget in [(1, 1), (2, 4), (4, 8)]:
        # The top results are ranked by fp32 MaxSim over the stored (bf16) vectors.
        r_q, r_c = budget
        ref = torch.einsum("id,njd->nij", query[:r_q].double(), vectors[:, :r_c].bfloat16().double())
        ref = ref.amax(-1).sum(-1)
        exact = index.search(query, budget, k=20, exact=True)
        np.testing.assert_allclose([s for _, s in exact], ref.topk(20).values.numpy(), atol=1e-5)
        np.testing.assert_allclose([s for _, s in exact], ref[[order[r] for r, _ in exact]].numpy(), atol=1e-5)
        # Two-stage with a depth covering everything is exact; the first stage is persisted and reused.
        gathers = len(gather_calls)
        full = index.search(query, budget, k=20, exact=False, depth=700)
        assert [s for _, s in full] == [s for _, s in exact]
        # Where the scorer reads candidates by index (the kernel, or fp32 blocks), none are gathered first.
        assert (len(gather_calls) == gathers) == scoring.scores_in_place(r_q, 16)
        # An index too big for the page cache gathers first (threaded or not), then scores: the same results
        # (on the fp32 path the scores up to fp32 rounding, the blocks being others).
        monkeypatch.setattr(segments_module, "page_cache_bytes", lambda: 0)
        for min_rows in (0, 8192):
            monkeypatch.setattr(segments_module, "_GATHER_MIN_ROWS", min_rows)
            gathers = len(gather_calls)
            gathered = index.search(query, budget, k=20, exact=False, depth=700)
            assert len(gather_calls) > gathers
            assert [r for r, _ in gathered] == [r for r, _ in full]
            np.testing.assert_allclose([s for _, s in gathered], [s for _, s in full], rtol=0, atol=1e-5)
        monkeypatch.setattr(segments_module, "page_cache_bytes", lambda: 1 << 40)
    assert list((tmp_path / "idx").glob("first_stage.*.faiss"))
    assert any(precise_calls) == (fast_path == "bf16")


def _small_build(build):
    def wrapped(first, rowids, seed=0):
        import app.store.first_stage as fs

        old = fs.TRAIN_PER_LIST
        fs.TRAIN_PER_LIST = 1  # tiny test collections: let faiss train on few points per list
        try:
            return build(first, rowids, seed)
        finally:
            fs.TRAIN_PER_LIST = old
    return wrapped


def test_removed_items_never_come_back_from_the_first_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module.FirstStage, "build", _small_build(index_module.FirstStage.build))
    index = Index.create(tmp_path / "idx", "ck", 4, 16)
    vectors = unit(200, 4, 16, seed=6)
    index.add(fake_items(200), vectors)
    query = vectors[7]
    best = index.search(query, (4, 4), k=1, exact=False, depth=200)[0][0]
    victim = index.get_many([best])[best]
    index.remove([victim.id])
    after = index.search(query, (4, 4), k=5, exact=False, depth=200)
    assert best not in [r for r, _ in after] and len(after) == 5
    with pytest.raises(KeyError):
        index.vectors(victim.id)


@every_store
def test_search_by_kind_ranks_only_those_items_as_among_everything(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(index_module.FirstStage, "build", _small_build(index_module.FirstStage.build))
    monkeypatch.setattr(index_module, "FIRST_STAGE_DEPTH", 16)  # a few of many are scored 16 at a time
    index = open_store_for(spec(tmp_path / "idx", kind), "ck", 4, 16)
    # 300 items: 6 photos, the rest pages and passages, as a folder of PDFs with a few pictures.
    kinds = ["image" if i % 50 == 0 else ("pdf_page" if i % 2 else "text") for i in range(300)]
    items = [dataclasses.replace(it, kind=k) for it, k in zip(fake_items(300), kinds, strict=True)]
    vectors = unit(300, 4, 16, seed=8)
    index.add(items, vectors)
    query = vectors[1]  # a page's own vectors: the pages outrank every photo
    everything = index.search(query, (4, 4), k=300, exact=True)
    kind_of = {pid: it.kind for pid, it in index.get_many([pid for pid, _ in everything]).items()}
    for wanted in ({"image"}, {"pdf_page", "text"}, {"text"}):
        expected = [(pid, s) for pid, s in everything if kind_of[pid] in wanted][:5]
        found = index.search(query, (4, 4), k=5, exact=True, kinds=wanted)
        assert [pid for pid, _ in found] == [pid for pid, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
    photos = [pid for pid, _ in everything if kind_of[pid] == "image"]
    if kind == "index":
        plan = index._conn.execute("EXPLAIN QUERY PLAN SELECT rowid FROM items WHERE kind IN ('image')").fetchall()
        assert "items_kind" in str([tuple(r) for r in plan])
        # Two-stage: the first stage looks among the photos alone, so a depth of 10 (of 300 items) still
        # hands all six to the re-rank, and a removed photo never comes back.
        assert sorted(pid for pid, _ in index.search(query, (4, 4), k=6, exact=False, depth=10,
                                                       kinds={"image"})) == sorted(photos)
        index.remove([index.get_many([photos[0]])[photos[0]].id])
        again = index.search(query, (4, 4), k=6, exact=False, depth=10, kinds="image")
        assert sorted(pid for pid, _ in again) == sorted(photos[1:])
    for bad in ({"photo"}, set()):
        with pytest.raises(ValueError, match="kinds must be some of image, pdf_page, text"):
            index.search(query, (4, 4), k=5, kinds=bad)
    index.close()


def test_the_first_stage_probes_enough_lists_for_the_allowed_items(monkeypatch):
    import app.store.first_stage as fs

    # 4,000 items in 63 lists, of which 4 are probed for the whole collection; 40 allowed items lie in most
    # lists, so all of them are found only when the lists are counted for the 40.
    monkeypatch.setattr(fs, "NPROBE", 1)
    monkeypatch.setattr(fs, "MIN_SCANNED", 250)
    firsts = unit(4_000, 1, 16, seed=9)[:, 0].float().numpy()
    stage = fs.FirstStage.build(firsts, np.arange(1, 4_001))
    ivf = fs.faiss.extract_index_ivf(stage.index)
    assert probes(ivf.nlist, stage.size) < ivf.nlist // 8
    allowed = np.arange(1, 4_001, 100)
    assert sorted(stage.search(firsts[0], 40, allowed).tolist()) == allowed.tolist()
    assert set(stage.search(firsts[0], 40).tolist()) != set(allowed.tolist())


def test_small_collections_are_scanned_whole_by_the_first_stage():
    assert probes(100, 10_000) == 100  # 10,000 items: every list
    assert probes(16, 300) == 16
    assert probes(1_000, 1_000_000) == NPROBE  # a million: 32 of 1,000 lists, as measured
    assert NPROBE < probes(316, 100_000) < 316


def test_segment_names_are_never_reused_and_budgets_are_checked(tmp_path):
    index = Index.create(tmp_path / "idx", "ck", 4, 8)
    retired: set[str] = set()
    live: set[str] = set()
    for round_ in range(6):
        index.add(fake_items(5, start=round_ * 10), unit(5, 4, 8, seed=round_))
        now = {p.name for p in (tmp_path / "idx" / "segments").iterdir()}
        retired |= live - now
        assert not (now & retired), "a merged-away segment's file name came back"
        live = now
    index.remove([it.id for it in index.items()])
    index.add(fake_items(2, start=999), unit(2, 4, 8, seed=9))
    assert not ({p.name for p in (tmp_path / "idx" / "segments").iterdir()} & (retired | live))
    q = unit(3, 8, seed=1)
    for bad in [(4, 1), (1, 5), (0, 1), (1, 0)]:
        with pytest.raises(ValueError, match="out of range"):
            index.search(q, bad)
    assert len(index.search(q, (3, 4), k=5)) == 2


def test_shared_thumbnails_are_stored_once_and_dropped_with_their_last_item(tmp_path):
    import sqlite3

    index = Index.create(tmp_path / "idx", "ck", 4, 8)
    items = fake_items(3)
    items[0].thumbnail = items[1].thumbnail = b"\xff\xd8 page jpeg"  # a page and its passage
    items[0].words = [("Hello", (0.123456, 0.2, 0.3, 0.4))]
    ids = index.add(items, unit(3, 4, 8))
    db = sqlite3.connect(tmp_path / "idx" / "index.sqlite")
    assert db.execute("SELECT COUNT(*) FROM thumbnails").fetchone()[0] == 1
    assert index.thumbnail(ids[1]) == b"\xff\xd8 page jpeg" and index.thumbnail(ids[2]) == b""
    assert index.get(ids[0]).words == [("Hello", (0.1235, 0.2, 0.3, 0.4))]
    index.remove([ids[0]])
    assert index.thumbnail(ids[1]) == b"\xff\xd8 page jpeg"
    index.remove([ids[1]])
    assert db.execute("SELECT COUNT(*) FROM thumbnails").fetchone()[0] == 0


# ------------------------------------------------------------------------------------- read-ahead ingest


def test_read_ahead_keeps_order_and_reports_progress_in_the_callers_thread():
    caller = threading.get_ident()
    seen = []

    def produce(report):
        for i in range(20):
            report(i, 20, f"f{i}")
            yield i

    def progress(done, total, name):
        seen.append((done, threading.get_ident()))

    out = []
    for item in read_ahead(produce, progress, depth=3):
        out.append(item)
        assert len(seen) == item + 1  # each file's progress arrives before its item
    assert out == list(range(20))
    assert [d for d, _ in seen] == list(range(20)) and {t for _, t in seen} == {caller}


def test_read_ahead_raises_the_producers_error_and_stops_early_when_the_caller_does():
    def failing(report):
        yield 1
        raise ValueError("broken archive")

    with pytest.raises(ValueError, match="broken archive"):
        list(read_ahead(failing))
    with pytest.raises(ValueError, match="depth"):
        list(read_ahead(failing, depth=0))

    produced, closed = [], threading.Event()

    def endless(report):
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            closed.set()  # the generator was closed (its archives would be closed here)

    events = read_ahead(endless, depth=2)
    assert [next(events) for _ in range(3)] == [0, 1, 2]
    events.close()
    assert closed.is_set() and len(produced) <= 3 + 2 + 1
    assert not [t for t in threading.enumerate() if t.name == "ingest-read-ahead"]


def test_index_paths_progress_runs_in_the_callers_thread(tmp_path, model):
    files = write_mixed_corpus(tmp_path / "in", images=False)
    calls = []
    index = new_index(tmp_path / "idx", model)
    run = index_paths(model, index, [tmp_path / "in"], ocr=None,
                      progress=lambda done, total, name: calls.append((done, total, threading.get_ident())))
    assert run.errors == [] and len(index) == len(run.indexed) > 0
    total = calls[-1][1]
    done = [c[0] for c in calls]  # a PDF of several pages reports each page as a share of its file
    assert total == len(files) and done == sorted(done) and set(range(total + 1)) <= set(done)
    assert [d for d in done if d != int(d)] == [3.5]  # report.pdf's second page of two
    assert {c[2] for c in calls} == {threading.get_ident()}


def test_a_read_only_index_searches_and_refuses_changes_clearly(tmp_path, monkeypatch):
    """Issue 19.5: `info`, `search` and `index` crashed on PRAGMA journal_mode=WAL when the index's files or
    disk were read-only. (Root ignores file modes, so the test makes the files look unwritable to the index.)"""
    index = Index.create(tmp_path / "idx", "ckpt", 8, 16)
    vecs = unit(4, 8, 16)
    index.add(fake_items(4), vecs)
    expected = index.search(vecs[2, :2], (2, 8), k=1)
    index.close()
    real_access = db_module.os.access
    monkeypatch.setattr(db_module.os, "access",
                        lambda path, mode: False if mode == db_module.os.W_OK else real_access(path, mode))
    with Index.open(tmp_path / "idx", "ckpt") as ro:
        assert ro.read_only and len(ro) == 4 and ro.info()["items"] == 4
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite itself refuses writes
            ro._conn.execute("INSERT INTO meta(key, value) VALUES ('x', 'y')")
        assert ro.search(vecs[2, :2], (2, 8), k=1) == expected
        with pytest.raises(IndexError_, match="read-only.*can be searched but not changed"):
            ro.add(fake_items(1, start=50), unit(1, 8, 16, seed=3))
        with pytest.raises(IndexError_, match="read-only"):
            ro.remove([ro.items()[0].id])
    monkeypatch.undo()
    with Index.open(tmp_path / "idx", "ckpt") as rw:  # nothing was changed, and it is writable again
        assert not rw.read_only and len(rw) == 4


def test_an_index_of_an_earlier_bundled_model_says_to_index_the_files_again():
    """After an upgrade the bundled MetaEmbed-Mini has a new id; the message told users to use "the index's
    checkpoint (the bundled MetaEmbed-Mini)", which the install no longer has."""
    from app.store.errors import mismatch_message

    upgraded = mismatch_message("index /x", "metaembed-mini-6741cac0abf320ee", "", "metaembed-mini-efe577d2f3defa71",
                                "index folder")
    assert "earlier version of the bundled MetaEmbed-Mini" in upgraded and "into a new index folder" in upgraded
    assert "Use the" not in upgraded
    other = mismatch_message("qdrant://h/c", "qwen-metaembed-0123", "/runs/qwen", "metaembed-mini-efe5", "collection")
    assert other.endswith("Use the collection's checkpoint (/runs/qwen) or a new collection")
    bundled_other_name = mismatch_message("index /x", "metaembed-mini-6741", "", "qwen-metaembed-0123", "index folder")
    assert "Use the index folder's checkpoint (the bundled MetaEmbed-Mini)" in bundled_other_name
