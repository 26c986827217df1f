"""Calibrate the app's "no close match" flag: the whole-query score (the comparable score at budget (1,1):
the query's first vector against each item's first vector) below which a search is flagged, at every budget,
unless a part of the query matches strongly: its top score at the budget reaches that preset's strong-part
bar, which 99% of the dev split's gibberish searches stay below.

    python -m bench.weak_match [--checkpoint DIR] [--cache DIR] [--write]

Three kinds of query per split (dev and held-out share no source package):
- real: the split's judged queries over its whole collection (a relevant unit is there);
- other kind: the same queries over only the units of the other kind (a photo query over the pages, a
  document question over the photos): a collection with nothing of what was asked for;
- gibberish: 100 seeded random letter strings ("qwzx plorf") over the whole collection.
The threshold is the 10th percentile of the real queries' whole-query scores on the dev split, so about one
real search in ten is flagged there; the held-out split then says, measured once, how often real searches are
flagged, and, at each preset, how often the top result of a flagged search was indeed not relevant; how many
"other kind" and gibberish searches are caught; and, for comparison, the whole-query threshold alone and what
the flag caught when each preset had its own threshold on its own score (the app's flag until 2026-12-01).
`--write` stores the thresholds as calibration.json in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.evaluation import QUERIES_NAME, index_folder, load_queries  # noqa: E402
from app.ingest import IMAGE_EXTENSIONS  # noqa: E402
from app.search import CALIBRATION_NAME, WHOLE_MATCH, Calibration  # noqa: E402
from model import MetaEmbed  # noqa: E402
from model.checkpoint import checkpoint_id, resolve  # noqa: E402
from model.files import write_atomic  # noqa: E402
from model.scoring import CandidateStore  # noqa: E402

SPLITS = {"dev": ROOT / "tests" / "data" / "devset", "held-out": ROOT / "tests" / "data" / "heldout"}
REAL_FLAGGED = 0.10  # the share of real dev searches flagged: the threshold is their 10th percentile
GIBBERISH_BELOW = 0.99  # a part match above this share of dev gibberish searches' top scores is a close match


def gibberish(n: int = 100, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))  # noqa: E731
    return [f"{word()} {word()}" for _ in range(n)]


def indexed_collection(model, folder: Path, cache: Path | None) -> dict:
    """{"units", "vectors"} of an eval split indexed by `model`: from `cache` (DIR/<split>-<checkpoint>.pt)
    when it is there, else indexed now (minutes) and saved there."""
    cached = cache / f"{folder.name}-{checkpoint_id(model)}.pt" if cache else None
    if cached is not None and cached.is_file():
        return torch.load(cached, weights_only=False)
    c = index_folder(model, checkpoint_id(model), folder)
    coll = {"units": c.units, "vectors": c.vectors}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(coll, cached)
    return coll


def split_scores(model, folder: Path, cache: Path | None) -> dict[str, dict[str, list]]:
    """Per preset: comparable top scores of real, other-kind and gibberish queries, and whether each real
    query's top unit is relevant. The whole-query scores are those of the (1,1) preset."""
    coll = indexed_collection(model, folder, cache)
    units = coll["units"]
    photo = torch.tensor([u.lower().endswith(tuple(IMAGE_EXTENSIONS)) for u in units])
    queries = load_queries(folder / QUERIES_NAME)
    qvec = model.encode_queries([q.text for q in queries])
    gvec = model.encode_queries(gibberish())
    store = CandidateStore(coll["vectors"])
    out = {}
    for r_q, r_c in model.config.presets:
        s = store.maxsim(qvec, (r_q, r_c), precise=True) / r_q
        g = store.maxsim(gvec, (r_q, r_c), precise=True) / r_q
        top = s.argmax(dim=1)
        other = [s[i][photo if q.kind == "document" else ~photo].max() for i, q in enumerate(queries)]
        out[f"{r_q},{r_c}"] = {"real": s.max(dim=1).values.tolist(),
                               "top_relevant": [units[int(top[i])] in q.relevant for i, q in enumerate(queries)],
                               "other_kind": [float(x) for x in other], "gibberish": g.max(dim=1).values.tolist()}
    return out


def flag_report(scores: dict[str, list], calibration: Calibration, budget: dict[str, list] | None = None,
                preset: tuple[int, int] = WHOLE_MATCH) -> dict[str, float]:
    """How the app's flag (`Calibration.no_close_match`) flags searches whose whole-query scores are `scores`
    (real / other_kind / gibberish top scores) and whose top scores at `preset` are `budget` (default
    `scores`); a real search's top result at that budget decides whether a flag was right."""
    budget = scores if budget is None else budget

    def flags(kind: str) -> torch.Tensor:
        return torch.tensor([calibration.no_close_match(whole, best, preset)
                             for whole, best in zip(scores[kind], budget[kind], strict=True)], dtype=torch.bool)

    flagged = flags("real")
    wrong = torch.tensor([not r for r in budget["top_relevant"]])
    return {"real_flagged": float(flagged.float().mean()),
            "flagged_top_not_relevant": float(wrong[flagged].float().mean()) if flagged.any() else float("nan"),
            "unflagged_top_not_relevant": float(wrong[~flagged].float().mean()),
            "other_kind_caught": float(flags("other_kind").float().mean()),
            "gibberish_caught": float(flags("gibberish").float().mean())}


def _budget(preset: str) -> tuple[int, int]:
    return tuple(int(x) for x in preset.split(","))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled MetaEmbed-Mini)")
    p.add_argument("--cache", type=Path, default=None, help="keep each split's indexed vectors here")
    p.add_argument("--write", action="store_true", help=f"store the thresholds as {CALIBRATION_NAME} in the checkpoint")
    args = p.parse_args(argv)
    model = MetaEmbed.from_pretrained(args.checkpoint)
    scores = {name: split_scores(model, folder, args.cache) for name, folder in SPLITS.items()}
    whole = ",".join(map(str, WHOLE_MATCH))
    threshold = round(float(torch.tensor(scores["dev"][whole]["real"]).quantile(REAL_FLAGGED)), 4)
    per_budget = {preset: round(float(torch.tensor(s["real"]).quantile(REAL_FLAGGED)), 4)
                  for preset, s in scores["dev"].items()}
    strong = {preset: round(float(torch.tensor(s["gibberish"]).quantile(GIBBERISH_BELOW)), 4)
              for preset, s in scores["dev"].items()}
    shipped = Calibration(threshold, {_budget(preset): bar for preset, bar in strong.items()})  # what the app loads
    report = {"checkpoint_id": checkpoint_id(model), "weak_match": {whole: threshold}, "strong_part": strong,
              "statistic": f"the whole-query score (comparable score at budget {whole}) below weak_match, at "
                           "every budget, unless the top score at the budget reaches its strong_part",
              "chosen_on": f"dev split, {REAL_FLAGGED:.0%} of real searches below weak_match; strong_part: "
                           f"{GIBBERISH_BELOW:.0%} of gibberish searches' top scores below it",
              "measured": {name: {preset: flag_report(split[whole], shipped, s, _budget(preset))
                                  for preset, s in split.items()} for name, split in scores.items()},
              "whole_query_alone": {name: {preset: flag_report(split[whole], Calibration(threshold), s)
                                           for preset, s in split.items()} for name, split in scores.items()},
              "each_budget_its_own_threshold": {
                  "thresholds": per_budget,
                  "measured": {name: {preset: flag_report(s, Calibration(per_budget[preset]))
                                      for preset, s in split.items()} for name, split in scores.items()}}}
    print(json.dumps(report, indent=1))
    if args.write:
        write_atomic(resolve(args.checkpoint) / CALIBRATION_NAME, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
