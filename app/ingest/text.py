"""Text files: decoding (byte-order marks, UTF-8, cp1252, latin-1), refusing files that are mostly not text,
and splitting text into passages at paragraph, sentence, line or word boundaries (also used for long PDF
pages)."""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

from .events import DuplicateSkipped, IngestEvent, Item, _derive_hash, _Refused
from .limits import IngestLimits
from .sources import _Source


def _text_items(src: _Source, data: bytes, file_hash: str, limits: IngestLimits,
                known: AbstractSet[str]) -> Iterator[IngestEvent]:
    text, _encoding = decode_text(data)
    if "\x00" in text:
        raise _Refused("not a text file (it contains binary data)")
    if not text.strip():
        raise _Refused("the text file contains no text")
    if _mostly_not_text(text):
        # Text in an encoding decode_text does not read (Shift-JIS, GBK, KOI8-R...) lands here as well.
        raise _Refused("not a text file (most of it is control characters or undecodable bytes; text in an "
                       "encoding other than UTF-8, UTF-16 or Windows-1252 reads so: save it as UTF-8)")
    spans = split_passages(text, min_words=limits.passage_min_words, max_words=limits.passage_max_words,
                           max_chars=limits.passage_max_chars)
    hashes = [_derive_hash(file_hash, "passage", k) for k in range(len(spans))]
    if all(h in known for h in hashes):
        yield DuplicateSkipped(src.source, "", file_hash)
        return
    for k, ((start, end), passage_hash) in enumerate(zip(spans, hashes, strict=True)):
        if passage_hash in known:
            yield DuplicateSkipped(f"{src.source} (passage {k})", "")
            continue
        yield Item(
            source=src.source, kind="text", title=src.title, content_hash=passage_hash, size_bytes=len(data),
            file_hash=file_hash, passage=k, char_span=(start, end), text=text[start:end],
        )


def _mostly_not_text(text: str, share: float = 0.05) -> bool:
    """More than `share` of the visible characters are control characters or U+FFFD. Real text of any script
    has next to none (tabs and line breaks do not count); random bytes decoded as latin-1 have ~25 %."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return True
    bad = sum(ch == "\ufffd" or unicodedata.category(ch) == "Cc" for ch in visible)
    return bad > share * len(visible)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode text file bytes, never failing: BOMs first, then UTF-8, then cp1252, then latin-1.

    Returns (text, encoding). The BOM is not part of the text; positions index the returned string.
    """
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: same first bytes
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace"), encoding
    unmarked = _utf16_without_bom(data)
    if unmarked is not None:
        try:
            return data.decode(unmarked), unmarked
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1"), "latin-1"  # maps every byte, so this cannot fail


def _utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' for text saved as UTF-16 without a byte-order mark, else None. Text in a Latin
    script then has a zero byte in nearly every other position, always the same one of the pair (it was refused as
    binary data); binary files have zero bytes in both positions, UTF-8 and cp1252 text none."""
    pairs = len(data) // 2
    if pairs < 2 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if odd >= 0.6 * pairs and even <= 0.02 * pairs:
        return "utf-16-le"
    if even >= 0.6 * pairs and odd <= 0.02 * pairs:
        return "utf-16-be"
    return None


# Boundary strengths, strongest first wins when a passage must be cut.
_PARAGRAPH, _SENTENCE, _LINE, _WORDS = 3, 2, 1, 0
_PARAGRAPH_SEP = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE_SEP = re.compile(r"[.!?…]+[\"'”’»)\]]*(\s+)|[。！？]+[」』”’）]*(\s*)")
_LINE_SEP = re.compile(r"\s*\n\s*")
_TOKEN = re.compile(r"\S+")


def split_passages(
    text: str, *, min_words: int = 80, max_words: int = 150, max_chars: int = 1200
) -> list[tuple[int, int]]:
    """Split text into passages of about min_words..max_words words, cut at the strongest boundary.

    Returns (start, end) character spans into `text`, in order, without overlap, trimmed of whitespace;
    every word of `text` falls in exactly one span. A passage ends at a paragraph break once it has
    min_words; when the next piece would overflow max_words or max_chars it ends at the strongest
    boundary seen since min_words (paragraph > sentence > line > between words). Only the last passage,
    or one squeezed between paragraph breaks, may be shorter than min_words.
    """
    if min_words < 1 or max_words < min_words or max_chars < 1:
        raise ValueError(f"split_passages: need 1 <= min_words <= max_words and max_chars >= 1, got "
                         f"min_words={min_words}, max_words={max_words}, max_chars={max_chars}")
    units = _units(text, max_words, max_chars)  # (start, end, boundary strength before it, words)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        first_start = units[i][0]
        n_words = 0
        best: tuple[int, int] | None = None  # (strength, unit index to cut before)
        j = i
        cut = len(units)
        while j < len(units):
            start, end, strength, unit_words = units[j]
            if j > i:
                if n_words >= min_words:
                    if strength == _PARAGRAPH:
                        cut = j
                        break
                    if best is None or strength >= best[0]:
                        best = (strength, j)
                if n_words + unit_words > max_words or end - first_start > max_chars:
                    cut = best[1] if best is not None else j
                    break
            n_words += unit_words
            j += 1
        spans.append((first_start, units[cut - 1][1]))
        i = cut
    return spans


def _units(text: str, max_words: int, max_chars: int) -> list[tuple[int, int, int, int]]:
    units: list[tuple[int, int, int, int]] = []
    for p_start, p_end in _pieces(text, _PARAGRAPH_SEP, 0, len(text)):
        strength = _PARAGRAPH
        for s_start, s_end in _pieces(text, _SENTENCE_SEP, p_start, p_end):
            for l_start, l_end in _pieces(text, _LINE_SEP, s_start, s_end):
                for w_start, w_end, n in _word_chunks(text, l_start, l_end, max_words, max_chars):
                    units.append((w_start, w_end, strength, n))
                    strength = _WORDS
                strength = _LINE
            strength = _SENTENCE
    return units


def _pieces(text: str, sep: re.Pattern[str], start: int, end: int) -> Iterator[tuple[int, int]]:
    """Whitespace-trimmed, non-empty pieces of text[start:end] between separator matches."""
    pos = start
    for m in sep.finditer(text, start, end):
        group = next((g for g in range(1, (sep.groups or 0) + 1) if m.group(g) is not None), 0)
        cut_start, cut_end = m.span(group)
        yield from _trimmed(text, pos, cut_start)
        pos = max(pos, cut_end)
    yield from _trimmed(text, pos, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield start, end


def _word_chunks(text: str, start: int, end: int, max_words: int, max_chars: int) -> Iterator[tuple[int, int, int]]:
    """Split text[start:end] into chunks of at most max_words words and max_chars characters."""
    chunk_start = chunk_end = -1
    n = 0
    for m in _TOKEN.finditer(text, start, end):
        t_start, t_end = m.span()
        while t_end - t_start > max_chars:  # one "word" longer than a passage: text without spaces
            if n:
                yield chunk_start, chunk_end, n
                n = 0
            yield t_start, t_start + max_chars, 1
            t_start += max_chars
        if n and (n + 1 > max_words or t_end - chunk_start > max_chars):
            yield chunk_start, chunk_end, n
            n = 0
        if n == 0:
            chunk_start = t_start
        chunk_end = t_end
        n += 1
    if n:
        yield chunk_start, chunk_end, n

