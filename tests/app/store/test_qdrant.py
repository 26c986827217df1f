"""app.store.qdrant: what the Qdrant store adds to the common store suite (tests/app/store/test_index.py):
scores equal to exact MaxSim, budgets rounded to stored fields, the prefetch path, paths inside folders and
zips, and every bad input as a clear message that loses nothing. Offline, through qdrant-client's local mode."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from app.store import IndexError_, QdrantStore, is_qdrant, open_store, open_store_for
from app.store.qdrant import EXACT_PREFETCH_ITEMS
from app.store.qdrant_schema import point_id, split_layout, stored_fields, under
from model.scoring import maxsim_dense
from tests.helpers import fake_items, unit

R_C, D = 64, 16


@pytest.fixture
def store(tmp_path):
    s = open_store_for(f"qdrant-local:{tmp_path / 'q'}", "ck", R_C, D)
    yield s
    s.close()


def test_specs_and_fields():
    assert is_qdrant("qdrant://localhost:6333/photos") and is_qdrant("qdrant-local:/tmp/x")
    assert not is_qdrant("/data/index") and not is_qdrant("qdrant-notes")
    assert stored_fields(64) == [1, 4, 8, 16, 64] and stored_fields(10) == [1, 4, 8, 10]
    assert under("/a/b.zip!/c/d.jpg") == ["/a", "/a/b.zip", "/a/b.zip!/c"]
    assert 0 <= point_id("0123456789abcdef") < 2**63 and point_id("a") != point_id("b")
    assert split_layout("qdrant://h:6333/c?shards=4&replicas=2") == ("qdrant://h:6333/c", {
        "shard_number": 4, "replication_factor": 2})
    with pytest.raises(IndexError_, match="shards=N and replicas=M"):
        split_layout("qdrant://h:6333/c?shard=4")


def test_search_equals_exact_maxsim_at_every_stored_budget(store):
    vecs = unit(40, R_C, D, seed=1)
    items = fake_items(40)
    ids = store.add(items, vecs)
    stored = vecs.bfloat16().float()  # both stores keep bf16-rounded vectors
    q = unit(16, D, seed=2)
    for budget in [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64), (3, 1)]:
        expected = maxsim_dense(q[None, : budget[0]], stored[:, : budget[1]])[0]
        hits = store.search(q, budget, k=5)
        want = torch.topk(expected, 5)
        by_point = {point_id(i): n for n, i in enumerate(ids)}
        assert [by_point[p] for p, _ in hits] == want.indices.tolist(), budget
        torch.testing.assert_close(torch.tensor([s for _, s in hits]), want.values, atol=1e-4, rtol=0)
    # The prefetch path (narrowing by first vectors) finds the item whose own vectors are the query.
    hits = store.search(stored[7, :16], (16, 64), k=3, exact=False, depth=5)
    assert hits[0][0] == point_id(ids[7])
    # Local mode's prefetch saves no work, so it always scores exactly; a server prefetches on large
    # collections, scanning every first vector up to EXACT_PREFETCH_ITEMS, then by HNSW with a wide beam.
    assert store.exact_for(64, depth=10)
    store._local = False
    assert store.exact_for(64) and not store.exact_for(64, depth=10) and store.exact_for(1, depth=10)
    assert store._prefetch_params(1000).exact is True
    store._approximate_count = lambda: EXACT_PREFETCH_ITEMS + 1
    assert store._prefetch_params(1000).hnsw_ef == 4000 and not store._prefetch_params(1000).exact


def test_a_server_collection_from_before_searches_by_kind_gets_its_kind_index(store):
    class Server:
        """The local collection, answering as a server would about its payload indexes."""

        def __init__(self, client, schema, fail=False):
            self.client, self.schema, self.fail, self.indexed = client, schema, fail, []

        def get_collection(self, name):
            return store._client.get_collection(name).model_copy(update={"payload_schema": self.schema})

        def create_payload_index(self, name, key, schema):
            if self.fail:
                raise RuntimeError("403: read-only API key")
            self.indexed.append(key)

    made_before = Server(store._client, {"path": "keyword"})
    QdrantStore(made_before, store.collection, "qdrant://qdrant.example:6333/photos")
    assert made_before.indexed == ["kind"]
    made_since = Server(store._client, {"path": "keyword", "kind": "keyword"})
    QdrantStore(made_since, store.collection, "qdrant://qdrant.example:6333/photos")
    assert made_since.indexed == []
    read_only = Server(store._client, {}, fail=True)
    assert QdrantStore(read_only, store.collection, "qdrant://qdrant.example:6333/photos").checkpoint_id == "ck"


def test_a_budget_between_fields_is_scored_at_the_next_field_up(store):
    vecs = unit(10, R_C, D, seed=3)
    store.add(fake_items(10), vecs)
    q = unit(16, D, seed=4)
    assert store.scored_budget((4, 5)) == (4, 8) and store.scored_budget((4, 8)) == (4, 8)
    assert store.search(q, (4, 5), k=10) == store.search(q, (4, 8), k=10)
    with pytest.raises(ValueError, match=r"budget \(4, 65\) is out of range"):
        store.search(q, (4, 65))


def test_items_under_a_folder_or_zip_are_removed_and_moves_follow(store):
    a = fake_items(2, prefix="/photos/2024")
    z = [replace(it, source=f"/photos/archive.zip!/x/{n}.jpg") for n, it in
         enumerate(fake_items(2, prefix="/zip"))]
    other = fake_items(1, prefix="/docs")
    store.add(a + z + other, unit(5, R_C, D, seed=5))
    assert store.move("/docs/0.txt", "/photos/2024/moved.txt", "moved.txt") == 1
    assert [it.title for it in store.items("/photos/2024/moved.txt")] == ["moved.txt"]
    zipped = store.remove(["/photos/archive.zip"])
    assert sorted(it.path for it in zipped) == [f"/photos/archive.zip!/x/{n}.jpg" for n in range(2)]
    assert [it.id for it in zipped] == sorted(it.id for it in zipped)
    assert len(store.remove(["/photos/2024/"])) == 3  # the moved item is under its new folder
    assert len(store) == 0
    with pytest.raises(KeyError, match="nothing in qdrant-local:.* matches '/photos'"):
        store.remove(["/photos"])


def test_ids_are_content_hash_prefixes_lengthened_on_a_clash(store):
    a, b = fake_items(2)
    a.content_hash, b.content_hash = "ab" * 8 + "1" * 48, "ab" * 8 + "2" * 48  # the same first 16 characters
    [first] = store.add([a], unit(1, R_C, D, seed=8))
    [second] = store.add([b], unit(1, R_C, D, seed=9))
    assert (first, second) == ("ab" * 8, "ab" * 8 + "2222")
    assert store.get(second).content_hash == b.content_hash and store.get(first).content_hash == a.content_hash


def test_metadata_thumbnails_and_vectors_round_trip(store):
    [item] = fake_items(1)
    item = replace(item, thumbnail=b"\xff\xd8jpeg", page=3, passage=1, char_span=(5, 9), text="page text",
                   words=[("page", (0.1, 0.2, 0.3, 0.4))])
    item.file_hash = "f" * 64  # which version of the file it came from (ingest Items carry it)
    vecs = unit(1, R_C, D, seed=6)
    [item_id] = store.add([item], vecs)
    got = store.get(item_id)
    assert (got.path, got.page, got.passage, got.char_span, got.text) == (item.source, 3, 1, (5, 9), "page text")
    assert got.words == [("page", (0.1, 0.2, 0.3, 0.4))] and got.rowid == point_id(item_id)
    assert store.thumbnail(item_id) == b"\xff\xd8jpeg"
    assert torch.equal(store.vectors(item_id), vecs[0].bfloat16())
    assert store.paths_of_file("f" * 64) == [item.source] and store.stale_ids(item.source, "e" * 64) == [item_id]
    info = store.info()
    assert (info["store"], info["items"], info["sources"], info["candidate_fields"]) == ("qdrant-local", 1, 1,
                                                                                          [1, 4, 8, 16, 64])
    with pytest.raises(KeyError, match="no item 'nope'"):
        store.get("nope")


def test_bad_input_is_a_clear_message_and_loses_nothing(tmp_path, store):
    store.add(fake_items(3), unit(3, R_C, D, seed=7))
    for bad in ["qdrant://", "qdrant://localhost:6333", "qdrant://host/a/b"]:
        with pytest.raises(IndexError_, match="expected qdrant://HOST:PORT/COLLECTION"):
            open_store(bad)
    # Port 9 (discard) on this machine: nothing listens, the connection is refused at once.
    with pytest.raises(IndexError_, match=r"cannot reach Qdrant at qdrant://127\.0\.0\.1:9/photos"):
        open_store_for("qdrant://127.0.0.1:9/photos", "ck", R_C, D)
    # Local mode serves one process: a second opening of the same folder says so.
    with pytest.raises(IndexError_, match="open in another process"):
        open_store(f"qdrant-local:{tmp_path / 'q'}")
    # A collection that MetaEmbed Studio did not make is refused, not written to.
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "foreign"))
    client.create_collection("metaembed", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    client.close()
    with pytest.raises(IndexError_, match="did not make"):
        open_store_for(f"qdrant-local:{tmp_path / 'foreign'}", "ck", R_C, D)
    with pytest.raises(ValueError, match=r"stores \[B, 64, 16\]"):
        store.add(fake_items(1, start=50), unit(1, R_C, D + 1))
    assert len(store) == 3 and isinstance(store, QdrantStore)
