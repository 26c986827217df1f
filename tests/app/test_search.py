"""app.search: cached query vectors, re-ranking at any budget, budget errors, result handles."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from app.indexing import index_paths
from app.search import Searcher, comparable_score, query_key
from app.store.index import CheckpointMismatch, Index
from model import MetaEmbed
from model.checkpoint import checkpoint_id
from model.scoring import maxsim
from tests.helpers import has_visual_tokenizer, write_texts


@pytest.fixture(scope="module")
def model(test_model):
    return test_model


@pytest.fixture(scope="module")
def index(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("search")
    write_texts(root / "notes", 12)
    idx = Index.create(root / "idx", checkpoint_id(model), model.config.num_candidate_tokens, model.config.embed_dim)
    index_paths(model, idx, [root / "notes"], ocr=None, batch_size=4)
    yield idx
    idx.close()


def all_vectors(index: Index) -> tuple[list[str], torch.Tensor]:
    items = index.items()
    return [it.id for it in items], torch.stack([index.vectors(it.id) for it in items])


def test_rerank_at_new_budgets_reuses_the_query_and_matches_fresh_scoring(model, index):
    searcher = Searcher(model, index)
    ids, cands = all_vectors(index)
    query = "glacier violin at dawn"
    for budget in list(model.config.presets) + [(3, 5), (16, 1)]:
        results = searcher.search(query, budget, k=5)
        assert results.budget == budget and len(results.hits) == 5
        fresh_q = model.encode_queries([query])
        ref = maxsim(fresh_q, cands, budget)[0]
        top = ref.topk(5)
        torch.testing.assert_close(torch.tensor([h.score for h in results.hits]), top.values, atol=1e-2, rtol=0)
        # Every hit's score is the fresh MaxSim of that very item.
        for hit in results.hits:
            assert abs(hit.score - float(ref[ids.index(hit.id)])) < 1e-2
        assert [h.rank for h in results.hits] == [1, 2, 3, 4, 5]
    assert searcher.encodes == 1  # the model ran once; every other budget reused the cached vectors
    # A second, fresh searcher gives the very same ranking.
    again = Searcher(model, index).search(query, (4, 8), k=5)
    assert [h.id for h in again.hits] == [h.id for h in searcher.search(query, (4, 8), k=5).hits]


def test_default_budget_is_the_largest_preset_and_hits_carry_metadata(model, index):
    searcher = Searcher(model, index)
    results = searcher.search("harbour lantern", k=3)
    assert results.budget == (16, 64) == searcher.check_budget(None)
    hit = results.hits[0]
    assert results.query_vectors.shape == (16, 128) and index.vectors(hit.id).shape == (64, 128)
    assert hit.kind == "text" and hit.path.endswith(".txt") and hit.page is None and hit.collection is None
    assert hit.title and hit.item.id == hit.id
    assert index.thumbnail(hit.id) == b""
    explained = searcher.explain("harbour lantern", hit.id, (2, 4))
    assert explained["sim"].shape == (2, 4)
    low = searcher.search("harbour lantern", (2, 4), k=20)
    assert abs(explained["score"] - next(h.score for h in low.hits if h.id == hit.id)) < 2e-2
    assert results.to_json()["results"][0] == {"rank": 1, "id": hit.id, "path": hit.path, "page": None,
                                               "score": hit.score, "comparable_score": hit.score / 16}
    assert hit.comparable == comparable_score(hit.score, 16) and low.hits[0].comparable == low.hits[0].score / 2


@pytest.mark.parametrize("budget, message", [
    ((0, 4), "r_q=0 is out of range: allowed 1..16"),
    ((17, 4), "r_q=17 is out of range: allowed 1..16"),
    ((4, 65), "r_c=65 is out of range: allowed 1..64"),
    ((4, 0), "r_c=0 is out of range"),
    ((True, 4), "r_q=True is out of range"),
    ((4.5, 8), "r_q=4.5 is out of range"),
    ((4,), "budget must be a pair"),
    ("4,8", "budget must be a pair"),
])
def test_budget_errors_name_the_allowed_range(model, index, budget, message):
    searcher = Searcher(model, index)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        searcher.search("cedar", budget)
    assert searcher.encodes == 0  # validation happens before any work


def test_whole_numbers_from_ui_fields_and_json_are_budgets(model, index):
    assert Searcher(model, index).check_budget((4.0, 8.0)) == (4, 8)


def test_bad_queries_and_k(model, index):
    searcher = Searcher(model, index)
    with pytest.raises(ValueError, match="query is empty"):
        searcher.search("   ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        searcher.search("cedar", k=0)
    with pytest.raises(ValueError, match="a query is a str or a PIL image"):
        searcher.search(42)
    with pytest.raises(ValueError, match="only must be one of everything, photos, documents, got 'pictures'"):
        searcher.search("cedar", only="pictures")
    # The index holds text files only: no photos to rank, and "everything" is no limit.
    assert searcher.search("cedar", only="photos").hits == []
    assert searcher.search("cedar", only="everything").hits == searcher.search("cedar").hits


def test_query_cache_is_lru_and_image_keys_follow_the_pixels(model, index):
    searcher = Searcher(model, index, cache_size=2)
    for q in ("one", "two", "one", "three", "one", "two"):
        searcher.query_vectors(q)
    assert searcher.encodes == 4  # "two" was evicted by "three" and encoded again
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    assert query_key(red) == query_key(red.copy()) != query_key(Image.new("RGB", (8, 8), (0, 0, 255)))


@pytest.mark.skipif(not has_visual_tokenizer(), reason="model.visual.VisualTokenizer has not landed yet")
def test_image_query_finds_more_like_this(tmp_path, model):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("red", (230, 20, 20)), ("green", (20, 200, 40)), ("blue", (20, 40, 230))):
        Image.new("RGB", (96, 64), colour).save(folder / f"{name}.png")
    idx = Index.create(tmp_path / "idx", checkpoint_id(model), 64, 128)
    index_paths(model, idx, [folder], ocr=None)
    results = Searcher(model, idx).search(Image.new("RGB", (96, 64), (230, 20, 20)), k=3)
    assert len(results.hits) == 3 and results.hits[0].kind == "image"
    assert results.to_json()["query"].startswith("<image ")


def test_searcher_refuses_a_model_of_another_checkpoint(other_checkpoint, index):
    other = MetaEmbed.from_pretrained(other_checkpoint, device="cpu")
    with pytest.raises(CheckpointMismatch, match="was built with checkpoint"):
        Searcher(other, index)


def test_large_budgets_switch_to_the_first_stage_with_the_same_results(model, index, monkeypatch):
    from app.store import index as index_module

    searcher = Searcher(model, index)
    exact = {b: searcher.search("copper tunnel", b, k=5) for b in [(2, 4), (16, 64)]}
    assert all(r.exact for r in exact.values())

    def planner(count, r_c, dim):  # pretend the collection is large; the real rule: tests/app/store/test_planner.py
        assert (count, dim) == (len(index), index.dim)
        return r_c <= 8

    monkeypatch.setattr(index_module, "uses_exact", planner)
    for budget, ref in exact.items():
        results = searcher.search("copper tunnel", budget, k=5)
        assert results.exact == (budget[1] <= 8)
        # The first stage's depth (1,000) covers this small index, so the ranking cannot change.
        assert [(h.id, h.score) for h in results.hits] == [(h.id, h.score) for h in ref.hits]
    assert searcher.encodes == 1


def test_the_weak_match_calibration_loads_only_for_its_own_weights(tmp_path):
    from app.search import CALIBRATION_NAME, Calibration, load_calibration

    (tmp_path / CALIBRATION_NAME).write_text(json.dumps({"checkpoint_id": "ck-1", "weak_match": {"1,1": 0.2},
                                                          "strong_part": {"1,1": 0.4, "4,8": 0.5, "16,64": 0.6}}))
    cal = load_calibration(tmp_path, "ck-1")
    assert cal == Calibration(0.2, {(1, 1): 0.4, (4, 8): 0.5, (16, 64): 0.6})
    assert load_calibration(tmp_path, "ck-2") is None and load_calibration(None, "ck-1") is None
    assert cal.strong_at((4, 8)) == 0.5 and cal.strong_at((6, 32)) == 0.5  # between presets: the one below
    assert Calibration(0.2, {(4, 8): 0.5, (16, 64): 0.6}).strong_at((2, 2)) == 0.5  # below every preset: the lowest
    assert Calibration(0.2).strong_at((4, 8)) == float("inf")  # no bars: the whole-query score alone
    # Flagged: far from everything as a whole, and no part matches strongly at the budget.
    assert cal.no_close_match(whole=0.1, best=0.45, budget=(4, 8))
    assert not cal.no_close_match(whole=0.1, best=0.65, budget=(16, 64))  # a word found word for word
    assert not cal.no_close_match(whole=0.3, best=0.2, budget=(4, 8))  # close as a whole
    # Older files listed one threshold per preset: their (1,1) one is the whole-query threshold, with no bars.
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps({"checkpoint_id": "ck-1",
                                                          "weak_match": {"1,1": 0.2, "4,8": 0.3, "16,64": 0.4}}))
    assert load_calibration(tmp_path, "ck-1") == Calibration(0.2, {})
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps({"checkpoint_id": "ck-1", "weak_match": {"4,8": 0.3}}))
    assert load_calibration(tmp_path, "ck-1") is None  # no whole-query threshold: nothing is flagged
    (tmp_path / CALIBRATION_NAME).write_text("{not json")
    assert load_calibration(tmp_path, "ck-1") is None  # a damaged file flags nothing rather than failing


def test_the_bundled_checkpoint_is_calibrated_for_its_own_weights():
    from app.search import load_calibration
    from model.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id_of_folder

    cal = load_calibration(DEFAULT_CHECKPOINT, checkpoint_id_of_folder(DEFAULT_CHECKPOINT))
    assert cal is not None and 0 < cal.weak_below < 1
    assert set(cal.strong_part) == {tuple(p) for p in MetaEmbed.from_pretrained(DEFAULT_CHECKPOINT).config.presets}
    assert all(cal.weak_below < bar < 1 for bar in cal.strong_part.values())
