"""Calibrate the app's "no close match" flag: the comparable score (MaxSim / r_q) below which a top result
is probably not what the user is looking for.

    python -m bench.weak_match [--checkpoint DIR] [--cache DIR]

For every judged query of a split, two cases: the collection as it is (a relevant unit is there), and the
collection without the query's relevant units (nothing relevant is there: the case the flag is for). The
flag fires when the best unit's comparable score is below a threshold. The threshold is chosen on the dev
split (the largest one whose flags are right at least 90% of the time: a flag must rarely hide a good
result); precision and recall are then reported on the held-out split, measured once, at every preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.evaluation import QUERIES_NAME, index_folder, load_queries  # noqa: E402
from model import MetaEmbed  # noqa: E402
from model.checkpoint import checkpoint_id  # noqa: E402
from model.scoring import CandidateStore  # noqa: E402

SPLITS = {"dev": ROOT / "tests" / "data" / "devset", "held-out": ROOT / "tests" / "data" / "heldout"}
MIN_PRECISION = 0.9


def split_scores(model, folder: Path, cache: Path | None) -> list[dict]:
    """Per query and preset: the comparable top score with and without the query's relevant units."""
    cached = cache / f"{folder.name}-{checkpoint_id(model)}.pt" if cache else None
    if cached is not None and cached.is_file():
        coll = torch.load(cached, weights_only=False)
    else:
        c = index_folder(model, checkpoint_id(model), folder)
        coll = {"units": c.units, "vectors": c.vectors}
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(coll, cached)
    queries = load_queries(folder / QUERIES_NAME)
    qvec = model.encode_queries([q.text for q in queries])
    store = CandidateStore(coll["vectors"])
    units = coll["units"]
    rows = []
    for r_q, r_c in model.config.presets:
        scores = store.maxsim(qvec, (r_q, r_c), precise=True) / r_q
        for qi, q in enumerate(queries):
            relevant = torch.tensor([u in q.relevant for u in units])
            rows.append({"preset": f"{r_q},{r_c}", "kind": q.kind, "present": float(scores[qi].max()),
                         "absent": float(scores[qi][~relevant].max())})
    return rows


def flag_quality(rows: list[dict], threshold: float) -> dict:
    """Precision and recall of "no close match" (score < threshold) for the absent case."""
    flagged_absent = sum(r["absent"] < threshold for r in rows)
    flagged_present = sum(r["present"] < threshold for r in rows)
    flagged = flagged_absent + flagged_present
    return {"threshold": round(threshold, 3), "precision": flagged_absent / flagged if flagged else 1.0,
            "recall": flagged_absent / len(rows), "false_alarms": flagged_present / len(rows)}


def choose(rows: list[dict]) -> float:
    """The largest threshold whose flags are right at least MIN_PRECISION of the time."""
    best = 0.0
    for t in sorted({round(r[k], 3) for r in rows for k in ("present", "absent")}):
        q = flag_quality(rows, t)
        if q["precision"] >= MIN_PRECISION and q["recall"] > 0:
            best = t
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled MetaEmbed-Mini)")
    p.add_argument("--cache", type=Path, default=None, help="keep each split's indexed vectors here")
    args = p.parse_args(argv)
    model = MetaEmbed.from_pretrained(args.checkpoint)
    rows = {name: split_scores(model, folder, args.cache) for name, folder in SPLITS.items()}
    threshold = choose(rows["dev"])
    report = {"checkpoint": checkpoint_id(model), "threshold": threshold, "min_precision": MIN_PRECISION}
    for name, split in rows.items():
        report[name] = {}
        for preset in [f"{a},{b}" for a, b in model.config.presets]:
            for kind in ("photo", "document", "all"):
                sel = [r for r in split if r["preset"] == preset and (kind == "all" or r["kind"] == kind)]
                if sel:
                    report[name][f"{preset} {kind}"] = flag_quality(sel, threshold)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
