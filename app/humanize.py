"""How sizes and the visitor's own words read in messages, reports and charts: one formatter for the whole app."""

from __future__ import annotations

import html
import re

ECHO_CHARS = 80  # how much of a query a caption repeats: enough to recognise it, not a 900-word wall twice

# Markdown's inline syntax (emphasis, links, code, tables, strike-through, headings): escaped with a backslash
# so the visitor's words render as typed.
_MARKDOWN = re.compile(r"([\\`*_\[\]()|~#])")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB', 2097152 -> '2 MB' (powers of 1024, as file managers show them)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            if unit == "bytes" or round(n, 1) == int(n):
                return f"{n:,.0f} {unit}"
            return f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def echoed(text: str, limit: int = ECHO_CHARS) -> str:
    """The visitor's `text` as a Markdown caption may repeat it: on one line, at most `limit` characters (then
    "…"), HTML and Markdown markup escaped, so "<b>bold</b>" reads as typed instead of in bold."""
    text = " ".join(text.split())  # a newline could start a heading or a list in the caption
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))
