"""Photo front end costs per photo: the classifier variants (EfficientNet-Lite0/1/2) and the face detector.

    nice -n 19 .venv/bin/python bench/front_end.py [--photos DIR] [--n 32] [--rounds 3]

Photos (default: the dev set's JPEGs) are resized to 1600x1200 and reduced to the tokenizer's working copy, so
each variant reads the same three square crops the tokenizer would give it (at its own input size). Times are
per photo, the classifier over a batch of `--n` photos; wall-clock median over rounds and the best round's
CPU milliseconds of this process (on a shared machine CPU time says more than wall time; compare variants as
ratios within one run). Prints a markdown table for docs/benchmarks.md. Variants whose weights package is not
installed are listed as missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def timed(fn, rounds: int) -> tuple[float, float]:
    """(median wall ms, best CPU ms) of `fn` over `rounds` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return statistics.median(walls), min(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "devset" / "photos")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="lite0,lite1,lite2")
    args = ap.parse_args(argv)

    from model.visual.classifier import VARIANTS, ImageClassifier, preprocess
    from model.visual.people import FaceDetector, PeopleDetectorUnavailable
    from model.visual.tokenizer import _working_copy

    sources = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})[: args.n]
    if not sources:
        ap.error(f"--photos {args.photos}: no JPEG photos")
    photos = [Image.open(p).convert("RGB").resize((1600, 1200), Image.Resampling.BICUBIC) for p in sources]
    print(f"{len(photos)} photos at 1600x1200, {os.cpu_count()} cores, load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        try:
            clf = ImageClassifier(variant=name)
        except ImportError as exc:
            rows.append(f"| {name} ({spec.input_size} px) | missing: {exc} | | |")
            continue
        works = [_working_copy(p, clf.input_size) for p in photos]
        inputs = np.concatenate([preprocess(w, clf.input_size)[0] for w in works])
        wall, cpu = timed(lambda clf=clf, inputs=inputs: clf.predict(inputs), args.rounds)
        crops = len(inputs) // len(works)
        rows.append(f"| classifier {name} ({spec.input_size} px, {crops} crops) | {wall / len(works):.1f} ms "
                    f"| {cpu / len(works):.1f} ms | {os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
    try:
        det = FaceDetector()
    except PeopleDetectorUnavailable as exc:
        rows.append(f"| face detector | missing: {exc} | | |")
    else:
        works = [_working_copy(p) for p in photos]
        wall, cpu = timed(lambda: [det.detect(w) for w in works], args.rounds)
        rows.append(f"| face detector (RetinaFace-MNet0.25, {det.long_side} px long side, resize included) "
                    f"| {wall / len(works):.1f} ms | {cpu / len(works):.1f} ms | {os.getloadavg()[0]:.1f} |")
    print("\n| per photo | wall (median) | CPU (best round) | load average |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
