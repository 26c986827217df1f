"""Which part of the content each granular meta token reads (the `phrases` layout of MetaEmbed-Mini).

Granular meta tokens nest like the Matryoshka groups: the first reads the whole content, and each further level
of s tokens reads s parts of it. Here the parts follow the content's own structure. Starting from the whole, the
longest part with the strongest boundary inside it is cut there, again and again: sentence ends (and `;`, `:`)
first, then commas, then word starts, never inside a word. Level s takes the first s - 1 cuts, so every part
of a finer level lies inside one part of each coarser level: a page's vectors go sentence, clause, phrase, word.

A photo's text from the visual tokenizer ("tabby cat, cat, feline; sofa, couch, seat. colors: gray") is cut no
finer than its concepts (the `;` / `.` groups). Measured on the dev split (docs/benchmarks.md, MetaEmbed-Mini
v3): splitting a photo's concepts into their words made quality fall with the budget, because a query word then
matches any stray word of a weak guess; whole concepts kept it level with the base at every budget. When a text
has fewer parts than a level asks for, its parts repeat in order.

Punctuation is not read (as ColBERT leaves it out of document embeddings): a comma's state says little and pulled
every part's vector towards the same direction. A part made only of punctuation keeps it.
"""

from __future__ import annotations

import heapq

import torch

# Boundary strength of a cut before a token, from what precedes it.
SENTENCE, CLAUSE, WORD, NONE = 3, 2, 1, 0
SENTENCE_ENDS = frozenset(".;:!?")
PUNCTUATION = frozenset(".,;:!?()[]{}\"'`-/\\|*&#%+=<>~^_")
PHOTO_MIN_STRENGTH = SENTENCE  # photo texts split no finer than their concepts
TEXT_MIN_STRENGTH = WORD


def boundary(tokens: list[str], i: int) -> int:
    """How good a place to cut is the gap before tokens[i] (WordPiece tokens; '##' continues a word)."""
    token, before = tokens[i], tokens[i - 1]
    if token.startswith("##") or token in PUNCTUATION:
        return NONE  # never inside a word, never so that a part starts with punctuation
    if before in SENTENCE_ENDS:
        return SENTENCE
    if before == ",":
        return CLAUSE
    return WORD


def content_range(length: int) -> tuple[int, int]:
    """[start, end) of the content: [CLS] and [SEP] are left out where there is text between them."""
    return (1, length - 1) if length > 2 else (0, max(length, 1))


def cuts(tokens: list[str], count: int, min_strength: int = WORD) -> list[int]:
    """Up to `count` cut positions in the order they are made (strongest boundary, then longest part, then
    nearest the part's middle)."""
    start, end = content_range(len(tokens))
    heap: list[tuple] = []

    def push(a: int, b: int) -> None:
        best = None
        for c in range(a + 1, b):
            key = (boundary(tokens, c), -abs(2 * c - a - b))
            if key[0] >= min_strength and (best is None or key > best[0]):
                best = (key, c)
        if best is not None:
            (strength, centred), c = best
            heapq.heappush(heap, (-strength, -(b - a), -centred, a, b, c))

    push(start, end)
    made: list[int] = []
    while heap and len(made) < count:
        *_, a, b, c = heapq.heappop(heap)
        made.append(c)
        push(a, c)
        push(c, b)
    return made


def nested_parts(tokens: list[str], levels: list[int], num: int, min_strength: int = WORD
                 ) -> list[tuple[int, int]]:
    """[start, end) token range of each of the first `num` granular meta tokens, level after level."""
    start, end = content_range(len(tokens))
    order = cuts(tokens, max(levels) - 1, min_strength)
    parts: list[tuple[int, int]] = []
    for s in levels:
        bounds = [start, *sorted(order[: s - 1]), end]
        have = len(bounds) - 1
        parts += [(bounds[k * have // s], bounds[k * have // s + 1]) for k in range(s)]
    if len(parts) < num:
        raise ValueError(f"meta levels {levels} cover {len(parts)} tokens, fewer than the {num} requested")
    return parts[:num]


def part_mask(tokens: list[list[str]], photo: list[bool], levels: list[int], num: int, width: int
              ) -> torch.Tensor:
    """[B, num, width] bool: which content positions each granular meta token reads."""
    mask = torch.zeros(len(tokens), num, width, dtype=torch.bool)
    for b, (toks, is_photo) in enumerate(zip(tokens, photo)):
        strength = PHOTO_MIN_STRENGTH if is_photo else TEXT_MIN_STRENGTH
        readable = torch.tensor([t not in PUNCTUATION for t in toks] + [False] * (width - len(toks)))
        for r, (a, e) in enumerate(nested_parts(toks, levels, num, strength)):
            mask[b, r, a:e] = True
            if readable[a:e].any():
                mask[b, r] &= readable
    return mask
