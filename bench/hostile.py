"""The long hostile inputs of issue 19, timed: a 19 MB text file and a 500-page PDF through ingest.

    .venv/bin/python bench/hostile.py [--text-mb 19] [--pages 500]

Ingest only (reading, decoding, passage splitting, page rendering and thumbnails); encoding is measured by
bench/mini.py. Prints a markdown table with wall time, items and the process's peak memory, for
docs/benchmarks.md. The quick hostile cases are tests (tests/app/ingest/test_ingest.py); these are too slow for them.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ingest import IngestError, Item, iter_ingest  # noqa: E402
from tests.helpers import VOCAB, make_pdf  # noqa: E402  (the tests' minimal PDF writer, one copy)


def text_file(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    with path.open("w", encoding="utf-8") as f:
        written = 0
        while written < target:
            para = " ".join(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(6, 14))).capitalize() + "."
                            for _ in range(rng.randint(3, 8))) + "\n\n"
            f.write(para)
            written += len(para)


def pdf_file(path: Path, pages: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    path.write_bytes(make_pdf([[(72, 720 - 20 * i, 11, " ".join(rng.choice(VOCAB) for _ in range(10)))
                                for i in range(30)] for _ in range(pages)]))


def run(path: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    items = errors = 0
    for event in iter_ingest([path], ocr=None):
        items += isinstance(event, Item)
        errors += isinstance(event, IngestError)
    return time.perf_counter() - start, items, errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-mb", type=float, default=19.0)
    p.add_argument("--pages", type=int, default=500)
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        txt, pdf = Path(tmp) / "long.txt", Path(tmp) / "long.pdf"
        text_file(txt, opts.text_mb)
        pdf_file(pdf, opts.pages)
        rows = []
        for label, path in ((f"{txt.stat().st_size / 1e6:.1f} MB text file", txt),
                            (f"{opts.pages}-page PDF ({pdf.stat().st_size / 1e6:.1f} MB, text layer)", pdf)):
            seconds, items, errors = run(path)
            rows.append(f"| {label} | {seconds:.1f} s | {items} | {errors} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load average {os.getloadavg()[0]:.1f}; peak memory of the process {peak_mb:.0f} MB\n")
    print("| input | ingest time | items | errors |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
