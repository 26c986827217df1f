"""The status line shared by every tab."""

from __future__ import annotations

from types import SimpleNamespace

from app.ui.common import busy, status_line


def _studio(adding):
    coll = SimpleNamespace(adding=adding)
    engine = SimpleNamespace(config=SimpleNamespace(name="m"), source="here", model=SimpleNamespace(
        device=SimpleNamespace(type="cpu")))
    return SimpleNamespace(engine=engine, samples=None, private_sessions=True, indexing_progress=None,
                           user_collection=lambda session, create=False: coll,
                           stats=lambda c: {"files": 3})


def test_the_status_line_follows_an_upload_still_running_after_a_reload():
    """A page reloaded mid-upload showed "3 files" and no sign that more were coming."""
    studio = _studio(adding=(0.5, "file 3 of 4: guide.pdf"))
    line = status_line(studio, "s")
    assert "your private collection: 3 files" in line
    assert "adding files (50%, file 3 of 4: guide.pdf); the files fill in as they are saved" in line
    assert busy(studio, "s")
    idle = _studio(adding=None)
    assert "adding" not in status_line(idle, "s") and not busy(idle, "s")
