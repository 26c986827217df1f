"""python -m app.cli: JSON output, exit codes, errors, and a real kill -9 in the middle of indexing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from app import cli
from app.humanize import SCORE_SCALE
from app.search import Searcher
from app.store.index import DB_NAME, Index
from model.scoring import maxsim
from tests.helpers import REPO, WORDS, make_pdf, write_mixed_corpus, write_texts

REAL_LOAD_MODEL = cli.load_model  # before the autouse fixture below swaps it for the session's model


@pytest.fixture(scope="module")
def ckpt(test_checkpoint) -> Path:
    return test_checkpoint


@pytest.fixture(autouse=True)
def shared_model(test_checkpoint, test_model, monkeypatch):
    """In-process CLI calls reuse the session's loaded model instead of loading it on every call."""
    model = test_model
    folder = test_checkpoint

    def load(path):
        if Path(path) != folder:
            from model import MetaEmbed

            return MetaEmbed.from_pretrained(path, device="cpu")
        return model

    monkeypatch.setattr(cli, "load_model", load)
    return model


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag", ["--index", "--store"])
def test_index_search_info_list_remove_json(tmp_path, ckpt, capsys, flag):
    """Every command on the embedded index (--index DIR) and on Qdrant (--store qdrant-local:DIR)."""
    files = write_mixed_corpus(tmp_path / "in", images=True)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    idx = tmp_path / "idx" if flag == "--index" else f"qdrant-local:{tmp_path / 'idx'}"
    code, out, _ = run(capsys, "index", tmp_path / "in", flag, idx, "--checkpoint", ckpt, "--json", "--no-ocr")
    assert code == 0
    report = json.loads(out)
    assert set(report) >= {"indexed", "skipped_duplicates", "errors"}
    assert report["errors"] == [{"path": str((tmp_path / "in" / "broken.png").resolve()),
                                 "error": report["errors"][0]["error"]}]
    assert report["errors"][0]["error"].startswith("broken.png: ")
    pages = sorted(e["page"] for e in report["indexed"] if e["path"] == str(files["pdf"].resolve()))
    assert pages == [1, 2]

    # Later commands use the checkpoint recorded in the index.
    code, out, _ = run(capsys, "search", "quarterly revenue report", flag, idx, "--json", "--k", "3")
    assert code == 0
    result = json.loads(out)
    assert result["query"] == "quarterly revenue report" and result["budget"] == [16, 64]
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    for r in result["results"]:
        assert set(r) == {"rank", "id", "path", "page", "score", "comparable_score"}
        assert os.path.isabs(r["path"].split("!/")[0]) and isinstance(r["score"], float)
        assert r["comparable_score"] == pytest.approx(r["score"] / 16)  # MaxSim / r_q, as the app shows it
        assert r["page"] is None or r["page"] >= 1
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True)

    code, out, _ = run(capsys, "search", "quarterly revenue report", flag, idx, "--json", "--budget", "2,4")
    assert code == 0 and json.loads(out)["budget"] == [2, 4]

    # --only ranks the photos alone, or the pages and text files alone.
    photos = {str(files["png"].resolve()), str(files["jpg"].resolve())}
    code, out, _ = run(capsys, "search", "quarterly revenue report", flag, idx, "--json", "--k", "10", "--only", "photos")
    assert code == 0 and {r["path"] for r in json.loads(out)["results"]} == photos
    code, out, _ = run(capsys, "search", "a red square", flag, idx, "--json", "--k", "10", "--only", "documents")
    documents = json.loads(out)["results"]
    assert code == 0 and len(documents) >= 4 and not {r["path"] for r in documents} & photos
    code, out, _ = run(capsys, "search", "a red square", flag, idx, "--only", "photos")
    assert code == 0 and out.startswith("2 results for 'a red square' among the photos at budget (16, 64)")

    code, out, _ = run(capsys, "info", flag, idx, "--json")
    info = json.loads(out)
    assert code == 0 and info["items"] == len(report["indexed"]) and info["checkpoint_source"] == str(ckpt.resolve())

    code, out, _ = run(capsys, "list", flag, idx, "--json")
    listed = json.loads(out)
    assert sorted(r["id"] for r in listed) == sorted(e["id"] for e in report["indexed"])

    code, out, _ = run(capsys, "remove", files["pdf"], flag, idx, "--json")
    assert code == 0 and len(json.loads(out)["removed"]) == 2
    code, out, _ = run(capsys, "info", flag, idx, "--json")
    assert json.loads(out)["items"] == info["items"] - 2

    # Indexing the same folder again: everything is already there.
    code, out, _ = run(capsys, "index", tmp_path / "in", flag, idx, "--json", "--no-ocr")
    again = json.loads(out)
    assert code == 0 and [e["page"] for e in again["indexed"]] == [1, 2]  # only the removed PDF comes back
    assert len(again["skipped_duplicates"]) >= 1


def _long_pdf_and_text(folder: Path) -> tuple[Path, Path]:
    """A two-page PDF and a text file long enough to be split into several passages each."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(10)) + "." for i in range(32)]
    pdf = folder / "long.pdf"
    pdf.write_bytes(make_pdf([[(40, 760 - 22 * n, 10, line) for n, line in enumerate(lines)]] * 2))
    txt = folder / "long.txt"
    txt.write_text("\n\n".join(lines * 2) + "\n")
    return pdf, txt


def test_search_gives_one_result_per_page_or_file_as_the_app_does(tmp_path, ckpt, capsys):
    """Tester report: "page 5" and "page 5, passage 1" were separate results; ranks 1-3 all page 4."""
    pdf, txt = _long_pdf_and_text(tmp_path / "in")
    idx = tmp_path / "idx"
    assert run(capsys, "index", tmp_path / "in", "--index", idx, "--checkpoint", ckpt, "--quiet", "--no-ocr")[0] == 0
    code, out, _ = run(capsys, "list", "--index", idx, "--json")
    items = json.loads(out)
    assert len(items) > 3  # pages and text split into passages: more items than the three results below

    code, out, _ = run(capsys, "search", "harbour lantern orchard", "--index", idx, "--json", "--k", "10")
    assert code == 0
    results = json.loads(out)["results"]
    units = [(r["path"], r["page"]) for r in results]
    assert sorted(units, key=str) == sorted([(str(pdf.resolve()), 1), (str(pdf.resolve()), 2),
                                             (str(txt.resolve()), None)], key=str)
    assert [r["rank"] for r in results] == [1, 2, 3]

    code, out, _ = run(capsys, "search", "harbour lantern orchard", "--index", idx, "--k", "10")
    lines = out.splitlines()[1:]
    assert code == 0 and len(lines) == 3 and not any("passage" in line for line in lines)
    # The plain output prints the comparable score (MaxSim / r_q), not the raw sum.
    shown = [float(line.split()[1]) for line in lines]
    assert shown == pytest.approx([r["comparable_score"] for r in results], abs=5e-4)
    assert SCORE_SCALE in out.splitlines()[0]  # what the scores mean, in the words the app uses


def test_index_and_remove_count_files_and_pages_not_passages(tmp_path, ckpt, capsys):
    """Issue 17: the CLI said "Indexed 9 items from 2 files" and "Removed 6 items" for one PDF, as the app
    once did: a page's passages are items of their own."""
    pdf, txt = _long_pdf_and_text(tmp_path / "in")
    idx = tmp_path / "idx"
    code, out, _ = run(capsys, "index", tmp_path / "in", "--index", idx, "--checkpoint", ckpt, "--quiet", "--no-ocr")
    assert code == 0 and out.startswith("Indexed 2 files (1 PDF with 2 pages, 1 text file) in "), out
    items = json.loads(run(capsys, "list", "--index", idx, "--json")[1])
    assert len([it for it in items if it["path"] == str(pdf.resolve())]) > 2  # more items than pages
    code, out, _ = run(capsys, "remove", pdf, "--index", idx)
    assert code == 0 and out == "Removed 1 PDF with 2 pages.\n"
    code, out, _ = run(capsys, "remove", txt, "--index", idx)
    assert code == 0 and out == "Removed 1 text file.\n"


def test_loading_the_model_draws_no_transformers_progress_bar(test_checkpoint, capfd):
    """Tester report: "Loading weights: 100%|...| 103/103" was printed by every command, errors included."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a fresh process starts
    try:
        model = REAL_LOAD_MODEL(test_checkpoint)
        _, err = capfd.readouterr()
        assert model.config.name == "test-index"
        assert "Loading weights" not in err and not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_quieting_progress_bars_does_not_import_transformers():
    """MetaEmbed-Mini loads without transformers (1-2 s of imports): the CLI must not import it just to silence
    it, and a transformers imported later (a VLM backbone) must still start with its bars off."""
    code = ("import sys; from app.cli import quiet_library_progress; quiet_library_progress(); "
            "before = 'transformers' in sys.modules; from transformers.utils import logging; "
            "print(before, logging.is_progress_bar_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"})
    assert out.stdout.split() == ["False", "False"]


def test_human_output_and_errors(other_checkpoint, tmp_path, ckpt, capsys):
    write_texts(tmp_path / "in", 2)
    idx = tmp_path / "idx"
    code, out, err = run(capsys, "index", tmp_path / "in", tmp_path / "missing.txt", "--index", idx,
                         "--checkpoint", ckpt, "--quiet")
    assert code == 0
    assert "Indexed 2 text files in" in out and "1 failed" in out and "missing.txt: no such file" in out

    code, out, err = run(capsys, "search", "note", "--index", idx, "--budget", "16,65")
    assert code == 1 and "r_c=65 is out of range: allowed 1..64" in err
    code, out, err = run(capsys, "search", "note", "--index", idx, "--budget", "abc")
    assert code == 1 and "--budget must be two positive integers" in err
    code, out, err = run(capsys, "search", "note", "--index", tmp_path / "nowhere")
    assert code == 1 and "does not exist" in err
    code, out, err = run(capsys, "index", tmp_path / "in", "--index", tmp_path / "in" / "note-000.txt" / "idx",
                         "--checkpoint", ckpt)
    assert code == 1 and "cannot create the index folder" in err and "Errno" not in err, err
    code, out, err = run(capsys, "search", "note", "--index", tmp_path / "in" / "note-000.txt")
    assert code == 1 and "note-000.txt is a file; an index is a folder" in err
    (tmp_path / "empty.jpg").write_bytes(b"")
    code, out, err = run(capsys, "search", "--image", tmp_path / "empty.jpg", "--index", idx)
    assert code == 1 and "empty.jpg: not a readable image (the file is empty)" in err
    code, out, err = run(capsys, "remove", "no-such-item", "--index", idx)
    assert code == 1 and "nothing in index" in err
    code, out, err = run(capsys, "index", tmp_path / "in", "--index", idx,
                         "--checkpoint", other_checkpoint)
    assert code == 1 and "vectors of different checkpoints cannot be compared" in err

    code, out, err = run(capsys, "index", tmp_path / "nothing-here.txt", "--index", idx, "--quiet")
    assert code == 1 and "no such file" in out  # nothing could be done
    code, out, _ = run(capsys, "search", "note", "--index", idx, "--k", "1")
    assert code == 0 and out.splitlines()[1].startswith("  1. ")


def test_qdrant_store_says_how_a_budget_is_scored_and_what_it_cannot_reach(tmp_path, ckpt, capsys):
    write_texts(tmp_path / "in", 2)
    store = f"qdrant-local:{tmp_path / 'q'}"
    code, out, _ = run(capsys, "index", tmp_path / "in", "--store", store, "--checkpoint", ckpt, "--quiet")
    assert code == 0 and "Indexed 2 text files" in out
    code, out, _ = run(capsys, "search", "note", "--store", store, "--budget", "2,5")
    assert code == 0 and "(scored at (2, 8): this store keeps the presets' r_c only)" in out
    code, out, _ = run(capsys, "compact", "--store", store)
    assert code == 0 and "reclaims the space of removed items itself" in out
    code, out, err = run(capsys, "search", "note", "--store", "qdrant://127.0.0.1:9/photos")
    assert code == 1 and "cannot reach Qdrant at qdrant://127.0.0.1:9/photos" in err
    code, out, err = run(capsys, "info", "--store", f"qdrant-local:{tmp_path / 'typo'}")
    assert code == 1 and "does not exist" in err and not (tmp_path / "typo").exists()
    with pytest.raises(SystemExit):
        cli.main(["info", "--store", store, "--index", str(tmp_path / "idx")])  # one or the other


def test_a_full_disk_and_a_damaged_database_are_clear_messages(tmp_path, ckpt, capsys, monkeypatch):
    """Issue 19.6: both used to end in a traceback (and no JSON report)."""
    import errno

    write_texts(tmp_path / "in", 2)
    idx = tmp_path / "idx"
    assert run(capsys, "index", tmp_path / "in", "--index", idx, "--checkpoint", ckpt, "--quiet")[0] == 0

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(idx / "segments" / "seg-9.npy"))

    monkeypatch.setattr(cli, "index_paths", full)
    write_texts(tmp_path / "more", 1, start=10)
    code, out, err = run(capsys, "index", tmp_path / "more", "--index", idx, "--quiet", "--json")
    assert code == 1 and "Traceback" not in err
    assert "the disk is full" in err and "free some space" in err
    assert "disk is full" in json.loads(out)["error"]
    monkeypatch.undo()

    db = idx / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:] = b"\xde\xad\xbe\xef" * ((len(data) - page) // 4)  # every page after the header: garbage
    db.write_bytes(bytes(data))
    for wal in idx.glob(DB_NAME + "-*"):
        wal.unlink()
    code, out, err = run(capsys, "info", "--index", idx)
    assert code == 1 and "Traceback" not in err
    assert "damaged" in err or "not a readable index database" in err
    assert "index" in err and ("rebuild" in err or "again" in err)


def test_ctrl_c_and_a_closed_pipe_end_in_one_line_not_a_traceback(tmp_path, ckpt, capfd, monkeypatch):
    """Ctrl-C during `index` printed ~40 lines of traceback and nothing of what was kept; `info | head`
    printed "error: Broken pipe"."""
    write_texts(tmp_path / "in", 2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "index_paths", interrupted)
    code, out, err = run(capfd, "index", tmp_path / "in", "--index", tmp_path / "idx", "--checkpoint", ckpt)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted; everything indexed before stays, and running the same "
                                            "command again adds the rest")

    def reader_gone(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_info", reader_gone)
    assert cli.main(["info", "--index", str(tmp_path / "idx")]) == 1
    assert capfd.readouterr().err == ""


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created yet, or busy


def test_kill_9_during_indexing_keeps_every_committed_item(tmp_path, ckpt, shared_model):
    files = write_texts(tmp_path / "in", 60)
    idx = tmp_path / "idx"
    cmd = [sys.executable, "-m", "app.cli", "index", str(tmp_path / "in"), "--index", str(idx),
           "--checkpoint", str(ckpt), "--batch-size", "1", "--quiet", "--no-ocr"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while _count(idx / DB_NAME) < 3:
            if proc.poll() is not None:
                pytest.fail(f"indexer exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("indexer committed nothing within 300 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    with Index.open(idx) as index:
        committed = index.items()
        assert 3 <= len(committed) < len(files), "the kill must land in the middle of the run"
        searcher = Searcher(shared_model, index)
        cands = torch.stack([index.vectors(it.id) for it in committed])
        # Committed vectors are intact: they are the model's encoding of each item's text.
        expected = shared_model.encode_candidates([it.text for it in committed])
        torch.testing.assert_close(cands.float(), expected.bfloat16().float(), atol=2e-2, rtol=0)
        results = searcher.search(committed[0].text, (4, 8), k=len(committed))
        ref = maxsim(searcher.query_vectors(committed[0].text)[None], cands, (4, 8))[0]
        assert sorted(h.id for h in results.hits) == sorted(it.id for it in committed)
        for hit in results.hits:
            assert abs(hit.score - float(ref[[it.id for it in committed].index(hit.id)])) < 1e-2
        ids_before = {it.id: it.path for it in committed}

    assert cli.main(["index", str(tmp_path / "in"), "--index", str(idx), "--quiet", "--no-ocr"]) == 0
    with Index.open(idx) as index:
        final = index.items()
        assert sorted(it.path for it in final) == sorted(str(p.resolve()) for p in files)
        assert {it.id: it.path for it in final if it.id in ids_before} == ids_before
        assert index.info()["dead_rows"] == 0
        leftovers = [p.name for p in (idx / "segments").iterdir() if not p.name.startswith("seg-")]
        assert leftovers == []


def test_a_copy_is_named_with_its_twin_and_a_newline_in_a_name_stays_on_its_line(tmp_path, ckpt, capsys):
    """A tester's folder: the CLI said only "1 already indexed or duplicate" (which file, a copy of what?), and a
    file name holding a newline split its line of `list` in two."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("The ferry leaves the harbour at eight every morning.")
    (folder / "b copy.txt").write_text("The ferry leaves the harbour at eight every morning.")
    (folder / "new\nline.txt").write_text("Lanterns glow along the quay at night.")
    idx = tmp_path / "idx"
    code, out, _ = run(capsys, "index", folder, "--index", idx, "--checkpoint", ckpt, "--quiet", "--no-ocr")
    assert code == 0 and "1 file already indexed or duplicate" in out
    assert f"  skipped: {folder / 'b copy.txt'} (same content as {folder / 'a.txt'})" in out
    code, out, _ = run(capsys, "list", "--index", idx)
    lines = out.splitlines()
    assert len(lines) == 2 and any("/new\\nline.txt (passage 1)" in line for line in lines), out
    code, out, _ = run(capsys, "index", folder, "--index", idx, "--quiet", "--no-ocr")
    # Files already indexed are counted, not listed one by one (a folder indexed again would list them all);
    # the copy is still named.
    skipped = [line for line in out.splitlines() if line.startswith("  skipped:")]
    assert "3 files already indexed or duplicate" in out and len(skipped) == 1 and "b copy.txt" in skipped[0], out


def test_many_copies_are_counted_after_the_first_ones_and_pages_count_as_their_file(tmp_path, ckpt, capsys):
    """A zip of 3,000 identical files printed 2,999 "skipped" lines; a PDF read again said "2 already indexed"
    (its pages)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(cli.NAMED_COPIES + 5):
        (folder / f"copy{k:02d}.txt").write_text("The same short note in every file.")
    idx = tmp_path / "idx"
    code, out, _ = run(capsys, "index", folder, "--index", idx, "--checkpoint", ckpt, "--quiet", "--no-ocr")
    skipped = [line for line in out.splitlines() if line.startswith("  skipped:")]
    assert len(skipped) == cli.NAMED_COPIES + 1, out
    assert skipped[-1] == "  skipped: 4 more copies of other files (--json lists them all)"
    pdf = tmp_path / "two-pages.pdf"
    pdf.write_bytes(make_pdf([[(72, 700, 12, "first page")], [(72, 700, 12, "second page")]]))
    run(capsys, "index", pdf, "--index", idx, "--quiet", "--no-ocr")
    code, out, _ = run(capsys, "index", pdf, "--index", idx, "--quiet", "--no-ocr")
    assert "; 1 file already indexed or duplicate;" in out, out
