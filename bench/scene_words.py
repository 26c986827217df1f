"""Scene words (`model/visual/scene.py`): which photos get "sky" / "black and white", against labels a person
gave by looking at the photos, and what the rules cost per photo.

    nice -n 5 .venv/bin/python bench/scene_words.py [--photos DIR] [--rounds 3]

LABELS below were given on 2026-12-01 by looking at each of the dev split's 122 photos (contact sheets), not
through any query, while the rules were being written (so this is a check of the rules, not a held-out
measurement): which show a blue sky, which show another sky (sunset, overcast, night: not aimed at),
which have no colour. The photos are read as the tokenizer reads them (its working copy). Reported:
for each word, photos named, how many of them carry the label, and the labelled photos missed. A folder
without labels (`--photos DIR`) gets the counts and the cost only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from model.visual.colours import thumbnail_rgb  # noqa: E402
from model.visual.scene import scene_words  # noqa: E402
from model.visual.tokenizer import _working_copy  # noqa: E402

DEV = ROOT / "tests" / "data" / "devset" / "photos"
_ids = lambda s: {f"IMG_{n}" for n in s.split()}  # noqa: E731
LABELS = {
    "blue sky": _ids("1211 1336 1514 2184 2480 3428 4001 4287 4520 4846 5470 5706 6285 6932 6987 7163 7256 "
                     "7570 7624 8077 8089 8816 9020"),
    "other sky": _ids("2279 2433 3199 3451 3775 4053 6721 7305 9798"),
    "blue illustration sky": _ids("1934"),  # a drawn landscape: "sky" is right
    "no colour": _ids("1024 3279 5480 4320 6996") | {"Screenshot_03"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=DEV)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    work = [_working_copy(Image.open(p)) for p in paths]
    named: dict[str, set[str]] = {}
    for p, img in zip(paths, work, strict=True):
        for w in scene_words(img):
            named.setdefault(w.text, set()).add(p.stem)
    thumbs = [thumbnail_rgb(img) for img in work]
    times, rules = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for img in work:
            scene_words(img)
        middle = time.perf_counter()
        for img, thumb in zip(work, thumbs, strict=True):
            scene_words(img, thumbnail=thumb)  # as the tokenizer calls it: the thumbnail shared with the colours
        end = time.perf_counter()
        times.append((middle - start) / len(work) * 1000)
        rules.append((end - middle) / len(work) * 1000)
    print(f"{len(paths)} photos in {args.photos}")
    labelled = args.photos.resolve() == DEV.resolve()
    for word, stems in sorted(named.items()):
        line = f"  {word!r}: {len(stems)} photos"
        if labelled:
            truth = LABELS["no colour"] if "black" in word else (LABELS["blue sky"] | LABELS["blue illustration sky"])
            right = stems & truth
            line += (f", {len(right)} labelled so; not labelled: {sorted(stems - truth)}; labelled but missed: "
                     f"{sorted(truth - stems)}")
            if "black" not in word:
                line += f"; other skies named: {sorted(stems & LABELS['other sky'])}"
        print(line)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"cost per photo (median of {args.rounds} rounds over the tokenizer's working copies; load {load}): "
          f"{statistics.median(times):.2f} ms with the thumbnail, {statistics.median(rules):.2f} ms for the rules "
          "alone (the tokenizer shares the thumbnail with the colours)")


if __name__ == "__main__":
    main()
