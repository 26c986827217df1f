"""app.ui.scaling_tab's measurement summary: what it counts must match what the other views count."""

from __future__ import annotations

import shutil

from tests.helpers import EXAMPLES


def test_the_summary_names_the_files_it_measured_and_counts_its_queries(tmp_path, test_checkpoint):
    """UX review (s33): "Measured on 50 searchable items" could not be checked against the status line's
    "13 files" and "15 files"; "with 1 queries"."""
    from app.server import create_app
    from app.ui.scaling_tab import measure_scaling
    from app.ui.search_tab import EXAMPLE_QUERIES

    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(EXAMPLES / "owl.jpg", files / "owl.jpg")
    (files / "notes.txt").write_text("Owls hunt at night.\n\n" + "A note about owls and their habits. " * 60)
    studio, demo = create_app(str(test_checkpoint), tmp_path / "data", sample_dir=None, wait_for_samples=True,
                              log=lambda *a: None)
    try:
        studio.index_files(studio.local, sorted(files.iterdir()))
        n_items = len(studio.items(studio.local))
        assert n_items > 2  # the text file is stored as passages: items are not files
        out = measure_scaling(studio, ["an owl"], None, False, lambda f, w: None, repeats=1)
        assert f"Measured on **{n_items} searchable items** of 2 files (1 photo, 1 text file)" in out["summary"]
        assert "with 1 query (" in out["summary"], out["summary"]
        assert "example queries" not in out["summary"]
        # The tab's default queries describe the sample collection, not these files: said beside the figures.
        out = measure_scaling(studio, list(EXAMPLE_QUERIES[:2]), None, False, lambda f, w: None, repeats=1)
        assert "These are the sample collection's example queries, measured without it" in out["summary"]
    finally:
        demo.close()
        studio.close()
