"""Matryoshka Multi-Vector Retrieval (MMR) loss: one InfoNCE per nested (r_q, r_c) prefix group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .scoring import maxsim_dense


def mmr_loss(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    groups: Sequence[tuple[int, int]] = ((1, 1), (2, 4), (4, 8), (8, 16), (16, 64)),
    weights: Sequence[float] | None = None,
    temperature: float = 0.03,
    ignore: torch.Tensor | None = None,
    teacher: torch.Tensor | None = None,
    distill_weight: float | torch.Tensor = 1.0,
    contrastive_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[tuple[int, int], float]]:
    """Sum over groups of weight * InfoNCE(MaxSim(q[:, :r_q], cands[:, :r_c]) / temperature).

    Candidates are the batch's positives (in-batch negatives for every other query) plus, when given,
    one hard negative per query. `ignore` ([B, N] bool) drops candidates from a query's softmax: other rows'
    candidates known to be relevant to it too (false negatives). `teacher` ([B, N] logits of a teacher model
    over the same candidates) adds, per group, distill_weight * KL(softmax(teacher) || softmax(student)): an
    optional auxiliary term (off by default) that transfers a teacher's full in-batch ranking, false
    negatives included; a [B] tensor of weights weighs each query's KL on its own (the batch mean of
    weight * KL). `contrastive_weight` ([B]) weighs each query's InfoNCE term the same way (0 = a row
    taught by the teacher only). Returns the total loss and each group's value.
    """
    if q.ndim != 3 or pos.ndim != 3 or q.shape[0] != pos.shape[0]:
        raise ValueError(f"expected q [B, Rq, D] and pos [B, Rc, D] with the same B, got {tuple(q.shape)} "
                         f"and {tuple(pos.shape)}")
    if neg is not None and neg.shape[1:] != pos.shape[1:]:
        raise ValueError(f"hard negatives {tuple(neg.shape)} must match positives {tuple(pos.shape)}")
    weights = list(weights) if weights is not None else [1.0] * len(groups)
    if len(weights) != len(groups):
        raise ValueError(f"{len(weights)} weights for {len(groups)} groups")
    cands = pos if neg is None else torch.cat([pos, neg], dim=0)
    if ignore is not None:
        if ignore.shape != (q.shape[0], cands.shape[0]):
            raise ValueError(f"ignore mask {tuple(ignore.shape)} must be [B, N] = {(q.shape[0], cands.shape[0])}")
        ignore = ignore.to(q.device) & ~torch.eye(q.shape[0], cands.shape[0], dtype=torch.bool, device=q.device)
    target = torch.arange(q.shape[0], device=q.device)
    if contrastive_weight is not None:
        contrastive_weight = contrastive_weight.to(device=q.device, dtype=torch.float32)
        if contrastive_weight.shape != (q.shape[0],):
            raise ValueError(f"contrastive_weight {tuple(contrastive_weight.shape)} must be [B] = [{q.shape[0]}]")
    if teacher is not None:
        teacher_logp = F.log_softmax(teacher.float(), -1)
        row_weight = torch.as_tensor(distill_weight, dtype=torch.float32, device=q.device).expand(q.shape[0])
    total = q.new_zeros(())
    parts = {}
    for (r_q, r_c), w in zip(groups, weights):
        if r_q > q.shape[1] or r_c > cands.shape[1]:
            raise ValueError(f"group ({r_q}, {r_c}) exceeds the vectors given ({q.shape[1]}, {cands.shape[1]})")
        raw = maxsim_dense(q[:, :r_q].float(), cands[:, :r_c].float()) / temperature
        logits = raw.masked_fill(ignore, float("-inf")) if ignore is not None else raw
        if contrastive_weight is None:
            loss = F.cross_entropy(logits, target)
        else:
            loss = (contrastive_weight * F.cross_entropy(logits, target, reduction="none")).mean()
        if teacher is not None:
            kl = F.kl_div(F.log_softmax(raw, -1), teacher_logp, log_target=True, reduction="none").sum(-1)
            loss = loss + (row_weight * kl).mean()
        parts[(r_q, r_c)] = loss.item()
        total = total + w * loss
    return total, parts
