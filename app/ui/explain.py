"""'Why it matched': from a query, a result and a budget to the numbers and pictures the app shows.

The score at budget (r_q, r_c) is a sum over the first r_q query vectors of their best similarity with
the first r_c candidate vectors. Each winning candidate vector is the last-layer state of one meta token,
and that meta token's attention says which content tokens it read. Weighting each winner's attention by
its share of the score gives a relevance for every content token; content tokens map back to places:
the visual tokenizer's words for a photo (a concept's activation map, a colour's mask, an OCR word's box,
a people word's face boxes)
or the page's words and their boxes for a document.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from app.humanize import plural
from app.ui.plots import Mark, colour_rgb
from model.scoring import explain as maxsim_explain
from model.visual.vocab import load_vocab

SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"}
# Common English words that carry no topic: a page's summary names the content words instead ("Mostly because
# of: the, and, ..." says nothing); search_tab's snippets skip them in the query too.
STOPWORDS = frozenset(
    "a an the and or but nor of to in on at for with from by as into onto over under about than then so if "
    "is are was were be been being am do does did done has have had having can could will would shall should "
    "may might must it its it's this that these those there here which who whom whose what when where why how "
    "i me my we our us you your he him his she her they them their not no yes also only just very all any "
    "each some such more most other same own both either neither".split()
)


@dataclass
class Unit:
    """A readable piece of content: a word, or one visual token of a photo (e.g. "red panda")."""

    label: str
    kind: str  # "word" | "concept" | "colour" | "ocr" | ...
    tokens: list[int]  # indices into the model's content tokens
    span: tuple[int, int]  # characters in the text the model read
    visual: object | None = None  # the visual tokenizer's token, when there is one


@dataclass
class Explanation:
    budget: tuple[int, int]
    sim: np.ndarray  # [r_q, r_c]
    argmax: np.ndarray  # [r_q]
    contributions: np.ndarray  # [r_q]
    score: float
    q_units: list[Unit] = field(default_factory=list)
    q_unit_attention: np.ndarray | None = None  # [R_q, len(q_units)]
    c_units: list[Unit] = field(default_factory=list)
    c_unit_attention: np.ndarray | None = None  # [R_c, len(c_units)]
    c_relevance: np.ndarray | None = None  # [len(c_units)] sums to 1 (or all zeros)
    # The same relevance per content token, and each token's characters: which word of a concept matched.
    c_token_relevance: np.ndarray | None = None  # [content tokens]
    c_offsets: list[tuple[int, int]] = field(default_factory=list)
    c_text: str = ""
    c_read_chars: int = 0  # how much of c_text the model read (the rest was cut at max_length)


def score_breakdown(q: torch.Tensor, c: torch.Tensor, budget: tuple[int, int]) -> dict:
    out = maxsim_explain(q, c, budget)
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def units_for(inspected: dict) -> list[Unit]:
    """Group the model's content tokens into words, and into visual tokens where the photo's doc has them."""
    tokens: list[str] = list(inspected.get("tokens") or [])
    offsets = inspected.get("offsets") or [[0, 0]] * len(tokens)
    text: str = inspected.get("text") or ""
    doc = (inspected.get("extras") or {}).get("visual")
    visual = []
    for vt in getattr(doc, "tokens", None) or []:
        span = getattr(vt, "span", None)
        if span is not None and span[1] > span[0]:
            visual.append((int(span[0]), int(span[1]), vt))
    units: list[Unit] = []
    by_visual: dict[int, Unit] = {}
    for t, (tok, off) in enumerate(zip(tokens, offsets)):
        start, end = int(off[0]), int(off[1])
        if tok in SPECIAL or end <= start:
            continue
        owner = next((k for k, (s, e, _) in enumerate(visual) if s <= start < e), None)
        if owner is not None:
            unit = by_visual.get(owner)
            if unit is None:
                s, e, vt = visual[owner]
                unit = Unit(label=getattr(vt, "text", text[s:e]) or text[s:e], kind=str(getattr(vt, "kind", "visual")),
                            tokens=[], span=(s, e), visual=vt)
                by_visual[owner] = unit
                units.append(unit)
            unit.tokens.append(t)
            continue
        # Pieces that touch the previous word (no space between them) continue it: "pan" + "##da", "e" "-" "mail".
        prev = units[-1] if units else None
        if prev is not None and prev.kind == "word" and prev.span[1] == start:
            prev.tokens.append(t)
            prev.span = (prev.span[0], end)
            prev.label = text[prev.span[0]:end]
        else:
            units.append(Unit(label=text[start:end], kind="word", tokens=[t], span=(start, end)))
    return units


def _attention(inspected: dict) -> np.ndarray | None:
    """[R, content tokens]: how much each meta vector read each token, or None."""
    att = inspected.get("attention")
    if att is None:
        return None
    return att.float().numpy() if isinstance(att, torch.Tensor) else np.asarray(att, dtype=np.float32)


def _per_unit(a: np.ndarray | None, units: list[Unit]) -> np.ndarray | None:
    """[R, content tokens] -> [R, len(units)]: each unit's tokens added up."""
    if a is None or not units:
        return None
    out = np.zeros((a.shape[0], len(units)), dtype=np.float32)
    for k, unit in enumerate(units):
        idx = [t for t in unit.tokens if t < a.shape[1]]
        if idx:
            out[:, k] = a[:, idx].sum(axis=1)
    return out


def unit_attention(inspected: dict, units: list[Unit]) -> np.ndarray | None:
    return _per_unit(_attention(inspected), units)


def explain_match(q_vectors: torch.Tensor, c_vectors: torch.Tensor, budget: tuple[int, int],
                  q_inspected: dict | None, c_inspected: dict | None) -> Explanation:
    br = score_breakdown(q_vectors, c_vectors, budget)
    ex = Explanation(budget=budget, sim=br["sim"], argmax=br["argmax"].astype(int), contributions=br["contributions"],
                     score=float(br["score"]))
    if q_inspected is not None:
        ex.q_units = units_for(q_inspected)
        ex.q_unit_attention = unit_attention(q_inspected, ex.q_units)
    if c_inspected is not None:
        ex.c_units = units_for(c_inspected)
        attention = _attention(c_inspected)
        ex.c_unit_attention = _per_unit(attention, ex.c_units)
        ex.c_text = c_inspected.get("text") or ""
        offsets = c_inspected.get("offsets") or []
        ex.c_read_chars = max((int(o[1]) for o in offsets), default=0)
        if ex.c_unit_attention is not None:
            # What the matching vectors read, per token (which word of a concept matched); a unit's share is the
            # sum over its tokens.
            weights = np.clip(ex.contributions, 0, None)
            ex.c_token_relevance = (weights[:, None] * attention[ex.argmax]).sum(axis=0)
            rel = _per_unit(ex.c_token_relevance[None], ex.c_units)[0]
            total = rel.sum()
            ex.c_relevance = rel / total if total > 0 else rel
            ex.c_offsets = [(int(o[0]), int(o[1])) for o in offsets]
    return ex


def matched_term(ex: Explanation, unit: Unit) -> str | None:
    """The word of a concept the matching vectors read ("boat" of "canoe, small boat, boat, vessel"), when it is not
    a word of the concept's name: a query's "boats" matches a canoe through "boat", and "Mostly because of canoe"
    hid that. Words count by their text, wherever they stand in the concept ("boat" of "small boat" and "boat" is
    one word); one counts when it holds at least half of what the vectors read of the concept and, per word piece,
    twice as much as any other word (a vector that read the whole concept names none)."""
    if unit.kind != "concept" or ex.c_token_relevance is None or not ex.c_offsets:
        return None
    start, end = unit.span
    text = ex.c_text[start:end] if ex.c_text else unit.label  # the offsets count in the text the model read
    words = [(m.group(), start + m.start(), start + m.end()) for m in re.finditer(r"[^\s,]+", text)]
    comma = text.find(",")  # the name is everything before the first comma
    name_end = start + (comma if comma >= 0 else len(text))
    name = {w.lower() for w, s, _ in words if s < name_end}
    read = np.zeros(len(words))  # per word where it stands, and its word pieces
    pieces = np.zeros(len(words))
    for t in unit.tokens:
        if t < len(ex.c_token_relevance) and t < len(ex.c_offsets):
            k = next((k for k, (_, s, e) in enumerate(words) if s <= ex.c_offsets[t][0] < e), None)
            if k is not None:
                read[k] += max(float(ex.c_token_relevance[t]), 0.0)
                pieces[k] += 1
    mass: dict[str, float] = {}  # per word text: all it was read, and its best reading per word piece
    per_piece: dict[str, float] = {}
    for (word, _, _), r, n in zip(words, read, pieces, strict=True):
        if n:
            key = word.lower()
            mass[key] = mass.get(key, 0.0) + r
            per_piece[key] = max(per_piece.get(key, 0.0), r / n)
    total = sum(mass.values())
    if len(mass) < 2 or not total > 0:
        return None
    best = max(per_piece, key=per_piece.get)
    runner_up = max(v for w, v in per_piece.items() if w != best)
    if best in name or best in STOPWORDS or mass[best] < 0.5 * total or per_piece[best] < 2 * runner_up:
        return None
    return next(w for w, _, _ in words if w.lower() == best)


# ----------------------------------------------------------------------------------------- spatial marks


SKY_TINT = (56, 189, 248)
WHOLE_FRAME = 0.95  # a scene word whose region covers this share of the photo is about all of it


def photo_marks(ex: Explanation) -> list[Mark]:
    """Heat maps, masks and boxes of the visual tokens, weighted by relevance."""
    marks = []
    if ex.c_relevance is None:
        return marks
    for unit, rel in zip(ex.c_units, ex.c_relevance):
        vt = unit.visual
        if vt is None or rel <= 0:
            continue
        region = getattr(vt, "region", None)
        if region is None:
            region = getattr(vt, "mask", None)
        box = getattr(vt, "box", None)
        if region is not None and unit.kind == "colour":
            marks.append(Mark(weight=float(rel), mask=np.asarray(region, dtype=np.float32),
                              tint=colour_rgb(unit.label)))
        elif region is not None and unit.kind == "scene":
            # The sky as an outlined area in sky blue, so the blue it names stays visible; a word about the
            # whole frame (black and white) is not painted: a wash over all of it would hide what it says.
            area = np.asarray(region, dtype=np.float32)
            if float(area.mean()) < WHOLE_FRAME:
                marks.append(Mark(weight=float(rel), mask=area, tint=SKY_TINT))
        elif region is not None:
            marks.append(Mark(weight=float(rel), heat=np.asarray(region, dtype=np.float32)))
        boxes = getattr(vt, "boxes", None)  # people words: one box per face they stand for
        for b in (boxes if boxes else [box] if box is not None else []):
            marks.append(Mark(weight=float(rel), box=tuple(float(x) for x in b)))
    return marks


def locate_words(text: str, words: list) -> list[tuple[int, int, tuple]]:
    """(start, end, box) of each page word found in `text`, searched in reading order."""
    out, cursor = [], 0
    for word, box in words:
        at = text.find(word, cursor, cursor + len(word) + 64)
        if at >= 0:
            out.append((at, at + len(word), tuple(box)))
            cursor = at + len(word)
    return out


def page_marks(ex: Explanation, page_text: str | None, words: list) -> list[Mark]:
    """Boxes of the page's words, weighted by the relevance of the tokens that read them."""
    if ex.c_relevance is None or not page_text or not words:
        return []
    start = ex.c_text.find(page_text)
    if start < 0:
        return []
    rel_at = np.zeros(len(ex.c_text) + 1, dtype=np.float32)
    for unit, rel in zip(ex.c_units, ex.c_relevance):
        if unit.visual is None and rel > 0:
            rel_at[unit.span[0]] += rel
    marks = []
    for s, e, box in locate_words(page_text, words):
        w = float(rel_at[start + s:start + e].sum())
        if w > 0:
            marks.append(Mark(weight=w, box=box))
    return marks


def overlay_marks(ex: Explanation, kind: str, source_item) -> list[Mark]:
    marks = photo_marks(ex)
    if kind in ("pdf_page", "text") and source_item is not None:
        marks += page_marks(ex, source_item.text, list(source_item.words or []))
    return marks


# ------------------------------------------------------------------------------------------- html views

CSS_CHIP = ("display:inline-block;margin:1px 2px;padding:0 5px;border-radius:5px;border:1px solid #e2e8f0;"
            "font-size:0.92em;line-height:1.6;")


def short_label(unit: Unit) -> str:
    """A concept's name and its two most general words ("lesser panda (… mammal, animal)" for "lesser panda, red
    panda, mammal, animal"): a query's "bird" matches a lorikeet through "bird", which the chip must show. Where
    the concept also says its entry-level name (what people call it, MetaEmbed-Mini v3.4), that word too:
    "drake (duck … bird, animal)", since a query's "duck" matches through it."""
    if unit.kind == "concept" and "," in unit.label:
        terms = [t.strip() for t in unit.label.split(",") if t.strip()]
        if len(terms) < 2:
            return terms[0] if terms else unit.label
        general = terms[-2:] if len(terms) > 2 else terms[1:]
        entry = _entry_name(unit, terms)
        if entry is not None and entry not in general:
            gap = " … " if terms.index(entry) + 1 < len(terms) - len(general) else ", "
            return f"{terms[0]} ({entry}{gap}{', '.join(general)})"
        skipped = "… " if len(terms) > 3 else ""
        return f"{terms[0]} ({skipped}{', '.join(general)})"
    return unit.label.strip(" ,.;:") or unit.label  # "colors:" reads as "colors"


def _entry_name(unit: Unit, terms: list[str]) -> str | None:
    """The entry-level name among a concept's `terms`, when its checkpoint wrote one (model/visual/vocab.py)."""
    index = getattr(unit.visual, "class_index", None)
    if index is None or len(terms) < 3:
        return None
    entry = load_vocab().entry_name(index)
    return entry if entry in terms[1:] else None


def meaningful(unit: Unit) -> bool:
    """Units worth showing: not bare punctuation."""
    return any(ch.isalnum() for ch in unit.label)


KIND_MARKS = {"concept": "◆ ", "people": "☺ ", "scene": "☁ ", "colour": "● ", "ocr": "✎ "}
NO_COLOUR_MARK = "◐ "  # the scene word for a photo without colour: no sky about it


def kind_mark(kind: str, label: str = "") -> str:
    """The symbol shown before a visual token of this kind ("◆ " a concept, "☁ " the sky, "◐ " black and
    white, ...), or ""."""
    if kind == "scene" and label.startswith("black and white"):
        return NO_COLOUR_MARK
    return KIND_MARKS.get(kind, "")


def _chip(unit: Unit, weight: float, top: float) -> str:
    a = 0.08 + 0.72 * (weight / top) if top > 0 else 0.08
    mark = kind_mark(unit.kind, unit.label)
    return (f'<span style="{CSS_CHIP}background:rgba(249,115,22,{a:.2f})" title="{html.escape(unit.kind)}: '
            f'{html.escape(unit.label)} ({weight:.3f})">{mark}{html.escape(short_label(unit))} '
            f'<small style="opacity:.7">{weight:.2f}</small></span>')


MIN_CHIP_SHARE = 0.02  # of the vector's most-read token
NEAR_TIE = 0.1  # units read within 10 % of one another count as read alike


def _is_stopword(unit: Unit) -> bool:
    return unit.kind == "word" and short_label(unit).lower() in STOPWORDS


def _read_alike_groups(att_row: np.ndarray, units: list[Unit]) -> list[list[int]]:
    """The meaningful units in groups read about alike, the most-read group first; in a group, content words
    before stopwords, each in reading order. MetaEmbed-Mini's vectors read their part of the text evenly, and
    ranking by weight alone kept the earliest words of a tie ("a, dog, on, the" of "a dog on the beach")."""
    groups: list[list[int]] = []
    for k in np.argsort(-att_row, kind="stable"):
        if not meaningful(units[k]):
            continue
        if groups and float(att_row[k]) >= (1 - NEAR_TIE) * float(att_row[groups[-1][0]]):
            groups[-1].append(int(k))
        else:
            groups.append([int(k)])
    return [sorted(g, key=lambda k: (_is_stopword(units[k]), k)) for g in groups]


def _more_chip(units: list[Unit], left_out: list[int]) -> str:
    names = ", ".join(short_label(units[k]) for k in sorted(left_out))
    return (f'<span style="{CSS_CHIP}opacity:.8" title="also read as much: {html.escape(names)}">'
            f"+{len(left_out)} more</span>")


def top_units(att_row: np.ndarray, units: list[Unit], n: int = 4) -> str:
    """Chips of the units a vector reads most, at most `n` (n + 1 rather than "+1 more"). Where the cut falls
    among units read alike, content words are shown before stopwords, and a "+N more" chip counts (and its
    tooltip names) the alike ones left out: four of seven words read evenly are not its top four."""
    if att_row is None or not units:
        return '<span style="opacity:.6">—</span>'
    groups = _read_alike_groups(att_row, units)
    ranked = [k for g in groups for k in g]
    top = float(att_row[ranked[0]]) if ranked else 0.0
    # Tokens it hardly read ("a 0.00", "and 0.00" after a vector that read one word) are no explanation.
    kept = ranked[:1] + [k for k in ranked[1:] if float(att_row[k]) >= MIN_CHIP_SHARE * top and att_row[k] > 0]
    if not kept:  # nothing but punctuation
        return ""
    shown = kept if len(kept) <= n + 1 else kept[:n]
    group_of = {k: i for i, g in enumerate(groups) for k in g}
    left_out = [k for k in kept[len(shown):] if group_of[k] == group_of[shown[-1]]]
    # Shown as read: most-read group first, each group in reading order ("boats, sunset, calm, lake").
    chips = "".join(_chip(units[k], float(att_row[k]), top) for k in sorted(shown, key=lambda k: (group_of[k], k)))
    return chips + (_more_chip(units, left_out) if left_out else "")


def match_table_html(ex: Explanation, shown: int = 6) -> str:
    """One row per query vector: what it reads, its best candidate vector, what that one reads, its share."""
    r_q = len(ex.contributions)
    total = float(ex.score) or 1.0
    rows = []
    for i in np.argsort(-ex.contributions):
        j = int(ex.argmax[i])
        q_att = ex.q_unit_attention[i] if ex.q_unit_attention is not None and i < len(ex.q_unit_attention) else None
        c_att = ex.c_unit_attention[j] if ex.c_unit_attention is not None and j < len(ex.c_unit_attention) else None
        share = 100 * float(ex.contributions[i]) / total
        rows.append(
            f"<tr><td><b>q{i + 1}</b></td><td>{top_units(q_att, ex.q_units)}</td>"
            f"<td style='text-align:center'>{float(ex.contributions[i]):.3f}<br><small>{share:.0f}% of score</small></td>"
            f"<td><b>c{j + 1}</b></td><td>{top_units(c_att, ex.c_units)}</td></tr>"
        )
    head = ("<thead><tr><th>query<br>vector</th><th>reads mostly (query tokens, attention)</th><th>best<br>similarity"
            "</th><th>matched<br>result vector</th><th>reads mostly (result tokens, attention)</th></tr></thead>")
    each = f"Each of the {r_q} query vectors is" if r_q > 1 else "The one query vector is"
    note = (f"<p class='me-caption'>{each} the state of one meta token; it keeps only its "
            "best match among the result's vectors. Chips show the content tokens each vector reads most, by its "
            "attention over the content (MetaEmbed-Mini's vectors read their part of the text evenly; ◆ concept "
            "seen in a photo, ☺ people, ☁ sky, ◐ black and white, ● colour, ✎ text read in the image).</p>")
    table = f"<table class='me-table'>{head}<tbody>{''.join(rows[:shown])}</tbody></table>"
    if len(rows) > shown:  # the strongest matches tell the story; the rest are one click away
        rest = len(rows) - shown
        table += (f"<details><summary class='me-caption'>Show the other {plural(rest, 'query vector')}"
                  "</summary>"
                  f"<table class='me-table'>{head}<tbody>{''.join(rows[shown:])}</tbody></table></details>")
    return note + f"<div class='me-scroll'>{table}</div>"  # scrolls inside its box on a phone


def highlighted_text_html(ex: Explanation, max_chars: int = 1500) -> str:
    """The text the model read for this result, each unit shaded by its relevance to this match."""
    if not ex.c_text:
        return ""
    if ex.c_relevance is None or not ex.c_units:
        return f"<div class='me-read'>{html.escape(ex.c_text[:max_chars])}</div>"
    top = float(ex.c_relevance.max()) or 1.0
    out, cursor = [], 0
    limit = min(len(ex.c_text), max(ex.c_read_chars, 1), max_chars)
    for unit, rel in sorted(zip(ex.c_units, ex.c_relevance), key=lambda p: p[0].span[0]):
        s, e = unit.span
        if s >= limit:
            break
        if s < cursor:
            continue
        out.append(html.escape(ex.c_text[cursor:s]))
        a = 0.75 * float(rel) / top
        style = f"background:rgba(249,115,22,{a:.2f});border-radius:3px" if a > 0.04 else ""
        out.append(f'<span style="{style}" title="relevance {float(rel):.3f}">{html.escape(ex.c_text[s:e])}</span>')
        cursor = e
    out.append(html.escape(ex.c_text[cursor:limit]))
    cut = ""
    if limit < len(ex.c_text):
        cut = (f"<p class='me-caption'>… the model reads the first {limit} of {len(ex.c_text)} characters "
               "(its input is capped).</p>")
    return f"<div class='me-read'>{''.join(out)}</div>{cut}"


def summary_units(ex: Explanation, n: int = 5) -> list[tuple[str, str, float]]:
    """The most relevant result units: (label, kind, share 0..1), each label once with its occurrences' shares
    added; content words only, no stopwords or punctuation (a page's "the" and "and" soak up attention without
    saying why it matched), none of a photo's format words ("colors:") and no share shown as 0 %. A concept is
    named by its name, with the word that matched where that was another ("canoe (“boat”)", `matched_term`)."""
    if ex.c_relevance is None:
        return []
    # In a photo's text the words outside its visual tokens are the format's own ("colors:", "text:"): no reason.
    visual_doc = any(u.visual is not None for u in ex.c_units)
    shares: dict[tuple[str, str], float] = {}  # a word said three times on a page is named once, its shares added
    for k in np.argsort(-ex.c_relevance):
        unit = ex.c_units[k]
        if not meaningful(unit) or not ex.c_relevance[k] > 0:  # NaN too
            continue
        if visual_doc and unit.visual is None:
            continue
        # A concept by its name alone: "canoe (87%)" reads better on one line than "canoe (… vessel, vehicle) (87%)";
        # with the word that matched where that was another ("canoe (“boat”)").
        label = (unit.label.split(",")[0].strip() or unit.label) if unit.kind == "concept" else short_label(unit)
        if (term := matched_term(ex, unit)) is not None:
            label = f"{label} (“{term}”)"
        if unit.kind == "word" and label.lower() in STOPWORDS:
            continue
        key = (label, unit.kind)
        shares[key] = shares.get(key, 0.0) + float(ex.c_relevance[k])
    # A share shown as 0 % ("dark blue 0%, colors 0%" ended a teacher's line) is not a reason either; the title
    # prints whole per cents with Python's rounding, so 0.5 % reads "0%" too.
    kept = [(key, share) for key, share in shares.items() if round(100 * share) >= 1]
    top = sorted(kept, key=lambda kv: -kv[1])[:n]
    return [(label, kind, share) for (label, kind), share in top]


def blank_image(size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, (255, 255, 255))
