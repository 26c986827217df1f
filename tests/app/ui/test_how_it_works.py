"""app.ui.how_it_works: the walk-through's step 4 searches what the Search tab searches."""

from __future__ import annotations

import shutil

from tests.helpers import EXAMPLES


def test_step_4_follows_the_search_tabs_sample_collection_box(tmp_path, test_checkpoint):
    """Step 4 always included the sample collection, so with the box unticked on the Search tab its "top two
    results" were not the ones the Search tab showed."""
    from app.server import create_app
    from app.ui.how_it_works import walkthrough

    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(EXAMPLES / "owl.jpg", samples / "owl.jpg")
    studio, demo = create_app(str(test_checkpoint), tmp_path / "data", sample_dir=str(samples),
                              wait_for_samples=True, log=lambda *a: None)
    try:
        assert "owl.jpg" in walkthrough(studio, "an owl", None, include_samples=True)[-1]
        assert walkthrough(studio, "an owl", None, include_samples=False)[-1] == ""  # nothing of one's own yet
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "note.txt").write_text("Owls hunt at night in the forest.")
        studio.index_files(studio.local, [tmp_path / "mine" / "note.txt"])
        told = walkthrough(studio, "an owl", None, include_samples=False)[-1]
        assert "note.txt" in told and "owl.jpg" not in told
    finally:
        demo.close()
        studio.close()
