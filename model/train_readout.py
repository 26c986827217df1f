"""MMR training of a granular MetaEmbed's readout and projection on cached backbone states.

With a frozen backbone, no LoRA and the meta-token embeddings held at their seeded start, everything the
backbone computes for a text (the content's last-layer states and the meta tokens' last-layer states) is
fixed: it is computed once per text, and the optimisation runs on those states alone. The trained part is
the span readout (model/readout.py) and the projection: thousands of MMR steps take minutes on two CPU
cores, where one step through the backbone takes seconds (MetaEmbed-Mini v1's trainer: 7-13 s per step of
16 rows in fp32 on this project's AVX2 CPU).

The loss is the MMR InfoNCE (one term per Matryoshka group, in-batch plus the row's hard negative) with the
optional listwise distillation from the base's own mean-pooled scores, which the cache gives for free: the
content states are the base's, so their mean is exactly that teacher's vector.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import GRANULAR
from .losses import mmr_loss
from .metaembed import MetaEmbed
from .train import false_negatives


@dataclass
class ReadoutArgs:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: float = 0.05
    seed: int = 0
    distill: float = 0.0  # weight of the listwise KL to the base's mean-pooled in-batch ranking
    distill_temperature: float = 0.05
    log_every: int = 50
    progress: bool = True


@dataclass
class Cached:
    """One text's fixed backbone states (bf16 in memory: the cache is the trainer's only big allocation)."""

    content: torch.Tensor  # [L, H] last-layer content states, [CLS] and [SEP] included
    meta: torch.Tensor  # [R, H] last-layer meta states
    span: torch.Tensor  # [R, L] bool: which content states each meta token reads (the model's part layout)


@torch.no_grad()
def cache_states(model: MetaEmbed, texts: list[str], side: str, batch_size: int = 32,
                 progress: bool = True) -> dict[str, Cached]:
    """Backbone states of each distinct text, keyed by the text."""
    if model.readout is None:
        raise ValueError(f"cached readout training needs granular meta tokens (meta_attention one of {list(GRANULAR)})")
    if model.config.lora_r:
        raise ValueError("cached readout training needs a frozen backbone (lora_r=None)")
    unique = sorted(set(texts), key=len)  # similar lengths together: less padding
    out: dict[str, Cached] = {}
    bar = tqdm(total=len(unique), desc=f"caching {side} states", unit="text", disable=not progress)
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        batch = model.prepare(chunk, side)
        _, res = model.embed(batch, side, meta_states=True)  # the output carries the content and meta states
        lengths = batch["attention_mask"].sum(1)
        for i, text in enumerate(chunk):
            n = int(lengths[i])
            out[text] = Cached(res.content[i, :n].to(torch.bfloat16).cpu(), res.meta[i].to(torch.bfloat16).cpu(),
                               res.span[i, :, :n].cpu())
        bar.update(len(chunk))
    bar.close()
    return out


def _stack(cached: list[Cached]) -> tuple[torch.Tensor, ...]:
    lengths = torch.tensor([c.content.shape[0] for c in cached])
    width = int(lengths.max())
    meta = torch.stack([c.meta.float() for c in cached])
    content = torch.zeros(len(cached), width, cached[0].content.shape[1])
    span = torch.zeros(len(cached), meta.shape[1], width, dtype=torch.bool)
    for i, c in enumerate(cached):
        content[i, : c.content.shape[0]] = c.content.float()
        span[i, :, : c.span.shape[1]] = c.span
    valid = (torch.arange(width) < lengths[:, None]).float()
    mean = (content * valid[..., None]).sum(1) / lengths[:, None]
    return content, meta, span, F.normalize(mean, dim=-1)


def _vectors(model: MetaEmbed, content, meta, span) -> torch.Tensor:
    states, _ = model.readout(meta, content, span)
    if model.proj is not None:
        states = model.proj(states)
    return F.normalize(states.float(), dim=-1)


def train_readout(model: MetaEmbed, rows: list[dict], args: ReadoutArgs, out: str | Path | None = None
                  ) -> MetaEmbed:
    """Train `model.readout` and `model.proj` on text rows {"query", "positive", "negative"?, "distill"?,
    "contrastive"?, *_tags?}; the meta tokens and the backbone stay as they are. Logs go to out/train_log.jsonl."""
    if any(not isinstance(r[k], str) for r in rows for k in ("query", "positive", "negative") if k in r):
        raise ValueError("cached readout training takes text rows only (photos enter as their visual-tokenizer text)")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    cfg = model.config
    q_cache = cache_states(model, [r["query"] for r in rows], "query", progress=args.progress)
    c_cache = cache_states(model, [r[k] for r in rows for k in ("positive", "negative") if k in r],
                           "candidate", progress=args.progress)
    params = list(model.readout.parameters()) + (list(model.proj.parameters()) if model.proj is not None else [])
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, int(args.steps * args.warmup))
    log = None
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        log = (Path(out) / "train_log.jsonl").open("a")
    rng = random.Random(args.seed)
    order: list[int] = []
    t0 = time.time()
    model.train()
    bar = tqdm(total=args.steps, desc="training readout", unit="step", disable=not args.progress)
    for step in range(args.steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = args.lr * scale
        batch = []
        while len(batch) < args.batch_size:
            if not order:
                order = list(range(len(rows)))
                rng.shuffle(order)
            batch.append(rows[order.pop()])
        negs = [r for r in batch if "negative" in r]
        qc, qm, qs, q_mean = _stack([q_cache[r["query"]] for r in batch])
        cc, cm, cs, c_mean = _stack([c_cache[r["positive"]] for r in batch]
                                    + [c_cache[r["negative"]] for r in negs])
        q = _vectors(model, qc, qm, qs)
        c = _vectors(model, cc, cm, cs)
        teacher, distill = None, 0.0
        if args.distill > 0:
            teacher = q_mean @ c_mean.T / args.distill_temperature
            distill = args.distill * torch.tensor([float(r.get("distill", 1.0)) for r in batch])
        contrastive = None
        if any("contrastive" in r for r in batch):
            contrastive = torch.tensor([float(r.get("contrastive", 1.0)) for r in batch])
        loss, parts = mmr_loss(q, c[: len(batch)], c[len(batch):] if negs else None, groups=cfg.groups,
                               weights=cfg.weights, temperature=cfg.temperature,
                               ignore=false_negatives(batch, with_negatives=bool(negs)), teacher=teacher,
                               distill_weight=distill, contrastive_weight=contrastive)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.update(1)
        if log is not None and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            log.write(json.dumps({"step": step + 1, "loss": loss.item(),
                                  "groups": {f"{a},{b}": v for (a, b), v in parts.items()},
                                  "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            log.flush()
    bar.close()
    if log is not None:
        log.close()
    model.eval()
    return model
