"""python -m app.cli eval: the metric functions on hand-made rankings, page aggregation, every bad-input
message, and one end-to-end run on a tiny folder with the session's untrained test checkpoint."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import cli, evaluation
from app.evaluation import (
    EvalInputError,
    Query,
    _evaluate_scores,
    compare_reports,
    comparison_markdown,
    files_to_index,
    load_queries,
    markdown,
    mrr,
    ndcg_at_k,
    per_query_ranks,
    rank_units,
    recall_at_k,
    self_similarity,
    unit_name,
)
from tests.helpers import REPO, make_pdf

# ------------------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_made_rankings():
    ranking = ["a", "b", "c", "d", "e", "f"]
    # One relevant unit at rank 2.
    assert mrr(ranking, {"b"}) == 0.5
    assert recall_at_k(ranking, {"b"}, 1) == 0.0
    assert recall_at_k(ranking, {"b"}, 5) == 1.0
    assert ndcg_at_k(ranking, {"b"}, 10) == pytest.approx(1 / math.log2(3))
    # Two relevant units at ranks 1 and 6: Recall@5 is the fraction found, not "at least one".
    assert mrr(ranking, {"a", "f"}) == 1.0
    assert recall_at_k(ranking, {"a", "f"}, 1) == 0.5
    assert recall_at_k(ranking, {"a", "f"}, 5) == 0.5
    assert recall_at_k(ranking, {"a", "f"}, 6) == 1.0
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(ranking, {"a", "f"}, 10) == pytest.approx((1 + 1 / math.log2(7)) / ideal)
    assert ndcg_at_k(ranking, {"a", "f"}, 5) == pytest.approx(1 / ideal)  # rank 6 is past the cutoff
    # Ranked first: every metric is 1. Not ranked at all: 0.
    assert ndcg_at_k(ranking, {"a", "b"}, 10) == pytest.approx(1.0)
    assert mrr(ranking, {"z"}) == 0.0 and recall_at_k(ranking, {"z"}, 5) == 0.0 and ndcg_at_k(ranking, {"z"}) == 0.0
    # The ideal DCG counts all relevant units up to the cutoff: 3 relevant, one found at rank 1.
    assert ndcg_at_k(ranking, {"a", "x", "y"}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    with pytest.raises(ValueError):
        recall_at_k(ranking, set(), 5)


def test_rank_units_scores_a_page_at_its_best_item():
    units = ["doc.pdf#page=1", "doc.pdf#page=2", "doc.pdf#page=2", "cat.jpg", "doc.pdf#page=1"]
    # Page 1's item scores 0.3, but one of its passages 0.9: the passage lifts the page above the photo.
    scores = [0.3, 0.5, 0.2, 0.6, 0.9]
    assert rank_units(scores, units) == ["doc.pdf#page=1", "cat.jpg", "doc.pdf#page=2"]
    assert mrr(rank_units(scores, units), {"doc.pdf#page=1"}) == 1.0
    # Each unit appears once; ties are broken by name.
    assert rank_units([0.5, 0.5, 0.5], ["b", "a", "c"]) == ["a", "b", "c"]


def test_own_kind_ranks_each_kind_among_its_own_units():
    units = ["cat.jpg", "dog.jpg", "guide.pdf#page=1", "notes.txt"]
    kinds = {"cat.jpg": "photo", "dog.jpg": "photo", "guide.pdf#page=1": "document", "notes.txt": "document"}
    queries = [Query("cat", frozenset({"cat.jpg"}), "photo"), Query("apt", frozenset({"notes.txt"}), "document")]
    # The photo query's best unit is a page, the document query's a photo: each relevant unit ranks second
    # over everything, first among its own kind.
    scores = torch.tensor([[0.8, 0.1, 0.9, 0.2], [0.9, 0.1, 0.3, 0.7]])
    mixed, own, rr = _evaluate_scores(scores, units, queries, [1])
    assert mixed["photo"]["mrr"] == 0.5 and mixed["document"]["mrr"] == 0.5 and mixed["all"]["mrr"] == 0.5
    assert own == {"photo": None, "document": None}  # not asked for
    assert rr == {"results": [0.5, 0.5], "own_kind": [None, None]}  # each query's reciprocal rank, in order
    mixed2, own, rr = _evaluate_scores(scores, units, queries, [1], kinds)
    assert mixed2 == mixed
    assert own["photo"]["mrr"] == 1.0 and own["document"]["mrr"] == 1.0 and own["photo"]["recall@1"] == 1.0
    assert rr == {"results": [0.5, 0.5], "own_kind": [1.0, 1.0]}
    # A relevant unit of the other kind is not found among the query's own kind.
    other = [Query("cat", frozenset({"guide.pdf#page=1"}), "photo")]
    _, own, rr = _evaluate_scores(scores[:1], units, other, [1], kinds)
    assert own["photo"]["mrr"] == 0.0 and own["document"] is None and rr["own_kind"] == [0.0]


def _report(rr: dict[str, list], kinds: list[str], own: dict[str, list] | None = None) -> dict:
    """The per-query part of an eval report, enough for compare_reports."""
    return {"per_query": {"queries": [f"q{i}" for i in range(len(kinds))], "kinds": kinds,
                          "results": rr, "own_kind": own or {}}}


def test_compare_reports_pairs_queries_and_brackets_the_difference():
    rng = np.random.default_rng(1)
    kinds = ["photo"] * 200 + ["document"] * 100
    before = rng.uniform(0, 1, 300)
    better = np.clip(before + 0.2, 0, 1)  # every query gains: the interval sits above 0
    noisy = np.clip(before + rng.normal(0, 0.2, 300), 0, 1)  # no gain but noise: the interval holds 0
    cmp = compare_reports(_report({"1,1": before.tolist(), "baseline": before.tolist()}, kinds),
                          _report({"1,1": better.tolist(), "baseline": noisy.tolist()}, kinds))
    photo = cmp["results"]["photo"]["1,1"]
    assert photo["n"] == 200 and photo["before"] == pytest.approx(before[:200].mean())
    assert photo["delta"] == pytest.approx(better[:200].mean() - before[:200].mean())
    assert 0 < photo["ci95"][0] < photo["delta"] < photo["ci95"][1]
    lo, hi = cmp["results"]["all"]["baseline"]["ci95"]
    assert lo < 0 < hi and hi - lo < 0.1  # +-2 standard errors of a 0.2 spread over 300 queries
    assert "own_kind" not in cmp  # neither run has own-kind ranks
    # Seeded: the same intervals again; another seed moves them a little, never the difference itself.
    pair = (_report({"1,1": before.tolist()}, kinds), _report({"1,1": noisy.tolist()}, kinds))
    again, other = compare_reports(*pair)["results"]["all"]["1,1"], compare_reports(*pair, seed=1)["results"]["all"]["1,1"]
    assert again == compare_reports(*pair)["results"]["all"]["1,1"]
    assert other["delta"] == again["delta"] and other["ci95"] != again["ci95"]
    assert abs(other["ci95"][0] - again["ci95"][0]) < 0.01
    text = comparison_markdown(cmp)
    assert "**Photo queries** (200)" in text and "| (1,1) |" in text and "*" in text.split("| (1,1) |")[1].split("\n")[0]
    # Own-kind ranks: a kind without units has None, which is left out of the pairs.
    own_before, own_after = {"1,1": [0.5, None, 1.0]}, {"1,1": [1.0, None, 1.0]}
    cmp = compare_reports(_report({"1,1": [0.5, 0.5, 1.0]}, ["photo", "document", "photo"], own_before),
                          _report({"1,1": [0.5, 0.5, 1.0]}, ["photo", "document", "photo"], own_after))
    assert cmp["own_kind"]["photo"]["1,1"]["n"] == 2 and cmp["own_kind"]["photo"]["1,1"]["delta"] == 0.25
    assert "document" not in cmp["own_kind"]


def test_compare_reports_refuses_what_cannot_be_paired():
    a = _report({"1,1": [1.0, 0.5]}, ["photo", "photo"])
    with pytest.raises(EvalInputError, match="the before report: not an eval report with per-query ranks"):
        compare_reports({"results": {}}, a)
    malformed = {
        "no matching lists of queries and kinds": {"per_query": {}},
        "no 'own_kind' table": {"per_query": {"queries": ["q0"], "kinds": ["photo"], "results": {}}},
        "results '1,1' are not 1 numbers": _report({"1,1": [1.0, 0.5]}, ["photo"]),
        "own_kind '1,1' are not 1 numbers": _report({}, ["photo"], {"1,1": [float("nan")]}),
    }
    for message, report in malformed.items():
        with pytest.raises(EvalInputError, match=re.escape(message)):
            per_query_ranks(report)
    assert comparison_markdown({}).endswith("The two runs have no budget in common (made with other checkpoints' "
                                           "presets?).")
    b = _report({"1,1": [1.0, 0.5]}, ["photo", "photo"])
    b["per_query"]["queries"] = ["q0", "another query"]
    with pytest.raises(EvalInputError, match="not run on the same queries"):
        compare_reports(a, b)


def test_unit_names_and_self_similarity():
    assert unit_name("/x/photos/IMG_1.jpg", None) == "IMG_1.jpg"
    assert unit_name("/x/documents/guide.pdf", 3) == "guide.pdf#page=3"
    assert unit_name("/x/a.zip!/inner/notes.txt", None) == "notes.txt"
    same = torch.ones(4, 8)
    assert self_similarity(same) == pytest.approx(1.0)
    assert self_similarity(torch.eye(4)) == pytest.approx(0.0)
    # Two opposite and two orthogonal vectors: off-diagonal pairs (1,2) = -1, all others 0 -> -2 / 12.
    v = torch.tensor([[1.0, 0], [-1.0, 0], [0, 1.0], [0, 1.0]])
    assert self_similarity(v) == pytest.approx((2 * -1 + 2 * 1) / 12)


def test_a_flat_folder_is_indexed_without_its_notes(tmp_path):
    """A folder without photos/ and documents/ (the app's sample collection is one) is indexed whole, but its own
    README / LICENSES notes at the top and queries.json are not judged material."""
    for name in ("a.jpg", "b.pdf", "notes.txt", "README.md", "LICENSES.md", "Copying.txt", "queries.json",
                 "sub/README.md", ".hidden/c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in files_to_index(tmp_path)] == [
        "a.jpg", "b.pdf", "notes.txt", "sub/README.md"]
    (tmp_path / "photos").mkdir()
    assert files_to_index(tmp_path) == [tmp_path / "photos"]


def test_judged_files_are_checked_before_indexing_wherever_they_lie(tmp_path):
    """check_files_named finds a judged file in a nested folder and leaves zip members to the indexing; a file
    that is nowhere is named with its entry of queries.json."""
    from app.evaluation import Query, check_files_named

    def queries(*names: str) -> list:
        return [Query(f"q{i}", frozenset([n]), "photo") for i, n in enumerate(names)]

    (tmp_path / "photos" / "trips" / "2024").mkdir(parents=True)
    (tmp_path / "photos" / "trips" / "2024" / "lake.jpg").write_bytes(b"x")
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "guide.pdf").write_bytes(b"x")
    path = tmp_path / "queries.json"
    check_files_named(queries("lake.jpg", "guide.pdf#page=2"), path, tmp_path)
    with pytest.raises(EvalInputError, match=r"entry 2 \('q1'\) names 'gone.jpg', which is not an indexed file"):
        check_files_named(queries("lake.jpg", "gone.jpg"), path, tmp_path)
    (tmp_path / "photos" / "more.zip").write_bytes(b"x")  # its members are known once it is opened
    check_files_named(queries("inside-the-zip.jpg"), path, tmp_path)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(autouse=True)
def shared_model(test_model, monkeypatch):
    """In-process CLI calls reuse the session's loaded test model instead of loading it on every call."""
    model = test_model
    monkeypatch.setattr(cli, "load_model", lambda path: model)
    return model


@pytest.fixture(scope="module")
def ckpt(test_checkpoint) -> Path:
    return test_checkpoint


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_folder(root: Path, queries: list | str | None = None, images: bool = True) -> Path:
    """A tiny evaluation folder: photos/ (two generated images), documents/ (a 2-page PDF, a text file)."""
    (root / "photos").mkdir(parents=True)
    (root / "documents").mkdir()
    if images:
        Image.new("RGB", (96, 64), (220, 30, 30)).save(root / "photos" / "red.png")
        Image.new("RGB", (64, 96), (30, 40, 220)).save(root / "photos" / "blue.jpg", quality=90)
    (root / "documents" / "report.pdf").write_bytes(make_pdf([
        [(72, 700, 20, "Quarterly report"), (72, 650, 12, "Revenue grew in spring across every harbour.")],
        [(72, 700, 20, "Appendix"), (72, 650, 12, "Tables of glacier measurements and violin repairs.")]]))
    (root / "documents" / "cats.txt").write_text("Cats sleep most of the day and hunt at night.\n")
    if queries is None:
        queries = [{"query": "quarterly revenue", "relevant": ["report.pdf#page=1"], "kind": "document"},
                   {"query": "glacier tables", "relevant": ["report.pdf#page=2"], "kind": "document"},
                   {"query": "cats hunting at night", "relevant": ["cats.txt"], "kind": "document"}]
        if images:
            queries += [{"query": "something red", "relevant": ["red.png"], "kind": "photo"},
                        {"query": "blue", "relevant": ["blue.jpg", "red.png"], "kind": "photo"}]
    (root / "queries.json").write_text(queries if isinstance(queries, str) else json.dumps(queries))
    return root


def test_end_to_end_json(tmp_path, ckpt, capsys, shared_model):
    folder = write_folder(tmp_path / "set")
    code, out, err = run(capsys, "eval", folder, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    report = json.loads(out)
    presets = [f"{r_q},{r_c}" for r_q, r_c in shared_model.config.presets]
    assert report["presets"] == [list(p) for p in shared_model.config.presets]
    assert report["queries"] == {"photo": 2, "document": 3, "all": 5}
    assert report["units"] == {"photo": 2, "document": 3}  # two photos; two PDF pages and a text file
    assert report["recall_k"] == [1, 5] and report["ndcg_k"] == 10 and report["warnings"] == []
    for kind in ("photo", "document", "all"):
        table = report["results"][kind]
        assert list(table) == [*presets, "baseline"]
        for metrics in table.values():
            assert set(metrics) == {"mrr", "recall@1", "recall@5", "ndcg@10"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    for kind in ("photo", "document"):
        assert list(report["own_kind"][kind]) == [*presets, "baseline"]
        # Two photos / three document units: every relevant unit is in the top 5 of its own kind.
        assert report["own_kind"][kind]["baseline"]["recall@5"] == 1.0
    # Five units: every relevant unit is in the top 5.
    assert report["results"]["all"]["baseline"]["recall@5"] == 1.0
    assert set(report["self_similarity"]) == {"photo", "document"}
    assert all(-1.0 <= v <= 1.0 for v in report["self_similarity"].values())
    assert report["versions"]["torch"] == torch.__version__  # what the numbers were measured with
    assert report["versions"]["pillow"] == Image.__version__ and report["versions"]["python"].count(".") == 2
    # What the CPU decided, which moves photo numbers too: how the classifier that read the photos ran, the
    # model's own front end's.
    from model.device import cpu_has_native_bf16

    clf = shared_model.backbone.front_end.tokenizer().classifier
    assert report["machine"]["classifier"] == clf.setup and clf.setup.startswith(f"{clf.variant}, {clf.backend}, ")
    assert report["machine"]["native_bf16"] == cpu_has_native_bf16() and report["machine"]["cpu"]
    assert f"Measured on {report['machine']['cpu']}, photos classified by {clf.setup}." in markdown(report)
    # The temporary index is gone, the folder untouched.
    assert sorted(p.name for p in folder.iterdir()) == ["documents", "photos", "queries.json"]
    # Each query's reciprocal rank, in queries.json's order, for comparing runs; the means are theirs.
    pq = report["per_query"]
    assert pq["kinds"] == ["document"] * 3 + ["photo"] * 2 and pq["queries"][0] == "quarterly revenue"
    for name in (*presets, "baseline"):
        assert report["results"]["all"][name]["mrr"] == pytest.approx(sum(pq["results"][name]) / 5, abs=1e-5)
        photos = pq["own_kind"][name][3:]
        assert report["own_kind"]["photo"][name]["mrr"] == pytest.approx(sum(photos) / 2, abs=1e-5)
    # The same run again, against the first: paired per query, nothing moved.
    earlier = tmp_path / "before.json"
    earlier.write_text(out)
    code, out2, err = run(capsys, "eval", folder, "--checkpoint", ckpt, "--quiet", "--against", earlier)
    assert code == 0, err
    assert "MRR against the earlier run, paired per query" in out2
    assert f"| ({presets[-1]}) | " in out2 and "+0.000 [+0.000, +0.000] |" in out2 and " *" not in out2

    code, out, _ = run(capsys, "eval", folder, "--checkpoint", ckpt, "--quiet", "--k", "1", "3")
    assert code == 0
    assert "**Photo queries** (2)" in out and "**Document queries** (3)" in out and "**All queries** (5)" in out
    assert "**Photo queries over the photos only** (2)" in out and "**Document queries over the documents only** (3)" in out
    assert "| MRR | Recall@1 | Recall@3 | nDCG@10 |" in out and "| MiniLM-L6 mean-pooled, single vector |" in out
    assert f"({presets[-1]})" in out and "No single-vector baseline" not in out
    # A model that reads photos from their pixels (a VLM) has no text for the baseline: the report says so.
    for table in (*report["results"].values(), *report["own_kind"].values()):
        table.pop("baseline")
    assert "No single-vector baseline" in markdown(report)


def test_record_stores_the_report_in_the_checkpoints_quality_file(tmp_path, ckpt, capsys):
    """`--record SPLIT` puts the report into the checkpoint folder's quality.json under SPLIT, replacing that split
    only: the other splits' reports stay byte for byte (they take 10-25 minutes to make)."""
    import shutil

    from app.evaluation import SAMPLE_SPLIT, load_quality, split_title
    from model.checkpoint import checkpoint_id_of_folder

    folder = write_folder(tmp_path / "set")
    own = tmp_path / "ckpt"
    shutil.copytree(ckpt, own)
    other = {"dir": "elsewhere", "checkpoint_id": "x", "results": {}, "note": "kept as it is"}
    (own / "quality.json").write_text(json.dumps({"dev split (elsewhere)": other}, indent=2) + "\n")
    for _ in range(2):  # the second run replaces the first's report
        code, out, err = run(capsys, "eval", folder, "--checkpoint", own, "--quiet", "--record", SAMPLE_SPLIT)
        assert code == 0, err
        assert SAMPLE_SPLIT in err and "quality.json" in err
    data = json.loads((own / "quality.json").read_text())
    assert list(data) == ["dev split (elsewhere)", SAMPLE_SPLIT] and data["dev split (elsewhere)"] == other
    assert "per_query" not in data[SAMPLE_SPLIT] and "results" in data[SAMPLE_SPLIT]  # the shipped file stays small
    # A comparison with an earlier run (a local path among it) is for the person running the command, too.
    from app.evaluation import record_quality

    record_quality(own, "x (y)", {"results": {}, "per_query": {}, "against": {"report": "/home/me/before.json"}})
    assert set(json.loads((own / "quality.json").read_text())["x (y)"]) == {"results"}
    reports = load_quality(own, checkpoint_id_of_folder(own))
    assert list(reports) == [SAMPLE_SPLIT] and reports[SAMPLE_SPLIT]["queries"]["all"] == 5
    assert split_title(SAMPLE_SPLIT, reports[SAMPLE_SPLIT]) == ("sample collection: 5 queries written by the team "
                                                                "— small, for illustration")
    assert split_title("dev split (tests/data/devset)", other) == "dev split"
    # A file it would have to overwrite blindly is refused before any work.
    (own / "quality.json").write_text("[1, 2]")
    expect_usage_error(capsys, [folder, "--checkpoint", own, "--record", SAMPLE_SPLIT], "not a JSON object")
    assert (own / "quality.json").read_text() == "[1, 2]"
    expect_usage_error(capsys, [folder, "--checkpoint", own, "--record", " "], "--record needs a split name")


def expect_usage_error(capsys, argv: list, *fragments: str) -> str:
    code, out, err = run(capsys, "eval", *argv, "--quiet")
    assert code == 2, (out, err)
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_a_queries_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Notepad saves UTF-8 with a BOM; json refused it ("Unexpected UTF-8 BOM")."""
    path = tmp_path / "queries.json"
    path.write_text('\ufeff[{"query": "cat", "relevant": ["a.jpg"], "kind": "photo"}]', encoding="utf-8")
    assert [(q.text, q.kind) for q in load_queries(path)] == [("cat", "photo")]


def test_bad_folder_and_queries_file(tmp_path, ckpt, capsys):
    expect_usage_error(capsys, [tmp_path / "nowhere"], str(tmp_path / "nowhere"), "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_usage_error(capsys, [empty], str(empty / "queries.json"), "no such file")
    (empty / "queries.json").mkdir()
    expect_usage_error(capsys, [empty], str(empty / "queries.json"), "is a folder")
    cases = {
        "{not json": "not valid JSON",
        "{}": "non-empty JSON list",
        '[{"relevant": ["a.jpg"], "kind": "photo"}]': 'entry 1 has no "query"',
        '[{"query": "cat", "relevant": ["a.jpg"], "kind": "photo"}, {"query": "dog", "kind": "photo"}]':
            'entry 2 has no "relevant"',
        '[{"query": "cat", "relevant": [], "kind": "photo"}]': '"relevant" must be a non-empty list',
        '[{"query": "cat", "relevant": ["a.jpg"], "kind": "video"}]': "unknown kind 'video'",
        '[{"query": "cat", "relevant": ["a.jpg"]}]': "unknown kind None",
    }
    for i, (text, fragment) in enumerate(cases.items()):
        folder = write_folder(tmp_path / f"q{i}", text, images=False)
        expect_usage_error(capsys, [folder, "--checkpoint", ckpt], str(folder / "queries.json"), fragment)
    expect_usage_error(capsys, [write_folder(tmp_path / "k", images=False), "--k", "0"], "--k must be at least 1")
    # --against is read before any work: a missing file, a file that is not a report, another folder's report.
    folder = write_folder(tmp_path / "against", images=False)
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt, "--against", tmp_path / "none.json"],
                       str(tmp_path / "none.json"), "no such file")
    (tmp_path / "bad.json").write_text("[1]")
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt, "--against", tmp_path / "bad.json"],
                       "not an eval report with per-query ranks")
    other = {"per_query": {"queries": ["something else"], "kinds": ["photo"], "results": {}, "own_kind": {}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt, "--against", tmp_path / "other.json"],
                       str(tmp_path / "other.json"), "made on other queries than this folder's queries.json")
    (tmp_path / "empty.json").write_text(json.dumps({"per_query": {}}))
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt, "--against", tmp_path / "empty.json"],
                       "no matching lists of queries and kinds")


def test_relevance_to_what_is_not_indexed(tmp_path, ckpt, capsys, monkeypatch):
    def doc(name: str) -> dict:
        return {"query": "report", "relevant": [name], "kind": "document"}

    folder = write_folder(tmp_path / "a", [doc("report.pdf#page=1"), doc("missing.txt")], images=False)
    with monkeypatch.context() as m:  # a file that is not there is found before minutes of indexing
        m.setattr(evaluation, "index_folder", lambda *a, **k: pytest.fail("indexed before checking the names"))
        expect_usage_error(capsys, [folder, "--checkpoint", ckpt], str(folder / "queries.json"), "entry 2",
                           "'missing.txt'", "not an indexed file")
    folder = write_folder(tmp_path / "b", [doc("report.pdf#page=3")], images=False)
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt], str(folder / "queries.json"),
                       "'report.pdf#page=3'", "report.pdf has 2 indexed pages")
    folder = write_folder(tmp_path / "c", [doc("report.pdf")], images=False)
    expect_usage_error(capsys, [folder, "--checkpoint", ckpt], "'report.pdf'", "report.pdf#page=1")

    # A file that cannot be read is a warning naming it; its queries still count ...
    folder = write_folder(tmp_path / "d", [doc("report.pdf#page=1"), doc("cats.txt")], images=False)
    (folder / "photos" / "broken.png").write_bytes(b"not a png")
    code, out, err = run(capsys, "eval", folder, "--checkpoint", ckpt, "--quiet")
    assert code == 0, err
    assert "**Document queries** (2)" in out and "Photo queries" not in out
    assert "warning: broken.png: " in err and str(folder / "photos" / "broken.png") in err
    code, out, err = run(capsys, "eval", folder, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["queries"]["all"] == 2 and report["results"]["photo"] is None
    assert [w["path"] for w in report["warnings"]] == [str((folder / "photos" / "broken.png").resolve())]
    # ... but relevance to it is an error.
    (folder / "queries.json").write_text(json.dumps([doc("cats.txt"), doc("broken.png")]))
    err = expect_usage_error(capsys, [folder, "--checkpoint", ckpt], str(folder / "queries.json"),
                             "'broken.png'", "broken.png could not be read")


def test_makefile_and_readme_point_at_the_cli():
    root = REPO
    assert "app.cli eval tests/data/devset" in (root / "Makefile").read_text()
    assert not (root / "bench" / "quality.py").exists()


def test_the_bundled_checkpoint_carries_its_own_quality_table():
    """assets/metaembed-mini/quality.json holds the eval command's reports for exactly the shipped weights (a
    retrained checkpoint without a new evaluation fails here), and the Model tab's table is built from them."""
    from app.evaluation import SAMPLE_SPLIT, budget_table, load_quality
    from model.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id_of_folder

    reports = load_quality(DEFAULT_CHECKPOINT, checkpoint_id_of_folder(DEFAULT_CHECKPOINT))
    assert list(reports) == ["dev split (tests/data/devset)", "held-out split (tests/data/heldout)", SAMPLE_SPLIT]
    assert reports[SAMPLE_SPLIT]["dir"] == "assets/examples"  # `eval assets/examples --record ...` from the repo
    assert reports[SAMPLE_SPLIT]["units"] == {"photo": 12, "document": 5}
    table = budget_table(reports)
    rows = [line for line in table.splitlines() if line.startswith(("| dev", "| held-out", "| sample"))]
    assert len(rows) == 12  # photo and document rows of the three, over everything and over their own kind
    assert sum(" only |" in row for row in rows) == 6
    for row in rows:
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 6 and all(0 < c <= 1 for c in cells)  # five presets and the baseline
    assert load_quality(DEFAULT_CHECKPOINT, "some-other-checkpoint") == {}  # stale reports are not shown
    assert load_quality(None, "x") == {} and budget_table({}) == ""
