"""How sizes, counts and the visitor's own words read in messages, reports and charts: one formatter for
the whole app."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

ECHO_CHARS = 80  # how much of a query a caption repeats: enough to recognise it, not a 900-word wall twice

# Markdown's inline syntax (emphasis, links, code, tables, strike-through, headings): escaped with a backslash
# so the visitor's words render as typed.
_MARKDOWN = re.compile(r"([\\`*_\[\]()|~#])")


# How the app, the CLI and the API describe a comparable score (MaxSim / r_q, a mean of cosines): "0-1" sat
# above results scored -0.03, which a reader took for a fault.
SCORE_SCALE = "at most 1; 0 or below: nothing alike; comparable across budgets"

BYTE_UNITS = ("bytes", "KB", "MB", "GB")  # powers of 1024, as file managers show them


def byte_unit(n: float) -> tuple[str, int]:
    """The unit human_bytes shows `n` bytes in, and its size in bytes: 1536 -> ('KB', 1024)."""
    for power, unit in enumerate(BYTE_UNITS):
        if abs(n) < 1024 ** (power + 1) or unit == BYTE_UNITS[-1]:
            return unit, 1024**power
    raise AssertionError("unreachable")


def human_bytes(n: float, unit: str | None = None) -> str:
    """1536 -> '1.5 KB', 2097152 -> '2 MB' (powers of 1024, as file managers show them).

    `unit` (one of BYTE_UNITS) shows every value in one unit, as labels beside a chart's axis in that unit read:
    human_bytes(196608, 'MB') -> '0.19 MB', where '192 KB' would not match the axis."""
    name, size = byte_unit(n) if unit is None else (unit, 1024 ** BYTE_UNITS.index(unit))
    value = n / size
    if unit is not None and 0 < abs(value) < 1:  # two significant digits, not "0 MB"
        return f"{value:.2g} {name}"
    if name == "bytes" or round(value, 1) == int(value):
        return f"{value:,.0f} {name}"
    return f"{value:,.1f} {name}"


def score_text(value: float, digits: int = 2) -> str:
    """A score as the app shows it, to `digits` places; one that rounds to zero reads "0.00", not "-0.00"
    (which looked like a fault next to the other scores)."""
    return f"{round(value, digits) + 0.0:.{digits}f}"  # -0.0 + 0.0 is +0.0


def echoed(text: str, limit: int = ECHO_CHARS) -> str:
    """The visitor's `text` as a Markdown caption may repeat it: on one line, at most `limit` characters (then
    "…"), HTML and Markdown markup escaped, so "<b>bold</b>" reads as typed instead of in bold."""
    # On one line: a newline could start a heading or a list in the caption.
    return _MARKDOWN.sub(r"\\\1", html.escape(shortened(text, limit), quote=False))


def shortened(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` on one line (its runs of spaces and newlines as one space), at most `limit` characters, then "…"."""
    text = " ".join(text.split())
    return text[:limit].rstrip() + "…" if len(text) > limit else text


def one_line(text: str) -> str:
    """`text` (a path, a message naming one) with its control characters written as escapes: a file name may
    hold a newline, which would split one item of a terminal listing over two lines. 'new\nline.jpg' reads
    'new\\nline.jpg'; letters of any script stay as they are."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def describe_files(items: Iterable[tuple[str, int | None, str]]) -> str:
    """What indexed items amount to as a person counts them, from their (path, page, kind):
    '19 files (17 photos, 2 PDFs with 46 pages)', '1 photo', 'no files'.

    A collection stores a PDF page and its passages, and a text file's passages, as separate items; a message
    that counted those ("Added 191 items" for 19 files) would not match the files the user chose.
    """
    pages: dict[str, set[int]] = {}
    kinds: dict[str, str] = {}
    for path, page, kind in items:
        if page is not None:
            pages.setdefault(path, set()).add(page)
        kinds.setdefault(path, kind)
    photos = sum(1 for path, kind in kinds.items() if kind == "image" and path not in pages)
    texts = len(kinds) - photos - len(pages)
    n_pages = sum(len(p) for p in pages.values())
    parts = ([plural(photos, "photo")] if photos else []) + (
        [f"{plural(len(pages), 'PDF')} with {plural(n_pages, 'page')}"] if pages else []) + (
        [plural(texts, "text file")] if texts else [])
    if not parts:
        return "no files"
    return parts[0] if len(parts) == 1 else f"{plural(len(kinds), 'file')} ({', '.join(parts)})"


def files_of(items: Iterable) -> str:
    """describe_files of indexed items or index entries (anything with .path, .page and .kind): the app's and
    the CLI's messages about what was added or removed."""
    return describe_files((it.path, it.page, it.kind) for it in items)


def plural(n: int, noun: str, many: str | None = None) -> str:
    """'1 photo', '3 photos', '0 photos'; `many` for a noun whose plural is not noun + 's':
    plural(2, 'query', 'queries') -> '2 queries'."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"
