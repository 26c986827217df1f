"""Uniform model soup: the average of several fine-tuned runs that started from the same weights.

Runs fine-tuned from one initialisation tend to land in one low-loss basin, so their weight average is
usually better than any one of them, at no extra inference cost (Wortsman et al. 2022, "Model soups",
arXiv 2203.05482). For MetaEmbed the averaged tensors are the trained ones only: meta tokens, projection
and the LoRA factors. Averaging LoRA's A and B factors separately (not the products B·A) keeps the
checkpoint's format and size; it is sound here because every run starts from the same seeded A (and B = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys and shapes (computed in fp32, stored in the
    first state's dtypes)."""
    if not states:
        raise ValueError("average_states needs at least one state dict")
    keys = set(states[0])
    for n, s in enumerate(states[1:], 1):
        if set(s) != keys:
            diff = sorted(keys ^ set(s))[:3]
            raise ValueError(f"state {n} has different tensors than state 0 (e.g. {diff})")
        for k in keys:
            if s[k].shape != states[0][k].shape:
                raise ValueError(f"state {n}: {k} has shape {tuple(s[k].shape)}, state 0 has "
                                 f"{tuple(states[0][k].shape)}")
    return {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}
