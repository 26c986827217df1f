"""app.ui.collection_tab's messages: they count files (and a PDF's pages), not the passages stored as items."""

from __future__ import annotations

import os
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


def test_a_zip_members_tile_names_the_member_and_picks_the_whole_archive_by_name():
    """UX review (s35): the three tiles of holiday.zip read "holiday.zip!/holiday/IMG_…", cut alike; clicking one
    put "holiday.zip" in the remove list and removing it took all three photos, unannounced."""
    from app.ui.collection_tab import _files, _removed_md, removal_choices, shown_name

    items = [SimpleNamespace(id=f"z{i}", path=f"holiday.zip!/holiday/IMG_00{i}.jpg", page=None, passage=None,
                             kind="image") for i in range(3)]
    items.append(SimpleNamespace(id="o", path="owl.jpg", page=None, passage=None, kind="image"))
    studio, coll = _collection(items)
    files = _files(studio, coll)
    assert sorted(shown_name(f["name"], short=True) for f in files) == [
        "IMG_000.jpg (in holiday.zip)", "IMG_001.jpg (in holiday.zip)", "IMG_002.jpg (in holiday.zip)", "owl.jpg"]
    assert shown_name("holiday.zip!/holiday/IMG_000.jpg") == "holiday/IMG_000.jpg (in holiday.zip)"
    # One choice per file on disk, the archive saying it is one with all it holds (also beyond the shown rows).
    one_member = [f for f in files if f["name"].endswith("IMG_001.jpg")]
    assert removal_choices(one_member, files) == [("holiday.zip (archive: 3 photos)", "holiday.zip")]
    assert removal_choices(files, files) == [("holiday.zip (archive: 3 photos)", "holiday.zip"), ("owl.jpg", "owl.jpg")]
    report = _removed_md(["holiday.zip"], [it.path for it in items[:3]], "3 photos")
    # Markdown: the names' underscores escaped, as every echoed name is.
    assert report == r"Removed 3 photos: holiday.zip (the whole archive: IMG\_000.jpg, IMG\_001.jpg, IMG\_002.jpg)."
    assert _removed_md(["owl.jpg"], ["owl.jpg"], "1 photo") == "Removed 1 photo: owl.jpg."


def test_an_upload_leaves_a_newer_upload_of_the_same_file_in_place(tmp_path, monkeypatch):
    """Gradio stores an upload under a folder named by its content: the same file uploaded again while the first
    upload was indexing landed on the same path, the first one's clean-up deleted it, and the second upload
    failed with "the upload did not arrive completely"."""
    from app.ui.collection_tab import _forget_uploads, _identity

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    first = tmp_path / "gradio" / "abc123" / "guide.pdf"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"%PDF- the same bytes")
    read = {str(first): _identity(str(first))}
    fresh = first.with_name("upload.tmp")  # the second upload, moved into place as Gradio does
    fresh.write_bytes(b"%PDF- the same bytes")
    os.replace(fresh, first)
    _forget_uploads(read)
    assert first.is_file()  # the second upload's file is still there for it
    _forget_uploads({str(first): _identity(str(first))})
    assert not first.exists() and not first.parent.exists()  # its own clean-up removes it
