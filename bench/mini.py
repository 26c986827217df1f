"""MetaEmbed-Mini end to end on this CPU: model load time, photos/s, passages/s and queries/s of the full encoder.

    .venv/bin/python bench/mini.py [--photos DIR] [--checkpoint PATH]

Photos: by default the app's sample photos (assets/examples, JPEGs only), each re-encoded untimed as a 1600x1200 JPEG
(--size; e.g. 1920x1080 for 16:9 photos, where the classifier also reads the two end squares) so the timed run
decodes camera-sized files; OCR runs only where the text gate fires (as when indexing).
Passages: 128 paragraphs of 80-150 words from Python's standard-library docstrings (as long as the app's page
passages). Queries: short photo/document queries written here. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402

QUERIES = ["a cat sleeping", "red car", "boats at sunset", "snowy mountains", "how do I add an apt repository",
           "flowers in a garden", "dog on the beach", "installer screenshot", "bird", "a bowl of fruit"]


def load_seconds(checkpoint: str | None) -> float:
    """Cold load in a fresh interpreter, imports included (what a user waits for)."""
    code = ("import time; t=time.time(); from model import MetaEmbed; "
            f"MetaEmbed.from_pretrained({checkpoint!r}, device='cpu'); print(time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> tuple[int, int]:
    """"1600x1200" -> (1600, 1200); ValueError naming the expected form otherwise."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"a size must look like 1600x1200, got {text!r}")
    return size


def write_photos(folder: Path, sources: list[Path], n: int, size: tuple[int, int]) -> list[Path]:
    """`n` camera-sized JPEGs (q90) in `folder`: the `sources` in turn, resized to `size`, each with one pixel
    changed so no two files have the same content (the app skips duplicates)."""
    files = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB").resize(size)
        img.putpixel((i % size[0], 0), (i % 256, 0, 0))
        files.append(folder / f"IMG_{i:04d}.jpg")
        img.save(files[-1], quality=90)
    return files


def rates(run, n: int, rounds: int) -> list[float]:
    """Items per second of `rounds` timed calls of `run`, each encoding `n` items."""
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        run()
        out.append(n / (time.perf_counter() - t))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(ROOT / "assets" / "examples"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="1600x1200", help="WIDTHxHEIGHT the photos are re-encoded at")
    opts = p.parse_args()
    try:
        size = parse_size(opts.size)
    except ValueError as exc:
        p.error(f"--size: {exc}")

    from model import MetaEmbed

    loads = [load_seconds(opts.checkpoint) for _ in range(3)]
    model = MetaEmbed.from_pretrained(opts.checkpoint, device="cpu")
    # Photos only (JPEG): the target is for photos without OCR; screenshots (PNG) would run OCR.
    sources = sorted(x for x in Path(opts.photos).rglob("*") if x.suffix.lower() in {".jpg", ".jpeg"})
    with tempfile.TemporaryDirectory() as tmp:
        files = write_photos(Path(tmp), sources, opts.n, size)
        model.encode_candidates([Image.open(files[0])])  # warm-up: loads the visual tokenizer
        photo_rates = rates(lambda: model.encode_candidates([Image.open(f) for f in files], batch_size=32),
                            opts.n, opts.rounds)
    from model.recipes.mini.text_pairs import stdlib_passages

    passages = [p for _, p in stdlib_passages(max_words=150) if len(p.split()) >= 80][:128]
    model.encode_candidates(passages[:8])
    passage_rates = rates(lambda: model.encode_candidates(passages, batch_size=32), len(passages), opts.rounds)
    queries = QUERIES * 20
    model.encode_queries(queries[:8])
    query_rates = rates(lambda: model.encode_queries(queries, batch_size=64), len(queries), opts.rounds)
    load_avg = os.getloadavg()[0]
    print(f"load average at the end: {load_avg:.1f}")
    print("| measure | median | best | target |")
    print("|---|---|---|---|")
    print(f"| cold load of MetaEmbed-Mini (fresh interpreter, imports included) | {statistics.median(loads):.2f} s "
          f"| {min(loads):.2f} s | < 5 s |")
    print(f"| encode photos ({opts.size} JPEG files, decode + visual tokenizer + MiniLM, batch 32) | "
          f"{statistics.median(photo_rates):.1f} photos/s | {max(photo_rates):.1f} photos/s | >= 30 photos/s |")
    print(f"| encode passages ({len(passages)} of 80-150 words, batch 32) | {statistics.median(passage_rates):.0f} "
          f"passages/s | {max(passage_rates):.0f} passages/s | |")
    print(f"| encode queries (batch 64) | {statistics.median(query_rates):.0f} queries/s | "
          f"{max(query_rates):.0f} queries/s | >= 150 queries/s |")


if __name__ == "__main__":
    main()
