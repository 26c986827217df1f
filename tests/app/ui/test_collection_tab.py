"""app.ui.collection_tab's messages: they count files (and a PDF's pages), not the passages stored as items."""

from __future__ import annotations

from types import SimpleNamespace

from app.humanize import files_of
from app.ui.collection_tab import _report_md


def test_the_add_report_counts_files_and_pages():
    indexed = [{"id": f"p{i}", "path": "IMG_4815.jpg", "page": None, "kind": "image"} for i in range(1)]
    indexed += [{"id": f"g{p}{k}", "path": "guide.pdf", "page": p, "kind": kind}
                for p in (1, 2) for k, kind in enumerate(("pdf_page", "text", "text"))]
    report = {"indexed": indexed, "skipped_duplicates": [], "replaced": [], "errors": [], "notes": []}
    assert _report_md(report).splitlines()[0] == "**Added 2 files (1 photo, 1 PDF with 2 pages).**"
    assert _report_md(dict(report, indexed=[])).splitlines()[0] == "**Added no new files.**"


def test_removal_counts_the_removed_files():
    """Tester report: removing one photo said "Removed 1 item(s)"; a PDF's passages were counted too."""
    items = [SimpleNamespace(path="/c/files/guide.pdf", page=p, kind=k) for p in (1, 2) for k in ("pdf_page", "text")]
    assert files_of(items) == "1 PDF with 2 pages"
    assert files_of([SimpleNamespace(path="/c/files/IMG_1.jpg", page=None, kind="image")]) == "1 photo"


def test_the_tab_names_its_files_once():
    """Issue 17: the picture grid and the table under it were both headed "Your files"."""
    import gradio as gr

    from app.ui import collection_tab

    studio = SimpleNamespace(private_sessions=False, local=SimpleNamespace(files_dir="/data/files"))
    with gr.Blocks() as demo:
        tab = collection_tab.build(studio)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.components.Component) and b.label]
    assert [label for label in labels if "your files" in label.lower()] == [tab.grid.label]
    assert len(labels) == len(set(labels)), labels  # no two parts of the tab share a heading


def _collection(items: list[SimpleNamespace]) -> tuple[SimpleNamespace, SimpleNamespace]:
    """A studio and a collection holding `items`, enough for the tab's table and statistics."""
    budgets = [{"budget": "(1, 1)", "vectors": len(items), "size": "1 KB"}]
    studio = SimpleNamespace(items=lambda coll: items, engine=SimpleNamespace(num_candidate_vectors=64),
                             stats=lambda coll: {"items": len(items), "budgets": budgets, "on_disk": "1 MB"})
    return studio, SimpleNamespace(display_path=lambda path: path)


def test_a_text_file_is_called_a_text_file_in_the_table_and_the_statistics():
    """UX review (s33): the statistics said "15 files: 14 photos, 1 text passage (21 searchable items…)" of a .txt
    the table listed as "text passage · 7 passages"."""
    from app.ui.collection_tab import _files, _stats_md

    items = [SimpleNamespace(id=f"p{i}", path=f"IMG_{i}.jpg", page=None, passage=None, kind="image") for i in range(2)]
    items += [SimpleNamespace(id=f"t{i}", path="notes.txt", page=None, passage=i, kind="text") for i in range(7)]
    studio, coll = _collection(items)
    files = _files(studio, coll)
    assert {f["name"]: (f["kind"], f["parts"]) for f in files}["notes.txt"] == ("text file", "7 passages")
    stats = _stats_md(studio, coll, files)
    assert "**3 files (2 photos, 1 text file)** (9 searchable items" in stats, stats
    assert "text passage" not in stats


def test_the_add_report_says_one_file_and_two_duplicates():
    """UX review (s33): "3 file(s) could not be added", "duplicate(s)"."""
    report = {"indexed": [], "skipped_duplicates": ["a.jpg", "b.jpg"], "replaced": ["c.txt"],
              "errors": [{"error": "x.doc: not a supported file"}], "notes": []}
    lines = _report_md(report).splitlines()
    assert lines[1:4] == ["Skipped 2 duplicates already in the collection.",
                          "Replaced the older version of 1 edited file.", "**1 file could not be added:**"]
