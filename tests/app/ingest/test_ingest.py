"""Tests for app.ingest. Every fixture is generated in tmp_path (PIL images, hand-written PDFs, zips)."""

from __future__ import annotations

import hashlib
import io
import random
import stat
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app.ingest import (
    SUPPORTED_EXTENSIONS,
    DuplicateSkipped,
    IngestError,
    IngestLimits,
    Item,
    OcrUnavailable,
    decode_text,
    ingest,
    iter_ingest,
    split_passages,
)
from tests.helpers import VOCAB, make_pdf

# ------------------------------------------------------------------------------------------------ helpers


def save_image(path: Path, size=(64, 48), color=(200, 30, 30), fmt: str | None = None, **kw) -> Path:
    Image.new("RGB", size, color).save(path, format=fmt, **kw)
    return path


def sentences(n: int, seed: int, words_per: tuple[int, int] = (6, 14)) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(*words_per))]
        out.append(" ".join(words).capitalize() + rng.choice(".!?"))
    return out


class FakeOcr:
    def __init__(self, words=(("Scanned", (0.1, 0.1, 0.3, 0.15)), ("invoice", (0.35, 0.1, 0.6, 0.15)),
                              ("total", (0.1, 0.3, 0.25, 0.35)))):
        self.words = words
        self.calls: list[Image.Image] = []

    def __call__(self, image: Image.Image):
        self.calls.append(image)
        return [SimpleNamespace(text=t, box=b, score=0.9) for t, b in self.words]


def no_ocr(image):
    raise AssertionError("OCR must not run on a page with a text layer")


def scanned_pdf(path: Path) -> Path:
    Image.new("RGB", (600, 800), (250, 250, 250)).save(path, format="PDF")
    return path


def only_errors(report) -> list[str]:
    return [e.error for e in report.errors]


def dark_inside(image: Image.Image, box) -> bool:
    w, h = image.size
    crop = image.crop((int(box[0] * w), int(box[1] * h), int(np.ceil(box[2] * w)), int(np.ceil(box[3] * h))))
    return crop.size[0] > 0 and crop.size[1] > 0 and min(crop.convert("L").getdata()) < 100


# ------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                     (".tiff", "TIFF"), (".gif", "GIF")])
def test_each_image_format_becomes_one_rgb_item(tmp_path, ext, fmt):
    path = save_image(tmp_path / f"photo{ext}", size=(80, 60), color=(30, 60, 220), fmt=fmt)
    report = ingest([path], ocr=no_ocr)
    assert report.errors == []
    [item] = report.items
    assert item.kind == "image" and item.page is None and item.passage is None and item.text is None
    assert item.source == str(path.resolve()) and item.title == path.name
    assert item.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert item.size_bytes == path.stat().st_size
    assert item.image.mode == "RGB" and item.image.size == (80, 60)
    r, g, b = item.image.getpixel((40, 30))
    assert b > 150 and r < 90 and g < 110
    thumb = Image.open(io.BytesIO(item.thumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) <= 384


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (80, 40), (220, 20, 20))
    im.paste((20, 20, 220), (40, 0, 80, 40))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display needs a 90 degree clockwise turn
    path = tmp_path / "sideways.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    [item] = ingest([path], ocr=no_ocr).items
    assert item.image.size == (40, 80)
    top, bottom = item.image.getpixel((20, 10)), item.image.getpixel((20, 70))
    assert top[0] > 150 and top[2] < 100  # the left (red) half is now on top
    assert bottom[2] > 150 and bottom[0] < 100


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((230, 10, 10), (10, 10, 230))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    [item] = ingest([path], ocr=no_ocr).items
    r, _, b = item.image.getpixel((16, 16))
    assert r > 180 and b < 60


def test_alpha_palette_cmyk_and_16bit_become_sensible_rgb(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (0, 0, 10, 20))
    rgba.save(tmp_path / "a_alpha.png")
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 10, 20, 240] + [0] * 762)
    pal.save(tmp_path / "b_palette.png", transparency=0)
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c_cmyk.jpg")
    Image.fromarray(np.full((20, 20), 128 * 257, dtype=np.uint16)).save(tmp_path / "d_gray16.png")
    Image.fromarray(np.full((20, 20), 200, dtype=np.uint16)).save(tmp_path / "e_dark16.png")
    report = ingest([tmp_path], ocr=no_ocr)
    assert report.errors == []
    by_name = {i.title: i.image for i in report.items}
    assert all(im.mode == "RGB" for im in by_name.values())
    assert by_name["a_alpha.png"].getpixel((15, 10)) == (255, 255, 255)  # transparent -> white
    assert by_name["a_alpha.png"].getpixel((5, 10))[1] > 180
    assert by_name["b_palette.png"].getpixel((5, 5)) == (10, 20, 240)
    r, g, b = by_name["c_cmyk.jpg"].getpixel((10, 10))
    assert r > 180 and g < 80 and b < 80
    assert abs(by_name["d_gray16.png"].getpixel((10, 10))[0] - 128) <= 1  # scaled, not clipped to white
    # 16-bit is always /257 (model.visual.images.to_rgb): a 16-bit picture this dark is near black, even though
    # its samples would fit in 8 bits (ingest once kept such samples as they were, 200 of 255).
    assert by_name["e_dark16.png"].getpixel((10, 10)) == (1, 1, 1)


def test_big_image_is_downscaled_for_encoding(tmp_path):
    path = save_image(tmp_path / "wide.jpg", size=(2000, 1000))
    [item] = ingest([path], ocr=no_ocr).items
    assert item.image.size == (1600, 800)
    assert max(Image.open(io.BytesIO(item.thumbnail)).size) == 384


def test_image_above_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "poster.png"
    Image.new("L", (3000, 2000), 255).save(path)
    report = ingest([path], limits=IngestLimits(max_megapixels=5), ocr=no_ocr)
    assert report.items == []
    assert only_errors(report) == ["poster.png: too large (6 megapixels, limit 5)"]


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(10000, 8000), (40000, 40000)])
def test_decompression_bomb_headers_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(width, height))
    [error] = ingest([path], ocr=no_ocr).errors
    assert error.error.startswith("bomb.png: too large (")
    assert f"{width * height / 1e6:,.0f} megapixels, limit 60)" in error.error


def test_broken_empty_and_misnamed_images(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 10)).save(good, format="JPEG")
    (tmp_path / "a_png_named_jpg.jpg").write_bytes(_encoded_png((0, 0, 255)))
    (tmp_path / "b_noise.png").write_bytes(random.Random(0).randbytes(500))
    (tmp_path / "c_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "d_empty.jpg").write_bytes(b"")
    (tmp_path / "e_text_named.jpg").write_text("this is not a picture")
    report = ingest([tmp_path], ocr=no_ocr)
    assert [i.title for i in report.items] == ["a_png_named_jpg.jpg"]
    errors = only_errors(report)
    assert errors[0].startswith("b_noise.png: not a readable image (")
    assert errors[1].startswith("c_truncated.jpg: not a readable image (")
    assert errors[2] == "d_empty.jpg: not a readable image (the file is empty)"
    assert errors[3].startswith("e_text_named.jpg: not a readable image (")
    assert [Path(e.path).name for e in report.errors] == ["b_noise.png", "c_truncated.jpg", "d_empty.jpg",
                                                         "e_text_named.jpg"]


def _encoded_png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def test_unsupported_and_missing_paths(tmp_path):
    (tmp_path / "notes.xyz").write_text("x")
    (tmp_path / "README").write_text("x")
    report = ingest([tmp_path / "notes.xyz", tmp_path / "README", tmp_path / "gone.png"], ocr=no_ocr)
    errors = only_errors(report)
    assert errors[0].startswith("notes.xyz: unsupported file type .xyz (supported: ")
    assert all(ext in errors[0] for ext in (".jpg", ".pdf", ".txt", ".zip"))
    assert errors[1].startswith("README: unsupported file type (the name has no extension")
    assert errors[2] == "gone.png: no such file or folder"
    assert SUPPORTED_EXTENSIONS >= {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pdf",
                                    ".txt", ".md", ".zip"}


# --------------------------------------------------------------------------------------------------- PDFs


def test_pdf_with_text_layer_gives_one_item_per_page_with_word_boxes(tmp_path):
    path = tmp_path / "letter.pdf"
    path.write_bytes(make_pdf([[(72, 700, 24, "Hello world (PDF)"), (72, 600, 12, "Second line here.")],
                               [(300, 100, 18, "Page two has text")]]))
    report = ingest([path], ocr=no_ocr)
    assert report.errors == [] and report.notes == []
    p1, p2 = report.items
    assert [(p.kind, p.page, p.passage) for p in (p1, p2)] == [("pdf_page", 1, None), ("pdf_page", 2, None)]
    assert p1.text == "Hello world (PDF)\nSecond line here." and p2.text == "Page two has text"
    assert p1.image.mode == "RGB" and max(p1.image.size) == 1200 and p1.image.size[0] < p1.image.size[1]
    assert [w for w, _ in p1.words] == ["Hello", "world", "(PDF)", "Second", "line", "here."]
    for word, box in p1.words + p2.words:
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1, word
    assert all(dark_inside(p1.image, box) for _, box in p1.words)
    hello, second = p1.words[0][1], p1.words[3][1]
    assert hello[1] < second[1] < 0.5  # top of the page, "Hello" line above "Second"
    assert p2.words[0][1][1] > 0.8  # y=100pt is near the bottom
    assert p1.content_hash != p2.content_hash
    assert max(Image.open(io.BytesIO(p1.thumbnail)).size) <= 384


def test_rotated_pdf_page_boxes_follow_the_rendered_image(tmp_path):
    path = tmp_path / "rotated.pdf"
    path.write_bytes(make_pdf([[(72, 700, 24, "Rotated heading"), (72, 400, 14, "body words")]], rotate=90))
    [page] = ingest([path], ocr=no_ocr).items
    assert page.image.size[0] > page.image.size[1]  # landscape after /Rotate 90
    assert len(page.words) == 4
    assert all(dark_inside(page.image, box) for _, box in page.words)
    assert not dark_inside(page.image, (0.0, 0.0, 0.5, 0.5))  # text sits on the right half when rotated


def test_long_pdf_page_is_split_into_passages_sharing_the_page_image(tmp_path):
    lines, y = [], 760
    for sentence in sentences(60, seed=1):
        lines.append((40, y, 7, sentence))
        y -= 12
    path = tmp_path / "dense.pdf"
    path.write_bytes(make_pdf([lines]))
    report = ingest([path], ocr=no_ocr)
    *passages, page = report.items
    assert page.kind == "pdf_page" and len(passages) >= 3
    assert all(p.kind == "text" and p.page == 1 for p in passages)
    assert [p.passage for p in passages] == list(range(len(passages)))
    for p in passages:
        assert p.image is page.image and p.thumbnail is page.thumbnail
        start, end = p.char_span
        assert p.text == page.text[start:end]
        assert len(p.text.split()) <= 150
        assert p.words and {w for w, _ in p.words} <= set(p.text.split())
    assert sum(len(p.words) for p in passages) == len(page.words)
    assert len({p.content_hash for p in report.items}) == len(report.items)


def test_a_pdf_read_again_after_a_run_cut_short_gets_every_item(tmp_path):
    """A run stopped between two commits leaves some of a PDF's items in the index; reading the file again
    must add exactly the rest. With the page item first, a page whose item was committed was skipped whole,
    and its passages in the next, uncommitted batch were never added (found by killing `index` midway)."""
    pages = []
    for n in range(2):
        lines, y = [], 760
        for sentence in sentences(60, seed=n + 1):
            lines.append((40, y, 7, sentence))
            y -= 12
        pages.append(lines)
    path = tmp_path / "dense.pdf"
    path.write_bytes(make_pdf(pages))
    every = [i.content_hash for i in ingest([path], ocr=no_ocr).items]
    assert len(every) >= 8
    for committed in range(1, len(every)):  # items are committed in the order they are read
        known = set(every[:committed])
        again = [i.content_hash for i in ingest([path], ocr=no_ocr, known_hashes=known).items]
        assert sorted(again) == sorted(every[committed:]), committed


def test_a_pdf_without_pages_says_so(tmp_path):
    """It was called damaged: PDFium will not open a document with no pages, and reports success as its error."""
    objects = [b"<< /Type /Pages /Count 0 /Kids [ ] >>", b"<< /Type /Catalog /Pages 1 0 R >>"]
    body, offsets = b"%PDF-1.4\n", []
    for n, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    body += b"trailer\n<< /Size 3 /Root 2 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    path = tmp_path / "empty.pdf"
    path.write_bytes(body)
    assert only_errors(ingest([path], ocr=no_ocr)) == ["empty.pdf: the PDF has no pages"]


def test_scanned_pdf_page_is_ocred(tmp_path):
    path = scanned_pdf(tmp_path / "scan.pdf")
    fake = FakeOcr()
    [page] = ingest([path], ocr=fake).items
    assert len(fake.calls) == 1 and fake.calls[0] is page.image
    assert page.text == "Scanned invoice\ntotal"
    assert page.words == [(t, b) for t, b in fake.words]


def test_scanned_pdf_without_ocr_is_still_indexed_as_an_image(tmp_path):
    path = scanned_pdf(tmp_path / "scan.pdf")
    report = ingest([path], ocr=None)
    [page] = report.items
    assert page.kind == "pdf_page" and page.text is None and page.words == [] and page.image is not None
    assert report.notes == [] and report.errors == []


def test_unavailable_or_failing_ocr_gives_a_note_not_an_error(tmp_path, monkeypatch):
    scanned_pdf(tmp_path / "a.pdf")
    Image.new("RGB", (600, 800), (240, 240, 240)).save(tmp_path / "b.pdf", format="PDF")

    def unavailable(image):
        raise OcrUnavailable("rapidocr is not installed")

    report = ingest([tmp_path], ocr=unavailable)
    assert len(report.items) == 2 and report.errors == []
    assert [n.path for n in report.notes] == [str((tmp_path / n).resolve()) for n in ("a.pdf", "b.pdf")]
    assert "text recognition (OCR) is not available (rapidocr is not installed)" in report.notes[0].note

    def broken(image):
        raise RuntimeError("model crashed")

    report = ingest([tmp_path / "a.pdf"], ocr=broken)
    assert len(report.items) == 1
    assert "text recognition failed on page 1 (RuntimeError: model crashed)" in report.notes[0].note

    monkeypatch.setitem(sys.modules, "model.visual.ocr", None)  # makes the lazy import fail
    report = ingest([tmp_path / "a.pdf"])
    assert len(report.items) == 1 and "(OCR) is not available" in report.notes[0].note


def test_encrypted_pdf_is_reported(tmp_path):
    path = tmp_path / "secret.pdf"
    path.write_bytes(make_pdf([[(72, 700, 12, "classified")]], encrypt=True))
    report = ingest([path], ocr=no_ocr)
    assert report.items == []
    [error] = only_errors(report)
    assert error.startswith("secret.pdf: ") and "password" in error


def test_a_pdf_without_pages_after_an_encrypted_one_gets_its_own_reason(tmp_path):
    """Issue 19.7: PDFium's stale last error made a 0-page PDF read as "password-protected"."""
    (tmp_path / "a_secret.pdf").write_bytes(make_pdf([[(72, 700, 12, "classified")]], encrypt=True))
    (tmp_path / "b_empty.pdf").write_bytes(make_pdf([]))
    errors = only_errors(ingest([tmp_path / "a_secret.pdf", tmp_path / "b_empty.pdf"], ocr=no_ocr))
    assert "password" in errors[0]
    assert errors[1].startswith("b_empty.pdf: ") and "password" not in errors[1]
    assert "no pages" in errors[1] or "not a readable PDF" in errors[1]


def test_pdf_page_cap_and_broken_pdf(tmp_path):
    (tmp_path / "book.pdf").write_bytes(make_pdf([[(72, 700, 12, "one")], [(72, 700, 12, "two")]]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    report = ingest([tmp_path], limits=IngestLimits(max_pdf_pages=1), ocr=no_ocr)
    assert report.items == []
    assert only_errors(report) == ["book.pdf: too many pages (2, limit 1)",
                                   "broken.pdf: not a readable PDF (the file is damaged or is not a PDF)"]


def test_files_are_opened_by_content_not_name(tmp_path):
    (tmp_path / "a_really_pdf.jpg").write_bytes(make_pdf([[(72, 700, 12, "surprise text")]]))
    (tmp_path / "b_really_png.pdf").write_bytes(_encoded_png((255, 0, 0)))
    report = ingest([tmp_path], ocr=no_ocr)
    assert report.errors == []
    assert [(i.title, i.kind) for i in report.items] == [("a_really_pdf.jpg", "pdf_page"),
                                                        ("b_really_png.pdf", "image")]


# --------------------------------------------------------------------------------------------------- text


def test_text_file_is_split_into_passages_with_exact_spans(tmp_path):
    paragraphs = [" ".join(sentences(12, seed=s)) for s in range(6)]
    text = "# Title\n\n" + "\n\n".join(paragraphs) + "\n"
    path = tmp_path / "essay.md"
    path.write_text(text, encoding="utf-8")
    report = ingest([path], ocr=no_ocr)
    assert report.errors == []
    items = report.items
    assert len(items) >= 4
    assert all(i.kind == "text" and i.page is None and i.image is None and i.thumbnail == b"" for i in items)
    assert [i.passage for i in items] == list(range(len(items)))
    for item in items:
        assert text[item.char_span[0]:item.char_span[1]] == item.text
        assert len(item.text.split()) <= 150
    assert " ".join(i.text for i in items).split() == text.split()  # nothing lost, nothing repeated
    assert len({i.content_hash for i in items}) == len(items)


@pytest.mark.parametrize("encoding,data", [
    ("utf-8", "Café crème, naïve façade".encode()),
    ("utf-8-sig", b"\xef\xbb\xbf" + "Café crème, naïve façade".encode()),
    ("utf-16", "Café crème, naïve façade".encode("utf-16")),
    ("cp1252", "Café crème, naïve façade – “quoted”".encode("cp1252")),
    # Saved without a byte-order mark (it was refused as "binary data").
    ("utf-16-le", "Café crème, naïve façade".encode("utf-16-le")),
    ("utf-16-be", "Café crème, naïve façade".encode("utf-16-be")),
])
def test_text_decoding_never_crashes_and_gets_common_encodings_right(tmp_path, encoding, data):
    path = tmp_path / "note.txt"
    path.write_bytes(data)
    [item] = ingest([path], ocr=no_ocr).items
    assert item.text.startswith("Café crème, naïve façade")
    assert decode_text(data)[1] == encoding


def test_undecodable_bytes_fall_back_to_latin1():
    data = b"abc \x81\x8d def"  # 0x81 and 0x8d are undefined in cp1252 and invalid in UTF-8
    text, encoding = decode_text(data)
    assert encoding == "latin-1" and text == data.decode("latin-1")


def test_binary_and_blank_text_files_are_reported(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"PK\x03\x04\x00\x00binary\x00stuff")
    (tmp_path / "b.txt").write_text("  \n\n\t ")
    (tmp_path / "c.md").write_bytes(b"")
    report = ingest([tmp_path], ocr=no_ocr)
    assert report.items == []
    assert only_errors(report) == ["a.txt: not a text file (it contains binary data)",
                                   "b.txt: the text file contains no text", "c.md: the file is empty"]


def test_garbage_is_not_indexed_as_text(tmp_path):
    """Issue 19.12: random bytes without a NUL in a .md, and a .txt of control characters only, became passages."""
    rng = random.Random(12)
    noise = bytes(b for b in (rng.randrange(1, 256) for _ in range(20000)))
    (tmp_path / "noise.md").write_bytes(noise)
    (tmp_path / "controls.txt").write_bytes(bytes(range(1, 32)) * 50)
    # Real text in several scripts and encodings, with tabs, form feeds and a few odd characters, still passes.
    (tmp_path / "ok.txt").write_text("Grüße aus Köln\tund Ελληνικά, 日本語のテキスト.\f\nA line\x07 with a bell.\n" * 20)
    (tmp_path / "cp1252.txt").write_bytes("Café “quoted” — naïve résumé.\n".encode("cp1252") * 30)
    report = ingest([tmp_path], ocr=no_ocr)
    assert sorted({i.title for i in report.items}) == ["cp1252.txt", "ok.txt"]
    why = ("not a text file (most of it is control characters or undecodable bytes; text in an encoding other "
           "than UTF-8, UTF-16 or Windows-1252 reads so: save it as UTF-8)")
    assert sorted(only_errors(report)) == [f"controls.txt: {why}", f"noise.md: {why}"]
    # Japanese in Shift-JIS is not read: the message says how to make it readable.
    (tmp_path / "sjis.txt").write_bytes("日本語のテキストです。東京は晴れ。\n".encode("shift_jis") * 40)
    assert only_errors(ingest([tmp_path / "sjis.txt"], ocr=no_ocr)) == [f"sjis.txt: {why}"]


def test_links_are_followed_only_within_the_indexed_folder(tmp_path):
    """Issue 19.14: a link inside an indexed folder to /etc/passwd was followed and indexed."""
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "real.txt").write_text("A note that lives inside the folder.")
    (folder / "inside.txt").symlink_to(folder / "sub" / "real.txt")
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    report = ingest([folder], ocr=no_ocr)
    # The inside link is followed (its content equals real.txt's, so one of the two is a duplicate).
    assert [i.text for i in report.items] == ["A note that lives inside the folder."]
    assert len(report.skipped_duplicates) == 1
    assert only_errors(report) == ["passwd.txt: skipped, it links to a file outside notes (links are followed "
                                   "only within the folder being indexed)"]


def test_a_link_that_loops_or_leads_nowhere_is_called_that(tmp_path):
    """They were reported as links "to a file outside" the folder, which they are not."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").symlink_to(folder / "b.txt")
    (folder / "b.txt").symlink_to(folder / "a.txt")
    (folder / "gone.txt").symlink_to(folder / "deleted.txt")
    (folder / "note.txt").write_text("A fine note.")
    report = ingest([folder], ocr=no_ocr)
    assert [i.title for i in report.items] == ["note.txt"]
    assert sorted(only_errors(report)) == [f"{n}: skipped, a link that loops or leads to nothing"
                                           for n in ("a.txt", "b.txt", "gone.txt")]


def test_an_empty_path_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch):
    """`index ""` (an unset shell variable) indexed everything under the working directory."""
    (tmp_path / "note.txt").write_text("A note in the working directory.")
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        report = ingest([empty], ocr=no_ocr)
        assert report.items == [] and only_errors(report) == ["an empty path names no file or folder"]


def test_split_passages_prefers_paragraph_then_sentence_boundaries():
    paragraphs = [" ".join(sentences(9, seed=10 + i, words_per=(10, 10))) for i in range(4)]  # 90 words each
    text = "\n\n".join(paragraphs)
    spans = split_passages(text, min_words=80, max_words=150)
    assert [text[s:e] for s, e in spans] == paragraphs

    one_paragraph = " ".join(sentences(40, seed=3))
    spans = split_passages(one_paragraph, min_words=80, max_words=150)
    assert len(spans) >= 2
    for s, e in spans[:-1]:
        assert 80 <= len(one_paragraph[s:e].split()) <= 150
        assert one_paragraph[e - 1] in ".!?"  # cut after a sentence, not mid-sentence


def test_split_passages_handles_text_without_spaces_or_punctuation():
    cjk = "数据" * 2000
    spans = split_passages(cjk, max_chars=500)
    assert all(e - s <= 500 for s, e in spans) and "".join(cjk[s:e] for s, e in spans) == cjk
    run_on = " ".join(VOCAB * 20)  # 520 words, no punctuation, no line breaks
    spans = split_passages(run_on)
    assert all(len(run_on[s:e].split()) <= 150 for s, e in spans)
    assert " ".join(run_on[s:e] for s, e in spans) == run_on
    assert split_passages("   \n ") == []
    with pytest.raises(ValueError, match="min_words"):
        split_passages("x", min_words=200, max_words=100)


# ----------------------------------------------------------------------------------- folders and archives


def test_folder_recursion_is_sorted_and_skips_hidden(tmp_path):
    root = tmp_path / "photos"
    (root / "b_sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    save_image(root / "z.png", color=(1, 2, 3))
    save_image(root / "a.png", color=(4, 5, 6))
    save_image(root / "b_sub" / "m.jpg", color=(7, 8, 9))
    (root / "b_sub" / "deeper" / "notes.txt").write_text("Deep notes.")
    save_image(root / ".hidden.png", color=(10, 11, 12))
    save_image(root / ".hidden_dir" / "x.png", color=(13, 14, 15))
    report = ingest([root], ocr=no_ocr)
    assert report.errors == []
    rel = [Path(i.source).relative_to(root.resolve()).as_posix() for i in report.items]
    assert rel == ["a.png", "z.png", "b_sub/m.jpg", "b_sub/deeper/notes.txt"]
    assert [Path(i.source).is_absolute() for i in report.items] == [True] * 4


def _zip_symlink(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


def test_zip_members_are_read_safely(tmp_path):
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pics/one.png", _encoded_png((255, 0, 0)))
        zf.writestr("docs/readme.txt", "Hello from inside the archive.")
        zf.writestr("docs/../two.png", _encoded_png((0, 255, 0)))  # normalises to two.png: harmless
        zf.writestr("../escape.txt", "climbing out")
        zf.writestr("pics/../../escape2.txt", "climbing out")
        zf.writestr("/etc/absolute.txt", "absolute")
        zf.writestr(".hidden/secret.txt", "hidden")
        zf.writestr("__MACOSX/pics/._one.png", "resource fork")
        zf.writestr("inner.zip", b"PK\x05\x06" + b"\0" * 18)
        zf.writestr("tool.exe", b"MZ")
        _zip_symlink(zf, "link.txt", "/etc/passwd")
    before = sorted(p.name for p in tmp_path.iterdir())
    report = ingest([path], ocr=no_ocr)
    zsrc = str(path.resolve())
    assert [i.source for i in report.items] == [f"{zsrc}!/docs/readme.txt", f"{zsrc}!/pics/one.png",
                                                f"{zsrc}!/two.png"]
    assert [i.title for i in report.items] == ["readme.txt", "one.png", "two.png"]
    assert report.items[0].text == "Hello from inside the archive."
    errors = only_errors(report)
    assert len(errors) == 6
    assert sum("points outside the archive's folder" in e for e in errors) == 3
    assert any(e.startswith("inner.zip (in bundle.zip): skipped, archives inside archives") for e in errors)
    assert any(e.startswith("tool.exe (in bundle.zip): unsupported file type .exe") for e in errors)
    assert any(e.startswith("link.txt (in bundle.zip): skipped, links") for e in errors)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was extracted to disk


def test_zip_with_two_members_of_one_name_reports_which_is_kept(tmp_path):
    """Issue 19.9: both used to be reported as indexed while only the second remained."""
    import warnings

    path = tmp_path / "twice.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is told to write
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes/a.txt", "the first version, about apples")
            z.writestr("notes/a.txt", "the second version, about pears")
    report = ingest([path], ocr=no_ocr)
    assert [i.text for i in report.items] == ["the second version, about pears"]
    assert only_errors(report) == ["notes/a.txt (in twice.zip): skipped, the archive holds a later file of the "
                                   "same name; that one is indexed"]


def test_skipped_hidden_entries_empty_zips_and_linked_folders_get_a_note(tmp_path):
    """Issue 19.10: these used to be skipped in silence."""
    empty, folders, hidden = tmp_path / "empty.zip", tmp_path / "folders.zip", tmp_path / "hidden.zip"
    zipfile.ZipFile(empty, "w").close()
    with zipfile.ZipFile(folders, "w") as z:
        z.writestr("a/", "")
        z.writestr("a/b/", "")
    with zipfile.ZipFile(hidden, "w") as z:
        z.writestr(".secret.txt", "hidden words")
        z.writestr("__MACOSX/._x.txt", "fork")
    notes = [n.note for n in ingest([empty, folders, hidden], ocr=no_ocr).notes]
    assert notes == ["empty.zip: nothing to index, the archive is empty",
                     "folders.zip: nothing to index, the archive holds only folders",
                     "hidden.zip: nothing to index, the archive holds only hidden files"]

    folder = tmp_path / "photos"
    (folder / ".cache").mkdir(parents=True)
    (folder / ".DS_Store").write_text("x")
    (folder / "note.txt").write_text("A fine note.")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.txt").write_text("Not picked by the user.")
    (folder / "link").symlink_to(elsewhere, target_is_directory=True)
    report = ingest([folder], ocr=no_ocr)
    assert [i.title for i in report.items] == ["note.txt"]
    assert [n.note for n in report.notes] == ["photos: skipped 2 hidden entries (names starting with '.') and "
                                              "1 linked folder (links to folders are not followed)"]


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.txt", b"0" * (3 * 1024 * 1024))
        zf.writestr("fine.txt", "A normal note.")
    report = ingest([bomb], ocr=no_ocr)
    assert [i.title for i in report.items] == ["fine.txt"]
    [error] = only_errors(report)
    assert error.startswith("zeros.txt (in bomb.zip): refused, it would expand") and "zip bomb" in error

    # Many members each below the one-member check's floor: the same ratio, over the whole archive.
    small = tmp_path / "small-bombs.zip"
    with zipfile.ZipFile(small, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k in range(8):
            zf.writestr(f"zeros{k}.txt", b"0" * (512 * 1024 - 1))
    report = ingest([small], ocr=no_ocr)
    assert report.items == []
    [error] = only_errors(report)
    assert error.startswith("small-bombs.zip: refused, it would expand") and "zip bomb" in error
    many_notes = tmp_path / "notes.zip"  # an archive of ordinary notes compresses far less and is read
    with zipfile.ZipFile(many_notes, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k in range(40):
            zf.writestr(f"note{k}.txt", " ".join(sentences(500, seed=k)))
    with zipfile.ZipFile(many_notes) as zf:
        assert sum(i.file_size for i in zf.infolist()) > 1024 * 1024  # over the floor: the ratio is checked
    report = ingest([many_notes], ocr=no_ocr)
    assert not report.errors and len({i.source for i in report.items}) == 40

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for k in range(3):
            zf.writestr(f"n{k}.txt", f"note {k}")
    report = ingest([many], limits=IngestLimits(max_zip_members=2), ocr=no_ocr)
    assert report.items == [] and only_errors(report) == ["many.zip: too many files in the archive (3, limit 2)"]
    report = ingest([many], limits=IngestLimits(max_zip_total_bytes=10), ocr=no_ocr)
    assert report.items == [] and only_errors(report) == ["many.zip: too large when unpacked (18 bytes, limit 10 bytes)"]

    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    assert only_errors(ingest([fake], ocr=no_ocr))[0].startswith("fake.zip: not a readable zip archive")


# ------------------------------------------------------------------------------ batches and duplicates


def test_one_bad_file_never_stops_the_batch(tmp_path):
    good1 = save_image(tmp_path / "good1.png", color=(1, 1, 1))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good2 = tmp_path / "good2.txt"
    good2.write_text("A fine note.")
    pdf = tmp_path / "good3.pdf"
    pdf.write_bytes(make_pdf([[(72, 700, 12, "fine pdf")]]))
    report = ingest([good1, bad, good2, pdf], ocr=no_ocr)
    assert [i.title for i in report.items] == ["good1.png", "good2.txt", "good3.pdf"]
    assert [e.path for e in report.errors] == [str(bad.resolve())]


def test_file_name_that_is_not_utf8_is_reported_and_the_rest_indexed(tmp_path):
    """Issue 19.1: one such name used to abort the whole CLI run (the index cannot store it)."""
    import os

    folder = tmp_path / "d"
    folder.mkdir()
    try:
        bad = Path(os.fsdecode(bytes(folder) + b"/bad\xff.jpg"))
        save_image(bad)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    save_image(folder / "good.png")
    (folder / "note.txt").write_text("A fine note.")
    report = ingest([folder], ocr=no_ocr)
    assert [i.title for i in report.items] == ["good.png", "note.txt"]
    [err] = report.errors
    assert "bad\\xff.jpg" in err.error and "not valid UTF-8" in err.error
    err.error.encode("utf-8")  # printable, storable
    err.path.encode("utf-8")


def test_pipes_and_devices_are_skipped_not_read(tmp_path):
    """Issue 19.3-4: a FIFO used to hang the run, a character device to be read until memory ran out."""
    import os

    folder = tmp_path / "f"
    folder.mkdir()
    os.mkfifo(folder / "pipe.txt")
    (folder / "zero.jpg").symlink_to("/dev/zero")  # a device under a photo's name
    (folder / "note.txt").write_text("A fine note.")
    report = ingest([folder], ocr=no_ocr)
    assert [i.title for i in report.items] == ["note.txt"]
    messages = sorted(e.error for e in report.errors)
    assert messages[0] == "pipe.txt: not a regular file (a named pipe), skipped"
    assert messages[1].startswith("zero.jpg: skipped, it links to a file outside")  # the link rule comes first
    # Named directly, too: the device is refused before anything reads it.
    assert "named pipe" in ingest([folder / "pipe.txt"], ocr=no_ocr).errors[0].error
    assert "a character device" in ingest([folder / "zero.jpg"], ocr=no_ocr).errors[0].error


def test_a_file_that_grew_past_its_limit_is_not_read_whole(tmp_path):
    """Reads are bounded by the limit, not by the size the listing saw."""
    from app.ingest.events import _Refused
    from app.ingest.sources import _read_file

    path = tmp_path / "grow.txt"
    path.write_text("x" * 5000)
    with pytest.raises(_Refused, match="too large"):
        _read_file(path, 5, IngestLimits(max_text_bytes=1000))  # listed at 5 bytes, 5000 now
    assert _read_file(path, 5000, IngestLimits(max_text_bytes=6000)) == b"x" * 5000


def test_duplicates_within_batch_and_known_hashes_are_skipped(tmp_path):
    a = save_image(tmp_path / "a.png", color=(9, 9, 9))
    b = tmp_path / "b_copy.png"
    b.write_bytes(a.read_bytes())
    report = ingest([a, b, a], ocr=no_ocr)
    assert [i.title for i in report.items] == ["a.png"]
    assert report.skipped_duplicates == [str(b.resolve()), str(a.resolve())]

    events = list(iter_ingest([a, b], ocr=no_ocr))
    assert isinstance(events[1], DuplicateSkipped) and events[1].duplicate_of == str(a.resolve())

    (tmp_path / "bad1.png").write_bytes(b"not an image")
    (tmp_path / "bad2.png").write_bytes(b"not an image")
    report_bad = ingest([tmp_path / "bad1.png", tmp_path / "bad2.png"], ocr=no_ocr)
    assert len(report_bad.errors) == 2 and report_bad.skipped_duplicates == []  # broken copies are not "seen"

    known = {report.items[0].content_hash}
    report = ingest([a], known_hashes=known, ocr=no_ocr)
    assert report.items == [] and report.skipped_duplicates == [str(a.resolve())]


def test_known_pdf_pages_are_not_rendered_again(tmp_path):
    path = tmp_path / "two.pdf"
    path.write_bytes(make_pdf([[(72, 700, 12, "first page")], [(72, 700, 12, "second page")]]))
    first = ingest([path], ocr=no_ocr).items
    again = ingest([path], ocr=no_ocr).items
    assert [i.content_hash for i in first] == [i.content_hash for i in again]  # stable identities

    report = ingest([path], known_hashes={first[0].content_hash}, ocr=no_ocr)
    assert [i.page for i in report.items] == [2]
    assert report.skipped_duplicates == [f"{path.resolve()} (page 1)"]
    report = ingest([path], known_hashes={i.content_hash for i in first}, ocr=no_ocr)
    assert report.items == [] and report.skipped_duplicates == [str(path.resolve())]


def test_iter_ingest_streams_and_reports_progress(tmp_path):
    first = save_image(tmp_path / "1.png", color=(1, 0, 0))
    second = save_image(tmp_path / "2.png", color=(2, 0, 0))
    calls = []
    events = iter_ingest(tmp_path, ocr=no_ocr, progress=lambda d, t, name: calls.append((d, t, name)))
    assert isinstance(next(events), Item)
    assert calls == [(0, 2, "1.png")]
    second.unlink()  # files are read lazily, one at a time
    rest = list(events)
    assert len(rest) == 1 and isinstance(rest[0], IngestError) and rest[0].path == str(second.resolve())
    assert calls == [(0, 2, "1.png"), (1, 2, "2.png"), (2, 2, "")]
    assert first.exists()


def test_a_pdf_of_several_pages_reports_each_page(tmp_path):
    """Issue 17.9: a long PDF (minutes with OCR) used to show one unchanging line until it was done."""
    (tmp_path / "a.png").write_bytes(_encoded_png((9, 9, 9)))
    (tmp_path / "b.pdf").write_bytes(make_pdf([[(72, 700, 12, f"page {n} of the guide")] for n in range(1, 4)]))
    calls = []
    list(iter_ingest(tmp_path, ocr=no_ocr, progress=lambda d, t, name: calls.append((d, t, name))))
    # The pages already read count as a share of the PDF: a bar over one long PDF stood at 0 % until its end.
    assert calls == [(0, 2, "a.png"), (1, 2, "b.pdf"), (1, 2, "b.pdf, page 1 of 3"),
                     (pytest.approx(1 + 1 / 3), 2, "b.pdf, page 2 of 3"), (pytest.approx(1 + 2 / 3), 2, "b.pdf, page 3 of 3"),
                     (2, 2, "")]


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_megapixels"):
        IngestLimits(max_megapixels=0)
    with pytest.raises(ValueError, match="passage_min_words"):
        IngestLimits(passage_min_words=200, passage_max_words=100)


# ---------------------------------------------------------------------------------------------- real OCR


def test_real_default_ocr_reads_a_scanned_page(tmp_path):
    pytest.importorskip("model.visual.ocr", reason="model.visual.ocr is not written yet")
    from PIL import ImageDraw, ImageFont

    page = Image.new("RGB", (1200, 1600), "white")
    ImageDraw.Draw(page).text((100, 150), "INVOICE TOTAL", fill="black", font=ImageFont.load_default(size=72))
    path = tmp_path / "scan.pdf"
    page.save(path, format="PDF")
    report = ingest([path])
    [item] = report.items
    assert report.errors == [] and report.notes == []
    assert "invoice total" in (item.text or "").lower()
    boxes = [box for word, box in item.words if word.lower() in ("invoice", "total")]
    assert len(boxes) == 2 and all(dark_inside(item.image, box) and box[3] < 0.5 for box in boxes)
