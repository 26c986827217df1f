"""The classifier's belief in a photo's first vector (MetaEmbed-Mini since v3.1; `config.class_prior`).

A photo reaches a text backbone as the visual tokenizer's words: the classes named above a probability threshold.
What the classifier believed below it is lost, and its belief is often spread: lemon 0.04, orange 0.04, banana
0.03 names no fruit at all. ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic
Embeddings", ICLR 2014) embeds an image as the probability-weighted mean of its T most probable classes' name
embeddings. Here each class's embedding is the model's own first vector of that class's words (the text the
tokenizer writes for it: "tabby, tabby cat, domestic cat, cat, animal"), and a photo's first vector, the one
that reads the whole photo, becomes

    normalize((1 - w) * first + w * sum_c p_c e_c / |sum_c p_c e_c|),   p over the top TOP_CLASSES, renormalised

with w = `class_prior`. Only the first vector changes: the other vectors stay the parts of the words they read.
It applies to a picture read alone, as a candidate or as a query (a photo searched with "more like this"; a
PDF page with no readable text is indexed as its picture too), and not to an image that comes with words of
its own (an image-and-text query), whose first vector stays that of all its words.

Measured (MetaEmbed-Mini v3 weights, w = 0.5, T = 10, chosen before the held-out run among T 5/10/20 and w 0
/ 0.5 on the dev split; photo queries over the photos alone, per-query paired bootstrap, 95 %): held-out
+0.025 [+0.002, +0.047] MRR at (1,1), +0.021 at (2,4), +0.018 at (4,8), +0.009 at (8,16), +0.004 [-0.003,
+0.012] at (16,64); dev +0.015 / +0.030 / +0.015 / +0.006 / +0.009 (each interval there includes 0). The
first vector alone (w = 1) was worse at (1,1) on dev (0.38 against 0.49): the words' own whole vector matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_CLASSES = 10  # ConSE's T: how many of the classifier's classes the visual tokenizer keeps on a doc


def class_texts(entry_names: bool = False) -> list[str]:
    """Each ImageNet class's words as the visual tokenizer writes them for a photo of it, in class order
    (`entry_names`: as a checkpoint that reads them does, MetaEmbedConfig.reads_entry_names)."""
    from .visual.vocab import load_vocab

    vocab = load_vocab()
    return [", ".join(vocab.concept_terms(i, entry_names)) for i in range(len(vocab))]


def prior(class_vectors: torch.Tensor, class_probs) -> torch.Tensor:
    """The unit ConSE vector of one photo: its classes' vectors [C, D] weighted by `class_probs` ((class index,
    probability) pairs, renormalised over the pairs given)."""
    class_probs = class_probs[:TOP_CLASSES]
    index = torch.tensor([int(c) for c, _ in class_probs], device=class_vectors.device)
    p = torch.tensor([float(q) for _, q in class_probs], dtype=class_vectors.dtype, device=class_vectors.device)
    return F.normalize((p / p.sum().clamp_min(1e-12)) @ class_vectors[index], dim=-1)


def with_prior(vecs: torch.Tensor, extras: list[dict], class_vectors, weight: float) -> torch.Tensor:
    """`vecs` [B, R, D] (unit rows) with the first vector of every picture read alone mixed with its class prior.
    `extras` are the backbone's per-row extras (a photo's has its VisualDoc under "visual"); `class_vectors` is
    called for the [C, D] class vectors only when some row is a photo."""
    docs = [ex.get("visual") if isinstance(ex, dict) and not ex.get("with_text") else None for ex in extras]
    rows = [b for b, doc in enumerate(docs) if doc is not None and getattr(doc, "class_probs", None)]
    if not rows or weight <= 0:
        return vecs
    table = class_vectors().to(device=vecs.device, dtype=vecs.dtype)
    priors = torch.stack([prior(table, docs[b].class_probs) for b in rows])
    first = vecs[:, 0].clone()
    first[rows] = F.normalize((1 - weight) * vecs[rows, 0] + weight * priors, dim=-1)
    return torch.cat([first[:, None], vecs[:, 1:]], dim=1)
