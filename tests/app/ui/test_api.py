"""The app's named API endpoints through gradio_client against a launched server (private-sessions mode).

One server per module: an untrained test checkpoint, a temp data dir, a one-photo sample collection.
Two clients are two browser sessions: each gets its own private collection next to the shared samples.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

from app.service.sessions import UploadLimits, safe_filename, unique_child
from model.scoring import maxsim
from tests.helpers import EXAMPLES, REPO
from tests.helpers import make_pdf as pdf_pages

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pdf(lines: list[tuple[float, float, float, str]]) -> bytes:
    """A one-page PDF with a real text layer (Helvetica lines at x, y, size)."""
    return pdf_pages([lines])


@pytest.fixture(scope="module")
def server(test_checkpoint, tmp_path_factory):
    from app.server import create_app, launch

    root = tmp_path_factory.mktemp("app-api")
    samples = root / "samples"
    samples.mkdir()
    shutil.copy(EXAMPLES / "tabby-cat.jpg", samples / "tabby-cat.jpg")
    files = root / "files"
    files.mkdir()
    for name in ("owl.jpg", "boats-at-sunset.jpg"):
        shutil.copy(EXAMPLES / name, files / name)
    (files / "harbour.pdf").write_bytes(make_pdf([(72, 700, 28, "Harbour lanterns at night"),
                                                  (72, 650, 14, "Boats rest in the harbour while lanterns glow.")]))
    (files / "broken.jpg").write_bytes(b"this is not a picture at all")
    (files / "notes.txt").write_text("Meadow notes: the violin player walked through the orchard at dawn.")
    limits = UploadLimits(max_files=5, max_file_bytes=5 * 2**20, max_upload_bytes=20 * 2**20,
                          max_session_bytes=50 * 2**20, max_session_items=50)
    studio, demo = create_app(str(test_checkpoint), root / "data", private_sessions=True,
                              sample_dir=samples, limits=limits, wait_for_samples=True, log=lambda *a: None)
    port = free_port()
    launch(studio, demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True, mcp=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", studio=studio, files=files, root=root)
    demo.close()
    studio.close()


def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False, analytics_enabled=False)  # default settings, as users have them


@pytest.fixture(scope="module")
def alice(server):
    c = client(server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def alice_report(server, alice):
    paths = [server.files / n for n in ("owl.jpg", "boats-at-sunset.jpg", "harbour.pdf", "broken.jpg",
                                        "notes.txt")]
    return index(alice, paths)


def search(c, query: str, r_q: int, r_c: int, k: int = 10) -> list[dict]:
    return json.loads(c.predict(query, r_q, r_c, k, True, api_name="/search"))


def index(c, paths) -> dict:
    from gradio_client import handle_file

    return json.loads(c.predict([handle_file(str(p)) for p in paths], api_name="/index"))


# ------------------------------------------------------------------------------------------------ index


def test_index_reports_items_duplicates_and_plain_errors(server, alice, alice_report):
    indexed = {e["path"] for e in alice_report["indexed"]}
    assert {"owl.jpg", "boats-at-sunset.jpg", "harbour.pdf", "notes.txt"} <= indexed
    assert all(set(e) >= {"id", "path", "page", "kind"} for e in alice_report["indexed"])
    pdf = [e for e in alice_report["indexed"] if e["path"] == "harbour.pdf"]
    assert pdf and pdf[0]["page"] == 1
    # The broken file is reported by name, in words, and never with a server path.
    errors = {e["path"]: e["error"] for e in alice_report["errors"]}
    assert "broken.jpg" in errors and "broken.jpg" in errors["broken.jpg"]
    for entry in alice_report["indexed"] + alice_report["errors"]:
        assert not entry["path"].startswith("/"), entry
    again = index(alice, [server.files / "owl.jpg"])
    assert again["indexed"] == []
    assert again["skipped_duplicates"] == ["owl.jpg"]


def test_upload_count_limit_has_a_clear_message(server, alice_report):
    c = client(server)
    try:
        report = index(c, [EXAMPLES / n for n in ("mountain-lake.jpg", "niagara-falls.jpg", "green-hills.jpg",
                                                    "lorikeet.jpg", "marigold.jpg", "golden-retriever.jpg")])
    finally:
        c.close()
    # The first five are added; the sixth is named, with the limit (all six were refused, as "1 file").
    assert sorted(e["path"] for e in report["indexed"]) == sorted(
        ["mountain-lake.jpg", "niagara-falls.jpg", "green-hills.jpg", "lorikeet.jpg", "marigold.jpg"])
    [error] = report["errors"]
    assert error["path"] == "golden-retriever.jpg"
    assert error["error"].startswith("golden-retriever.jpg: not added, one upload takes up to 5 files")


# ----------------------------------------------------------------------------------------------- search


def test_search_returns_ranked_json_with_own_and_sample_items(server, alice, alice_report):
    results = search(alice, "harbour lanterns at night", 16, 64, k=20)
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    assert all(set(r) >= {"rank", "id", "path", "page", "score"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    own = {e["id"] for e in alice_report["indexed"]}
    assert own <= {r["id"] for r in results}  # every item of the (small) collection is ranked
    assert {r["collection"] for r in results} == {"yours", "samples"}


def test_budget_change_reranks_with_scores_of_that_budget(server, alice, alice_report):
    """Scores at each budget equal MaxSim over the first r_q / r_c vectors, and the order follows them."""
    studio = server.studio
    query = "boats at sunset"
    q = studio.encode_query(query).vectors
    by_budget = {}
    for budget in [(16, 64), (1, 1), (4, 8), (16, 16)]:
        results = search(alice, query, *budget, k=20)
        by_budget[budget] = results
        for r in results:
            _, _, c = studio.item(r["collection"], r["id"], alice.session_hash)
            expected = float(maxsim(q.unsqueeze(0), c.unsqueeze(0), budget)[0, 0])
            assert r["score"] == pytest.approx(expected, rel=2e-2, abs=2e-2), (budget, r)
            assert r["score"] <= budget[0] + 1e-3  # a sum of r_q cosine similarities
            assert r["comparable_score"] == pytest.approx(r["score"] / budget[0], abs=1e-4)  # as the app shows it
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    # More candidate vectors can only raise each query vector's best match.
    full = {r["id"]: r["score"] for r in by_budget[(16, 64)]}
    for r in by_budget[(16, 16)]:
        assert full[r["id"]] >= r["score"] - 2e-2
    assert [r["score"] for r in by_budget[(1, 1)]] != [r["score"] for r in by_budget[(16, 64)]]


def test_search_ranks_photos_or_documents_alone(server, alice, alice_report):
    everything = search(alice, "harbour lanterns at night", 16, 64, k=200)
    assert len(everything) < 200  # every photo, page and text file of the samples and of alice's files
    kinds = {r["kind"] for r in everything}
    assert "image" in kinds and kinds & {"pdf_page", "text"}
    for only, wanted in (("photos", {"image"}), ("documents", {"pdf_page", "text"})):
        results = json.loads(alice.predict(query="harbour lanterns at night", r_q=16, r_c=64, k=200,
                                           include_samples=True, only=only, api_name="/search"))
        # The same results as among everything, with those of the other kind left out, ranked again from 1.
        expected = [r for r in everything if r["kind"] in wanted]
        assert [r["id"] for r in results] == [r["id"] for r in expected] and results
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in expected], abs=1e-4)
        assert {r["kind"] for r in results} <= wanted and results[0]["rank"] == 1


def test_budget_out_of_range_is_refused_with_its_name(server, alice):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="r_c"):
        alice.predict(query="boats", r_q=16, r_c=65, api_name="/search")  # keyword arguments work too
    with pytest.raises(AppError, match="empty|type a query"):
        search(alice, "   ", 16, 64)
    with pytest.raises(AppError, match="pictures"):
        alice.predict(query="boats", r_q=4, r_c=8, only="pictures", api_name="/search")


# ------------------------------------------------------------------------------------- private sessions


def test_other_session_sees_samples_but_not_my_items(server, alice, alice_report):
    bob = client(server)
    try:
        mine = {e["id"] for e in alice_report["indexed"]}
        results = search(bob, "owl", 16, 64, k=50)
        assert results, "the shared sample collection is searchable by everyone"
        assert {r["collection"] for r in results} == {"samples"}
        assert not mine & {r["id"] for r in results}
        # Bob's own upload is his alone.
        own = index(bob, [EXAMPLES / "lorikeet.jpg"])
        assert [e["path"] for e in own["indexed"]] == ["lorikeet.jpg"]
        bob_ids = {e["id"] for e in own["indexed"]}
        assert bob_ids <= {r["id"] for r in search(bob, "bird", 16, 64, k=50)}
        assert not bob_ids & {r["id"] for r in search(alice, "bird", 16, 64, k=50)}
    finally:
        bob.close()


def test_file_route_refuses_another_sessions_files(server, alice, alice_report):
    studio = server.studio
    session = studio.sessions.peek(alice.session_hash)
    assert session is not None
    stored = sorted(p for p in session.files_dir.iterdir() if p.is_file())
    assert {p.name for p in stored} >= {"owl.jpg", "harbour.pdf"}
    with httpx.Client(timeout=10) as http:
        for path in stored:
            r = http.get(f"{server.url}gradio_api/file={path}")
            assert r.status_code in (403, 404), (path, r.status_code)
            assert r.content != path.read_bytes()
        # The upload's temporary copy is gone once the file lives in the session folder.
        up = http.post(f"{server.url}gradio_api/upload",
                       files={"files": ("boats-at-sunset.jpg", (EXAMPLES / "boats-at-sunset.jpg").read_bytes())})
        assert up.status_code == 200
        temp_path = up.json()[0]
        carol = client(server)
        try:
            index(carol, [temp_path])
        finally:
            carol.close()
        assert http.get(f"{server.url}gradio_api/file={temp_path}").status_code in (403, 404)
        # Nor can a path climb out of the upload folder into the sessions.
        r = http.get(f"{server.url}gradio_api/file={session.folder}/../{session.folder.name}/files/harbour.pdf")
        assert r.status_code in (403, 404)


def test_thumbnails_may_be_cached_by_the_browser_and_nothing_else(server, alice, alice_report):
    """Issue 17: Chromium fetched the gallery's thumbnails again at every slider move; they never change."""
    studio = server.studio
    hits = studio.search(studio.encode_query("boats at sunset"), alice.session_hash, 16, 64, k=3)
    thumb = studio.thumbnail(hits[0], alice.session_hash)
    with httpx.Client(timeout=10) as http:
        r = http.get(f"{server.url}gradio_api/file={thumb}")
        assert r.status_code == 200 and r.content == Path(thumb).read_bytes()
        assert "max-age" in r.headers.get("cache-control", "")
        # Other files Gradio serves keep its headers: an upload, and a refusal inside the thumbnails' folder.
        up = http.post(f"{server.url}gradio_api/upload", files={"files": ("notes.txt", b"meadow notes")})
        other = http.get(f"{server.url}gradio_api/file={up.json()[0]}")
        assert other.status_code == 200 and "max-age" not in other.headers.get("cache-control", "")
        missing = http.get(f"{server.url}gradio_api/file={Path(thumb).parent / 'missing.jpg'}")
        assert missing.status_code in (403, 404) and "max-age" not in missing.headers.get("cache-control", "")


def test_session_folder_is_removed_when_the_session_ends(server):
    dave = client(server)
    index(dave, [EXAMPLES / "marigold.jpg"])
    session = server.studio.sessions.peek(dave.session_hash)
    assert session is not None and session.folder.is_dir()
    dave.close()  # ends the heartbeat: Gradio runs the unload event for this session
    deadline = time.time() + 20
    while session.folder.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not session.folder.exists()
    assert server.studio.sessions.peek(dave.session_hash) is None


# ------------------------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\evil.jpg", "evil.jpg"),
    ("..", "file"),
    ("", "file"),
    (".hidden.jpg", "hidden.jpg"),
    ("-rf.png", "rf.png"),
    ("photo\x00\n.jpg", "photo.jpg"),
    ("holiday <1>|2?.jpg", "holiday _1__2_.jpg"),
    ("café.jpg", "café.jpg"),
    ("..jpg", "file.jpg"),  # issue 19.11: the CLI reads "..jpg" as a .jpg, so uploads keep the type too
    ("...pdf", "file.pdf"),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_safe_filename_keeps_the_extension_of_long_names():
    name = safe_filename("x" * 500 + ".pdf")
    assert name.endswith(".pdf") and len(name) <= 120


def test_unique_child_never_overwrites_and_stays_inside(tmp_path):
    first = unique_child(tmp_path, "../a.jpg")
    first.write_bytes(b"1")
    second = unique_child(tmp_path, "a.jpg")
    assert first == tmp_path / "a.jpg" and second == tmp_path / "a (2).jpg"
    assert second.parent == tmp_path



# ------------------------------------------------------------------------------ local use, model switching


def test_local_collection_persists_and_model_switch_reindexes(other_checkpoint, test_checkpoint, tmp_path):
    """Desktop use: one persistent collection; another checkpoint gets indexes of its own, never mixed."""
    from app.service import Studio, load_engine

    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(EXAMPLES / "tabby-cat.jpg", samples / "tabby-cat.jpg")
    (samples / "LICENSES.md").write_text("not a sample: licence notes are never indexed")
    data = tmp_path / "data"
    first = load_engine(str(test_checkpoint))
    studio = Studio(first, data, sample_dir=samples)
    try:
        assert studio.prepare_samples() is not None
        assert [it.title for it in studio.items(studio.samples)] == ["tabby-cat.jpg"]
        report = studio.index_files(studio.local, [EXAMPLES / "owl.jpg"])
        assert [e["path"] for e in report["indexed"]] == ["owl.jpg"]
    finally:
        studio.close()

    again = Studio(first, data, sample_dir=samples)  # a restart: both indexes are reused as they are
    try:
        assert again.prepare_samples() is None
        assert again.sync_files(again.local) is None
        assert [it.title for it in again.items(again.local)] == ["owl.jpg"]
        with pytest.raises(FileNotFoundError, match="does not exist"):
            again.switch_model(str(tmp_path / "no-such-checkpoint"))
        assert again.engine is first
        second = again.switch_model(str(other_checkpoint))
        assert second.checkpoint_id != first.checkpoint_id
        assert [it.title for it in again.items(again.local)] == ["owl.jpg"]  # re-indexed for the new model
        assert [it.title for it in again.items(again.samples)] == ["tabby-cat.jpg"]
        folders = sorted(p.name for p in (data / "collection" / "index").iterdir())
        assert folders == sorted([first.checkpoint_id, second.checkpoint_id])
        q = again.encode_query("a small cat")
        hits = again.search(q, None, 16, 64)
        assert {h.path for h in hits} == {"tabby-cat.jpg", "owl.jpg"}
    finally:
        again.close()

    # An index written in a format this version does not read (an upgrade) is set aside and rebuilt from the
    # collection's own files.
    import sqlite3

    db = data / "collection" / "index" / first.checkpoint_id / "index.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'format_version'")
    conn.close()
    third = Studio(first, data, sample_dir=samples)
    try:
        report = third.sync_files(third.local)
        assert report is not None and [e["path"] for e in report["indexed"]] == ["owl.jpg"]
        assert [p.name for p in (data / "collection" / "index").iterdir() if ".unreadable-" in p.name]
    finally:
        third.close()


def test_shared_deployment_refuses_model_switch(test_checkpoint, tmp_path):
    from app.service import Studio, load_engine

    studio = Studio(load_engine(str(test_checkpoint)), tmp_path / "data", private_sessions=True,
                    sample_dir=None)
    try:
        with pytest.raises(PermissionError, match="fixed model"):
            studio.switch_model(None)
    finally:
        studio.close()


# ------------------------------------------------------------------------------------------ explanations


def _inspected(tokens: list[str], text: str, attention: torch.Tensor) -> dict:
    offsets, at = [], 0
    for tok in tokens:
        if tok.startswith("["):
            offsets.append([0, 0])
            continue
        piece = tok.removeprefix("##")
        start = text.index(piece, at)
        offsets.append([start, start + len(piece)])
        at = start + len(piece)
    return {"tokens": tokens, "offsets": offsets, "text": text, "attention": attention, "extras": {}}


def test_explanation_adds_up_and_points_at_the_attended_words():
    from app.ui import explain as ui_explain
    from app.ui import plots

    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    tokens = ["[CLS]", "red", "pan", "##da", "tree", "[SEP]"]
    att = torch.full((6, 6), 0.01)
    att[:, 4] = 0.95  # every candidate meta token reads "tree"
    c_insp = _inspected(tokens, "red panda tree", att)
    q_insp = _inspected(["[CLS]", "panda", "[SEP]"], "panda", torch.full((4, 3), 1 / 3))
    ex = ui_explain.explain_match(q, c, (3, 5), q_insp, c_insp)
    assert ex.sim.shape == (3, 5)
    assert float(ex.contributions.sum()) == pytest.approx(ex.score, abs=1e-5)
    assert ex.score == pytest.approx(float(maxsim(q[None], c[None], (3, 5))[0, 0]), abs=2e-2)
    assert [u.label for u in ex.c_units] == ["red", "panda", "tree"]  # word pieces joined, specials dropped
    assert ex.c_relevance.sum() == pytest.approx(1.0, abs=1e-5)
    assert ex.c_units[int(ex.c_relevance.argmax())].label == "tree"
    html = ui_explain.match_table_html(ex)
    assert html.count("<tr>") == 3 + 1  # one row per query vector, plus the header
    fig = plots.similarity_heatmap(ex.sim, ex.argmax, (3, 5))
    stars = [t for t in fig.data if t.type == "scatter"][0]
    assert list(stars.x) == [int(j) + 1 for j in ex.argmax]
    bars = plots.contribution_bars(ex.contributions, ex.argmax, ex.score)
    assert sum(bars.data[0].x) == pytest.approx(ex.score, abs=1e-4)


def test_overlay_marks_only_where_the_matching_tokens_lie():
    import numpy as np
    from PIL import Image

    from app.ui.plots import Mark, overlay

    img = Image.new("RGB", (200, 100), (255, 255, 255))
    heat = np.zeros((8, 8), np.float32)
    heat[:, :2] = 1.0  # a concept seen on the left
    out = np.asarray(overlay(img, [Mark(weight=1.0, box=(0.6, 0.1, 0.9, 0.4)), Mark(weight=0.8, heat=heat)]),
                     dtype=int)

    def orange(p):
        return int(p[0]) - int(p[2])  # red minus blue: 0 for greys, large for the highlight colours

    assert orange(out[25, 150]) > 40  # inside the box
    assert orange(out[5, 10]) > 40  # in the concept's heat
    assert abs(orange(out[80, 120])) < 10 and out[80, 120].max() < 255  # elsewhere: only dimmed


# ------------------------------------------------------------------------------------ shutdown and orphans


def test_start_up_sweep_removes_session_roots_of_dead_servers(tmp_path, monkeypatch):
    """Issue 19.8: a killed server left its private uploads in the temp folder for good."""
    import subprocess
    import sys
    import tempfile

    from app.service.sessions import OWNER_FILE, ROOT_PREFIX, SessionStore

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = tmp_path / f"{ROOT_PREFIX}orphan"
    (orphan / "abc" / "files").mkdir(parents=True)
    (orphan / OWNER_FILE).write_text(dead.stdout.strip())
    live = tmp_path / f"{ROOT_PREFIX}live"
    live.mkdir()
    (live / OWNER_FILE).write_text(str(os.getppid()))  # a process that is running
    unknown = tmp_path / f"{ROOT_PREFIX}unknown"  # no owner file: not ours to judge
    unknown.mkdir()
    store = SessionStore()
    try:
        assert not orphan.exists() and live.exists() and unknown.exists()
        assert store.root.parent == tmp_path and (store.root / OWNER_FILE).read_text() == str(os.getpid())
    finally:
        store.close()
    assert not store.root.exists()


def test_sigterm_cleans_up_private_sessions_like_ctrl_c(tmp_path):
    """Issue 19.8: with --private-sessions, `kill -TERM` left every visitor's uploads behind."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, TMPDIR=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "app.server", "--private-sessions", "--no-samples", "--port", str(port),
           "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("metaembed-sessions-*")):
            if proc.poll() is not None:
                pytest.fail(f"server exited early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the server made no session folder within 240 s")
            time.sleep(0.2)
        [root] = tmp_path.glob("metaembed-sessions-*")
        (root / "someone" / "files").mkdir(parents=True)  # a visitor's upload folder
        time.sleep(2)  # let it finish starting
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert not root.exists()


def test_agents_find_the_search_and_index_tools_over_mcp(server, alice_report):
    """Issue 17.12: `python app.py --mcp` serves the named endpoints as MCP tools (Gradio's own MCP server)."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def use_tools():
        async with streamablehttp_client(server.url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {t.name: t for t in (await session.list_tools()).tools}
                search = next(t for name, t in tools.items() if name.endswith("search"))
                result = await session.call_tool(search.name, {"query": "a cat", "r_q": 4, "r_c": 8, "k": 3,
                                                               "include_samples": True})
                return tools, search, result

    tools, search, result = asyncio.run(use_tools())
    assert any(name.endswith("index") for name in tools)
    assert "late interaction" in search.description and "query" in search.inputSchema["properties"]
    hits = json.loads(result.content[0].text)
    assert not result.isError and 1 <= len(hits) <= 3 and hits[0]["rank"] == 1
    assert hits[0]["path"] == "tabby-cat.jpg" and hits[0]["collection"] == "samples"  # the only sample photo
