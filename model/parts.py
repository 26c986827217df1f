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

The `phrases+clusters` layout (MetaEmbed-Mini v3.3) keeps those parts for every level but a text candidate's
finest: its 48 vectors read clusters of the content's own last-layer states instead of runs of 3-4 neighbouring
tokens (`clustered_mask`). A page's term and the words used like it anywhere on the page share a vector; a rare
word keeps one of its own. This is token pooling (Clavié, Chaffin and Adams 2024, arXiv 2409.14683): averaging
clusters of ColBERT's token vectors cut their number by half with virtually no loss and by 66-75 % with under 5 %
on most datasets, hierarchical clustering being the best of the methods they compared. Photos' texts, written
by the visual tokenizer, and queries keep their phrase parts (the model card says what each choice measured).

These rules define what a `phrases` or `phrases+clusters` checkpoint computes: a change to them needs a new
layout name, or every checkpoint made with them would silently encode differently.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage

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


def readable_positions(tokens: list[str]) -> list[int]:
    """The content positions a part may read: no [CLS]/[SEP], no punctuation (unless there is nothing else)."""
    start, end = content_range(len(tokens))
    return [i for i in range(start, end) if tokens[i] not in PUNCTUATION] or list(range(start, end))


def token_clusters(states: np.ndarray, positions: list[int], count: int) -> list[list[int]]:
    """At most `count` groups of `positions` whose states point alike: Ward's hierarchical clustering of the
    L2-normalised states (float64, so that the same states always give the same tree), cut at `count`
    clusters. Each position its own group when there are no more than `count`. Groups in order of their first
    position."""
    if len(positions) <= count:
        return [[p] for p in positions]
    x = np.asarray(states[positions], dtype=np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = fcluster(linkage(x, method="ward"), count, criterion="maxclust")
    groups: dict[int, list[int]] = {}
    for position, label in zip(positions, labels, strict=True):
        groups.setdefault(int(label), []).append(position)
    return sorted(groups.values(), key=lambda g: g[0])


def clustered_mask(mask: torch.Tensor, tokens: list[list[str]], states: torch.Tensor, rows: list[int],
                   levels: list[int]) -> torch.Tensor:
    """`mask` ([B, num, width], from `part_mask`) with the finest level's parts of `rows` made clusters of the
    content's states ([B, width, H]) by `token_clusters`; fewer clusters than the level's tokens repeat in
    order, as phrase parts do. Meta tokens past `num` are not there to change; other rows are kept."""
    first, count = sum(levels[:-1]), levels[-1]
    num = mask.shape[1]
    if not rows or num <= first:
        return mask
    out = mask.clone()
    x = states.detach().float().cpu().numpy()
    for b in rows:
        groups = token_clusters(x[b], readable_positions(tokens[b]), count)
        out[b, first:num] = False
        for r in range(first, num):
            out[b, r, groups[(r - first) * len(groups) // count]] = True
    return out
