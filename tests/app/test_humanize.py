"""app.humanize: how counts read in messages (files and pages, not the passages a collection stores)."""

from __future__ import annotations

from app.humanize import describe_files


def test_items_are_counted_as_files_with_a_pdfs_pages_not_as_passages():
    """Tester report: 19 files (41 + 5 PDF pages, 17 photos) were announced as "Added 191 items"."""
    photos = [(f"IMG_{i}.jpg", None, "image") for i in range(17)]
    guide = [("guide.pdf", p, kind) for p in range(1, 42) for kind in ("pdf_page", "text", "text", "text")]
    faq = [("faq.pdf", p, "pdf_page") for p in range(1, 6)]
    assert len(photos + guide + faq) == 186  # what the old message counted
    assert describe_files(photos + guide + faq) == "19 files (17 photos, 2 PDFs with 46 pages)"


def test_one_kind_reads_without_a_total_and_text_files_are_files():
    assert describe_files([("IMG_1.jpg", None, "image")]) == "1 photo"
    assert describe_files([("a.pdf", 3, "pdf_page"), ("a.pdf", 3, "text")]) == "1 PDF with 1 page"
    assert describe_files([("n.txt", None, "text"), ("n.txt", None, "text"), ("z.zip!/m.md", None, "text")]) == \
        "2 text files"
    assert describe_files([("n.txt", None, "text"), ("p.png", None, "image")]) == "2 files (1 photo, 1 text file)"
    assert describe_files([]) == "no files"


def test_sizes_read_in_a_given_unit_as_a_charts_axis_shows_them():
    """Issue 17: the Scaling tab's size chart said MiB on its axis and "12 KB" or "1.5 MB" on its bars."""
    from app.humanize import byte_unit, human_bytes

    assert byte_unit(1000) == ("bytes", 1) and byte_unit(1536) == ("KB", 1024) and byte_unit(3 * 2**20) == ("MB", 2**20)
    assert [human_bytes(n) for n in (1000, 1536, 2**21)] == ["1,000 bytes", "1.5 KB", "2 MB"]
    assert [human_bytes(n, "MB") for n in (3 * 2**10, 196608, 2**21, 14.06 * 2**20)] == [
        "0.0029 MB", "0.19 MB", "2 MB", "14.1 MB"]  # a small value keeps two digits, not "0 MB"
    assert human_bytes(0, "KB") == "0 KB"


def test_one_line_escapes_control_characters_and_keeps_every_script():
    from app.humanize import one_line

    assert one_line("café 日本.jpg") == "café 日本.jpg"
    assert one_line("new\nline\t.jpg") == "new\\nline\\t.jpg"
    assert "\n" not in one_line("a\r\nb\x1b[31m")


def test_plural():
    from app.humanize import plural

    assert (plural(1, "result"), plural(0, "result"), plural(24, "result")) == ("1 result", "0 results", "24 results")
    assert (plural(1, "query", "queries"), plural(3, "query", "queries")) == ("1 query", "3 queries")


def test_a_score_that_rounds_to_zero_has_no_sign():
    """UX review (s33): a result's score read "-0.00"."""
    from app.humanize import score_text

    assert [score_text(v) for v in (-0.001, 0.0, -0.0, 0.004, -0.05, 0.456)] == ["0.00", "0.00", "0.00", "0.00",
                                                                                "-0.05", "0.46"]
