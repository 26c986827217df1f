"""Shared by the index/search/CLI tests: one saved test checkpoint per session, small corpora, fake items."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

_CACHE: dict[str, object] = {}

WORDS = ("harbour lantern orchard granite meadow violin glacier pepper saddle copper tunnel falcon "
         "velvet canyon walnut ember quartz willow thunder marble lagoon cedar prism nectar").split()


def checkpoint_folder(tmp_path_factory) -> Path:
    """An untrained MetaEmbed (MiniLM-L6 + visual tokenizer front-end) saved once per session."""
    if "folder" not in _CACHE:
        from model import MetaEmbed, MetaEmbedConfig

        model = MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer", name="test-index"), device="cpu")
        _CACHE["folder"] = model.save_pretrained(tmp_path_factory.mktemp("checkpoint"))
    return _CACHE["folder"]


def loaded_model(tmp_path_factory):
    """The saved test checkpoint loaded as the CLI loads it (from_pretrained: LoRA merged)."""
    if "model" not in _CACHE:
        from model import MetaEmbed

        _CACHE["model"] = MetaEmbed.from_pretrained(checkpoint_folder(tmp_path_factory), device="cpu")
    return _CACHE["model"]


def other_checkpoint_folder(tmp_path_factory) -> Path:
    """A second checkpoint (same architecture, different weights) for mismatch tests."""
    if "other" not in _CACHE:
        from safetensors.torch import load_file, save_file

        from model.checkpoint import WEIGHTS_NAME
        from model.config import MetaEmbedConfig

        src = checkpoint_folder(tmp_path_factory)
        dst = tmp_path_factory.mktemp("other-checkpoint")
        state = load_file(str(src / WEIGHTS_NAME))
        state["query_meta"] = state["query_meta"] + 0.5
        save_file(state, str(dst / WEIGHTS_NAME))
        MetaEmbedConfig.load(src).save(dst)
        _CACHE["other"] = dst
    return _CACHE["other"]


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
    from test_ingest import make_pdf

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
