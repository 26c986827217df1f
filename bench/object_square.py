"""Product shots: does the visual tokenizer name a small object on a plain background, with and without the
object's square (`model/visual/classifier.py`, `object_square`)?

    nice -n 19 .venv/bin/python bench/object_square.py [--photos DIR] [--widths 0.5 0.3 0.15]

No judged product shots are at hand (the dev and held-out photos have no plain backgrounds), so this makes them:
each photo of DIR (default: the dev split's) whose top ImageNet class the classifier gives >= 0.5 is pasted onto
a white 1600x1200 frame at each width (a share of the frame's width, a little off centre), and the tokenizer
reads the frame twice, with the object's square and with the usual crops. Reported per width: how often the
photo's own top class is the frame's first concept, and how often it is named at all. Also: how many of the
folder's photos themselves get an object's square, and what `object_square` costs per photo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import model.visual.classifier as classifier_mod  # noqa: E402
from model.visual.tokenizer import VisualTokenizer, _working_copy, image_class_probabilities  # noqa: E402

FRAME = (1600, 1200)


def concepts(tokenizer: VisualTokenizer, img: Image.Image, square: bool) -> list[int]:
    """The classes the tokenizer names for `img`, first first, with the object's square on or off."""
    real = classifier_mod.object_square
    classifier_mod.object_square = real if square else (lambda _img: None)
    try:
        doc = tokenizer.tokenize([img], ocr=False)[0]
    finally:
        classifier_mod.object_square = real
    return [t.class_index for t in doc.tokens if t.kind == "concept"]


def on_white(photo: Image.Image, width: float) -> Image.Image:
    frame = Image.new("RGB", FRAME, "white")
    w = int(FRAME[0] * width)
    h = min(int(w * photo.height / photo.width), int(FRAME[1] * 0.85))
    frame.paste(photo.resize((w, h), Image.Resampling.LANCZOS), ((FRAME[0] - w) // 2 + 100, (FRAME[1] - h) // 2 - 50))
    return frame


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "devset" / "photos")
    p.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.3, 0.15])
    p.add_argument("--sure", type=float, default=0.5, help="top-1 probability a photo needs to take part")
    args = p.parse_args(argv)
    tokenizer = VisualTokenizer(people=False)
    photos = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rows = {w: [] for w in args.widths}
    changed, costs = 0, []
    for path in photos:
        photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        work = _working_copy(photo)
        t0 = time.perf_counter()
        classifier_mod.object_square(work)
        costs.append((time.perf_counter() - t0) * 1000)
        changed += classifier_mod.object_square(work) is not None  # read through the object's square at all
        probs = image_class_probabilities(photo)
        top = int(np.argmax(probs))
        if probs[top] < args.sure:
            continue
        for w in args.widths:
            frame = on_white(photo, w)
            off, on = concepts(tokenizer, frame, False), concepts(tokenizer, frame, True)
            rows[w].append((off[:1] == [top], top in off, on[:1] == [top], top in on))
    n = len(rows[args.widths[0]])
    print(f"{n} of {len(photos)} photos sure of their class (top-1 >= {args.sure}); {changed} of the photos "
          f"themselves read through an object's square; object_square "
          f"{statistics.median(costs):.2f} ms median per working copy\n")
    print("| object's width in the frame | class first: centre square -> object's square | class named: centre "
          "square -> object's square |\n|---|---|---|")
    for w, r in rows.items():
        a = np.array(r, dtype=float).mean(axis=0) if r else np.zeros(4)
        print(f"| {w:.0%} | {a[0]:.2f} -> {a[2]:.2f} | {a[1]:.2f} -> {a[3]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
