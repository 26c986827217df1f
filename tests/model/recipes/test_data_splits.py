"""The evaluation splits stay apart: no source package in both, none reserved, every judged file present."""

import fnmatch
import json
import re

import pytest

from tests.helpers import REPO

DATA = REPO / "tests" / "data"
SPLITS = json.loads((DATA / "splits.json").read_text())


def reserved(pkg: str) -> bool:
    return any(fnmatch.fnmatch(pkg, pat) for pat in SPLITS["reserved"])


def test_dev_and_test_splits_share_no_package_and_use_no_reserved_one():
    dev, test = set(SPLITS["dev"]), set(SPLITS["test"])
    assert not dev & test
    for pkg in dev | test:
        assert not reserved(pkg), pkg


def test_the_sample_collections_packages_are_its_own():
    """The packages first used by the app's sample collection (assets/examples) are in no split and not
    reserved; every package its LICENSES.md names is one of them or a dev package (other files of it), never
    a held-out or reserved one."""
    samples = set(SPLITS["samples"])
    assert samples and not samples & (set(SPLITS["dev"]) | set(SPLITS["test"]))
    assert not [pkg for pkg in samples if reserved(pkg)]
    notes = (REPO / "assets" / "examples" / "LICENSES.md").read_text()
    rows = [line.split("|") for line in notes.splitlines() if line.startswith("| `")]
    named = {cells[3].strip().strip("`") for cells in rows}
    files = {p.name for p in (REPO / "assets" / "examples").iterdir()} - {"LICENSES.md", "queries.json"}
    assert {cells[1].strip().strip("`") for cells in rows} == files
    assert named <= samples | set(SPLITS["dev"]), named - samples - set(SPLITS["dev"])
    assert samples <= named
    assert not [pkg for pkg in named if reserved(pkg) or pkg in SPLITS["test"]]


@pytest.mark.parametrize("split, min_photo, min_doc", [("devset", 80, 70), ("heldout", 150, 300)])
def test_every_judged_file_and_page_exists(split, min_photo, min_doc):
    import pypdfium2 as pdfium

    root = DATA / split
    queries = json.loads((root / "queries.json").read_text())
    files = {p.name: p for p in root.rglob("*") if p.is_file() and p.name not in ("queries.json", "README.md")}
    pages = {}
    for name, path in files.items():
        if name.endswith(".pdf"):
            doc = pdfium.PdfDocument(path)
            pages[name] = len(doc)
            doc.close()
    kinds = {"photo": 0, "document": 0}
    for q in queries:
        assert q["query"].strip() and q["relevant"], q
        kinds[q["kind"]] += 1
        for rel in q["relevant"]:
            name, _, page = rel.partition("#page=")
            assert name in files, f"{split}: {rel} (query {q['query']!r}) is not in the folder"
            if page:
                assert 1 <= int(page) <= pages[name], rel
    assert kinds["photo"] >= min_photo and kinds["document"] >= min_doc
    assert len({q["query"].lower() for q in queries}) == len(queries), "duplicate queries"


def test_the_readmes_name_every_source_package():
    for split, key in (("devset", "dev"), ("heldout", "test")):
        text = (DATA / split / "README.md").read_text()
        named = set(re.findall(r"`([a-z0-9][a-z0-9.+-]+)`", text))
        missing = [p for p in SPLITS[key] if p not in named and p not in text]
        assert not missing, f"{split}/README.md does not name {missing}"


def test_the_sample_queries_judge_every_sample_file_and_only_those():
    """assets/examples/queries.json (the eval command's input for the app's sample collection) names only files
    and pages that are there, and every file and PDF page the app indexes as a sample has a query."""
    import pypdfium2 as pdfium

    from app.evaluation import files_to_index, load_queries
    from app.service.studio import SAMPLE_EXTENSIONS

    root = REPO / "assets" / "examples"
    samples = {p.name for p in root.iterdir() if p.suffix.lower() in SAMPLE_EXTENSIONS}
    assert {p.name for p in files_to_index(root)} == samples  # the eval indexes what the app does, no notes
    units = set()
    for name in samples:
        if name.endswith(".pdf"):
            doc = pdfium.PdfDocument(root / name)
            units |= {f"{name}#page={n}" for n in range(1, len(doc) + 1)}
            doc.close()
        else:
            units.add(name)
    queries = load_queries(root / "queries.json")
    judged = set().union(*(q.relevant for q in queries))
    assert judged <= units, judged - units
    assert judged == units, f"no query for {sorted(units - judged)}"
    for q in queries:
        assert all(("#page=" in u) == (q.kind == "document") for u in q.relevant), q
    assert len({q.text.lower() for q in queries}) == len(queries), "duplicate queries"
    assert sum(q.kind == "photo" for q in queries) >= 2 * len(samples) and sum(
        q.kind == "document" for q in queries) >= 2 * (len(units) - len(samples) + 1)
