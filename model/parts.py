"""Which part of the content each granular meta token reads (the `phrases` layout of MetaEmbed-Mini v3).

Granular meta tokens nest like the Matryoshka groups: the first reads the whole content, and each further level
of s tokens reads s parts of it. Here the parts follow the content's own structure. Starting from the whole, the
longest part with the strongest boundary inside it is cut there, again and again: sentence ends (and `;`, `:`)
first, then commas, then word starts, never inside a word. Level s takes the first s - 1 cuts, so every part
of a finer level lies inside one part of each coarser level: a page's vectors go sentence, clause, phrase, word.
When the content has fewer parts than a level asks for, its parts repeat in order. (v2's `spans` layout cut
equal runs of tokens, so parts began and ended inside words, and a comma could be a part of its own.)

Punctuation is not read (as ColBERT leaves it out of document embeddings): a comma's state says little and pulled
every part's vector towards the same direction. A part made only of punctuation keeps it. On the held-out split
this lowered the mean cosine between an item's own vectors from 0.52 / 0.56 (photos / pages, v2) to 0.44 / 0.45
at equal quality (model card).

These rules define what a `phrases` checkpoint computes: a change to them needs a new layout name, or every
checkpoint made with them would silently encode differently.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

# Boundary strength of a cut before a token, from what precedes it.
SENTENCE, CLAUSE, WORD, NONE = 3, 2, 1, 0
SENTENCE_ENDS = frozenset(".;:!?")
PUNCTUATION = frozenset(".,;:!?()[]{}\"'`-/\\|*&#%+=<>~^_")


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


def cuts(tokens: list[str], count: int) -> list[int]:
    """Up to `count` cut positions in the order they are made (strongest boundary, then longest part, then
    nearest the part's middle)."""
    start, end = content_range(len(tokens))
    heap: list[tuple] = []

    def push(a: int, b: int) -> None:
        best = None
        for c in range(a + 1, b):
            key = (boundary(tokens, c), -abs(2 * c - a - b))
            if key[0] > NONE and (best is None or key > best[0]):
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


def nested_parts(tokens: list[str], levels: list[int], num: int) -> list[tuple[int, int]]:
    """[start, end) token range of each of the first `num` granular meta tokens, level after level."""
    start, end = content_range(len(tokens))
    order = cuts(tokens, max(levels) - 1)
    parts: list[tuple[int, int]] = []
    for s in levels:
        bounds = [start, *sorted(order[: s - 1]), end]
        have = len(bounds) - 1
        parts += [(bounds[k * have // s], bounds[k * have // s + 1]) for k in range(s)]
    if len(parts) < num:
        raise ValueError(f"meta levels {levels} cover {len(parts)} tokens, fewer than the {num} requested")
    return parts[:num]


def part_mask(tokens: list[list[str]], levels: list[int], num: int, width: int) -> torch.Tensor:
    """[B, num, width] bool: which content positions each granular meta token reads."""
    # numpy, not torch, for the per-row work: a query's 16 rows of tiny tensor ops cost more than its encoding.
    mask = np.zeros((len(tokens), num, width), dtype=bool)
    for b, toks in enumerate(tokens):
        readable = np.zeros(width, dtype=bool)
        readable[: len(toks)] = [t not in PUNCTUATION for t in toks]
        for r, (a, e) in enumerate(nested_parts(toks, levels, num)):
            mask[b, r, a:e] = readable[a:e] if readable[a:e].any() else True
    return torch.from_numpy(mask)
