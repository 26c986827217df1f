"""Builders the tests share: small corpora, a minimal PDF writer, fake items, the repository's paths.

The saved test checkpoints and the loaded test model are session fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"

WORDS = ("harbour lantern orchard granite meadow violin glacier pepper saddle copper tunnel falcon "
         "velvet canyon walnut ember quartz willow thunder marble lagoon cedar prism nectar").split()


def has_visual_tokenizer() -> bool:
    """Images reach the text backbone through the visual tokenizer; tests of image items need it."""
    try:
        from model.visual import VisualTokenizer  # noqa: F401
    except ImportError:
        return False
    return True


def sentence(seed: int, n: int = 8) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n)) + "."


def write_texts(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"note-{i:03d}.txt"
        path.write_text(f"Note {i}: {sentence(i)}\n")
        paths.append(path)
    return paths


def write_mixed_corpus(folder: Path, images: bool) -> dict[str, Path]:
    """One file of every input kind: .txt, .md, a two-page PDF with a text layer, a zip, and images."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"txt": folder / "cats.txt", "md": folder / "notes.md", "pdf": folder / "report.pdf",
           "zip": folder / "bundle.zip"}
    out["txt"].write_text("Cats sleep most of the day and hunt at night.\n")
    out["md"].write_text("# Recipes\n\nBake the bread at two hundred degrees for forty minutes.\n")
    out["pdf"].write_bytes(make_pdf([[(72, 700, 20, "Quarterly report"), (72, 650, 12, "Revenue grew in spring.")],
                                     [(72, 700, 20, "Appendix"), (72, 650, 12, "Tables of harbour traffic.")]]))
    with zipfile.ZipFile(out["zip"], "w") as z:
        z.writestr("inner/poem.txt", "The violin played by the glacier at dawn.\n")
    if images:
        out["png"] = folder / "red.png"
        Image.new("RGB", (64, 48), (220, 20, 20)).save(out["png"])
        out["jpg"] = folder / "blue.jpg"
        Image.new("RGB", (48, 64), (20, 40, 220)).save(out["jpg"], quality=90)
    return out


@dataclass
class FakeItem:
    """Stands in for an ingest Item in tests that need no model."""

    source: str
    content_hash: str
    kind: str = "text"
    title: str = "fake.txt"
    page: int | None = None
    passage: int | None = 0
    char_span: tuple[int, int] | None = (0, 4)
    size_bytes: int = 4
    text: str | None = "fake"
    thumbnail: bytes = b""
    words: list = field(default_factory=list)


def fake_items(n: int, prefix: str = "/data/fake", start: int = 0) -> list[FakeItem]:
    return [FakeItem(f"{prefix}/{i}.txt", hashlib.sha256(f"{prefix}:{i}".encode()).hexdigest())
            for i in range(start, start + n)]


def make_pdf(pages: list[list[tuple[float, float, float, str]]], rotate: int = 0, encrypt: bool = False) -> bytes:
    """A minimal PDF with a real text layer: each page lists (x, y, font size, text) lines in Helvetica."""
    objs: dict[int, bytes] = {}
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objs[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>".encode()
    objs[font_id] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    for pid, lines in zip(page_ids, pages, strict=True):
        ops = []
        for x, y, size, text in lines:
            esc = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"BT /F1 {size} Tf {x} {y} Td ({esc}) Tj ET")
        stream = "\n".join(ops).encode("latin-1")
        rot = f" /Rotate {rotate}" if rotate else ""
        objs[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]{rot} "
                     f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {pid + 1} 0 R >>").encode()
        objs[pid + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    trailer_extra = b""
    if encrypt:
        # Standard security handler whose /U does not match the empty password: a reader must ask for one.
        objs[font_id + 1] = b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"
        file_id = b"<0123456789abcdef0123456789abcdef>"
        trailer_extra = b" /Encrypt %d 0 R /ID [%s %s]" % (font_id + 1, file_id, file_id)
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objs[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    out += b"trailer\n<< /Size %d /Root 1 0 R" % size + trailer_extra + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded random vectors of unit length along the last dimension: queries and candidates for the store
    and scoring tests."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)
