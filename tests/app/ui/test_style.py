"""app/ui/style.css: rules that paint a fixed pale background must name a text colour too."""

from __future__ import annotations

import re
from pathlib import Path

STYLE = Path(__file__).resolve().parents[3] / "app" / "ui" / "style.css"
THEMED = ("var(", "transparent", "none", "inherit")  # backgrounds that follow Gradio's theme (or paint nothing)


def _declarations(css: str) -> list[tuple[str, dict[str, str]]]:
    """(selector, {property: value}) of every innermost rule (those inside a media query too)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out = []
    for m in re.finditer(r"([^{}]+)\{([^{}]*)\}", css):
        pairs = (d.split(":", 1) for d in m.group(2).split(";") if ":" in d)
        out.append((m.group(1).strip(), {k.strip(): v.strip() for k, v in pairs}))
    return out


def test_a_fixed_background_comes_with_a_text_colour():
    """UX review (s35): in dark mode the snippets' highlighted words and the token chips of How it works were
    Gradio's near-white text on their fixed peach and grey backgrounds (1.2:1). A background from the theme's
    variables changes with it and needs no colour of its own."""
    painted = [(sel, decl) for sel, decl in _declarations(STYLE.read_text(encoding="utf-8"))
               for prop in ("background", "background-color")
               if prop in decl and not decl[prop].startswith(THEMED)]
    assert len(painted) >= 3  # the chips and the highlight: the file is read as meant
    assert [sel for sel, decl in painted if "color" not in decl] == []
