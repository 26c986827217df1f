"""The safety caps and sizes one ingest run works within (`IngestLimits`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

_MB = 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    """Safety caps and sizes. Defaults suit a desktop app indexing personal files."""

    max_megapixels: float = 60.0
    encode_long_side: int = 1600  # image handed to the encoder
    thumbnail_long_side: int = 384
    pdf_render_long_side: int = 1200  # page image for display, highlighting and encoding
    max_pdf_pages: int = 500
    min_text_chars: int = 10  # fewer visible characters on a PDF page means "scanned": OCR it
    passage_min_words: int = 80
    passage_max_words: int = 150
    passage_max_chars: int = 1200  # keeps passages short for scripts written without spaces
    max_file_bytes: int = 1024 * _MB
    max_text_bytes: int = 20 * _MB
    max_zip_members: int = 10_000
    max_zip_total_bytes: int = 2048 * _MB
    max_zip_ratio: float = 250.0  # uncompressed / compressed size of one member
    zip_ratio_min_bytes: int = 1 * _MB  # small members may compress extremely well without harm

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"IngestLimits.{f.name} must be positive, got {value!r}")
        if self.passage_min_words > self.passage_max_words:
            raise ValueError(
                f"IngestLimits.passage_min_words ({self.passage_min_words}) must not exceed "
                f"passage_max_words ({self.passage_max_words})"
            )


DEFAULT_LIMITS = IngestLimits()
