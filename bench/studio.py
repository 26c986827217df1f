"""Speed of the app (MetaEmbed Studio) as users feel it: budget-slider re-ranking end to end, cold start, and
indexing uploads. (Not named app.py: with bench/ on sys.path that would shadow the `app` package.)

    python bench/studio.py rerank [--n 10000] [--moves 20] [--open]   slider move -> new gallery in Chromium
    python bench/studio.py coldstart                         `python app.py` -> page served (first and second start)
    python bench/studio.py index [--size 4032x3024] [--n 96]  photos uploaded -> searchable, photos/s

Results go to docs/benchmarks.md ("App"). Not a test: numbers depend on the machine and on what else runs.

rerank: a synthetic collection of `--n` items (random unit vectors, small JPEG thumbnails) is written into
the app's local collection, a server is launched in-process, and Chromium (Playwright) searches once, then
moves the budget slider across the presets. Each move is timed inside the page, from the slider's input
event to the moment the gallery shows the new ranking (so it includes the browser, the connection, Gradio's
queue, the MaxSim re-rank from the cached query vectors, thumbnails and rendering). The server-side part is
timed separately. With `--open`, one real photo (assets/examples/owl.jpg) joins the collection and its
"Why it matched" panel is open during the moves: each move is then also timed until the panel shows the new
budget (heatmap, bars, overlay and table redrawn).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bench.mini import parse_size, write_photos  # noqa: E402
from bench.search import Meta  # noqa: E402  (the fields Index.add reads from an ingest Item)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


MOVE_JS = """([step, budget]) => new Promise((resolve) => {
    // budget: "(r_q, r_c)" of the step when an explanation is open (then also timed until its title shows
    // it), else null.
    const captions = () => [...document.querySelectorAll('#me-results .caption-label')].map(e => e.innerText);
    const before = JSON.stringify(captions());
    const slider = document.querySelector('#me-preset input[type=range]');
    const why = document.querySelector('#me-why-title');
    const t0 = performance.now();
    let gallery = null, explained = null;
    const check = () => {
        if (gallery === null) {
            const now = captions();
            if (now.length && JSON.stringify(now) !== before) gallery = performance.now() - t0;
        }
        if (budget !== null && explained === null && why.innerText.includes(budget)) explained = performance.now() - t0;
        if (gallery !== null && (budget === null || explained !== null)) {
            observer.disconnect();
            resolve([gallery, explained]);
        }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.querySelector('#me-results'), {subtree: true, childList: true, characterData: true});
    if (budget !== null) observer.observe(why, {subtree: true, childList: true, characterData: true});
    slider.value = String(step);
    slider.dispatchEvent(new Event('input', {bubbles: true}));
    slider.dispatchEvent(new Event('change', {bubbles: true}));
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(tmp: Path) -> tuple[str, str]:
    """The bundled MetaEmbed-Mini if it is there, else an untrained model saved to `tmp` (same speed)."""
    from model.checkpoint import DEFAULT_CHECKPOINT
    from model.config import CONFIG_NAME

    if (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
        return str(DEFAULT_CHECKPOINT), "bundled MetaEmbed-Mini"
    from model import MetaEmbed, MetaEmbedConfig

    folder = tmp / "checkpoint"
    MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer", name="bench")).save_pretrained(folder)
    return str(folder), "untrained MiniLM-L6 + visual tokenizer (same architecture and speed as MetaEmbed-Mini)"


def thumbnail(i: int) -> bytes:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((96, 96), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def fill_collection(studio, n: int, seed: int = 0) -> None:
    engine = studio.engine
    idx = studio.local.index(engine)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, 2000):
        m = min(2000, n - start)
        vecs = torch.nn.functional.normalize(torch.randn(m, engine.num_candidate_vectors, engine.dim, generator=gen),
                                             dim=-1)
        items = [Meta(f"/bench/{i}.jpg", hashlib.sha256(f"bench:{i}".encode()).hexdigest(), thumbnail=thumbnail(i),
                      title=f"photo-{i:05d}.jpg") for i in range(start, start + m)]
        idx.add(items, vecs)


def bench_rerank(n: int, moves: int, open_result: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    from app.server import create_app, launch
    from app.ui.search_tab import gallery_value

    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    try:
        ckpt, label = checkpoint(tmp)
        studio, demo = create_app(ckpt, tmp / "data", sample_dir=None, log=lambda *a: None)
        t0 = time.perf_counter()
        fill_collection(studio, n)
        if open_result:  # a real photo, so that its explanation has a source to draw on
            report = studio.index_files(studio.local, [ROOT / "assets" / "examples" / "owl.jpg"])
            if len(report["indexed"]) != 1:
                raise RuntimeError(f"could not index the photo to open: {report}")
        print(f"checkpoint: {label}; {n} items written in {time.perf_counter() - t0:.1f} s; "
              f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")

        # Server side: what one slider move costs before Gradio and the browser.
        query = studio.encode_query("an owl hiding in a tree")
        for _ in range(3):
            studio.search(query, None, 16, 64, k=24)
        print("server side, per preset (median of 20): MaxSim top-24 over all items | + gallery files")
        for preset in studio.engine.presets:
            rank, full = [], []
            for _ in range(20):
                t = time.perf_counter()
                hits = studio.search(query, None, *preset, k=24)
                rank.append((time.perf_counter() - t) * 1000)
                gallery_value(studio, hits, None, preset[0])
                full.append((time.perf_counter() - t) * 1000)
            print(f"  {preset}: {statistics.median(rank):6.1f} ms | {statistics.median(full):6.1f} ms")
        # A new text search: encode the query (never seen before, so no cache) and rank at the largest budget.
        fresh = [f"{w} near the {p}" for w in ("boats", "a cat", "red flowers", "mountains", "an old bridge")
                 for p in ("lake", "house", "road", "sea")]
        texts = []
        for q in fresh:
            t = time.perf_counter()
            studio.search(studio.encode_query(q), None, *studio.engine.presets[-1], k=24)
            texts.append((time.perf_counter() - t) * 1000)
        print(f"text search, encode + rank at {studio.engine.presets[-1]} over {n} items "
              f"(median of {len(fresh)} new queries): {statistics.median(texts):.1f} ms, max {max(texts):.1f} ms")

        port = free_port()
        launch(studio, demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.wait_for_selector("#me-query textarea")
            page.fill("#me-query textarea", "an owl hiding in a tree")
            page.click("#me-search")
            page.wait_for_selector("#me-results .caption-label")
            presets = studio.engine.presets
            if open_result:
                page.locator("#me-results .thumbnail-item", has_text="owl.jpg").first.click()
                page.wait_for_selector("#me-heatmap .js-plotly-plot", state="visible")
            # The slider starts at the largest preset; moves go 0, 1, ..., largest, 0, ... (each one a change).
            order = [i % len(presets) for i in range(moves)]
            times: dict[int, list[float]] = {i: [] for i in range(len(presets))}
            why: dict[int, list[float]] = {i: [] for i in range(len(presets))}
            for step in order:
                # Timed inside the page: from the slider's input event to the gallery's captions changing
                # (a MutationObserver), so Playwright's own round trips are not counted.
                budget = f"({presets[step][0]}, {presets[step][1]})" if open_result else None
                gallery, explained = page.evaluate(MOVE_JS, [step, budget])
                times[step].append(gallery)
                if explained is not None:
                    why[step].append(explained)
                page.wait_for_timeout(100)  # let a chained update finish before the next move
            browser.close()
        everything = [v for vs in times.values() for v in vs]
        panel = [v for vs in why.values() for v in vs]
        opened = " with the owl's explanation open" if open_result else ""
        print(f"end to end in Chromium, slider move -> new gallery{' | -> explanation at the new budget' * open_result}"
              f" ({len(everything)} moves over {n} items{opened}):")
        for i, preset in enumerate(presets):
            if times[i]:
                extra = f" | {statistics.median(why[i]):6.1f} ms" if why[i] else ""
                print(f"  to {preset}: median {statistics.median(times[i]):6.1f} ms{extra} (n={len(times[i])})")
        print(f"  all moves: median {statistics.median(everything):.1f} ms, max {max(everything):.1f} ms "
              f"(load average {os.getloadavg()[0]:.1f})")
        if panel:
            print(f"  explanation at the new budget: median {statistics.median(panel):.1f} ms, max {max(panel):.1f} ms")
        demo.close()
        studio.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_served(url: str, proc: subprocess.Popen, limit: float = 300.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not served after {limit} s")


def bench_coldstart() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    try:
        ckpt, label = checkpoint(tmp)
        print(f"checkpoint: {label}; load average {os.getloadavg()[0]:.1f}")
        for run in ("first start (samples indexed in the background)", "second start (index reused)"):
            port = free_port()
            log = tmp / "server.log"
            with open(log, "w") as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(tmp / "data"),
                                         "--checkpoint", ckpt, "--port", str(port)], stdout=out,
                                        stderr=subprocess.STDOUT, cwd=ROOT)
                try:
                    served = wait_served(f"http://127.0.0.1:{port}/", proc)
                    indexed = None
                    if run.startswith("first"):
                        while time.perf_counter() - t0 < 600 and "indexed the sample collection" not in log.read_text():
                            time.sleep(0.5)
                        indexed = time.perf_counter() - t0
                finally:
                    proc.terminate()
                    proc.wait(30)
            extra = f"; sample collection indexed after {indexed:.1f} s" if indexed else ""
            print(f"  {run}: page served after {served:.1f} s{extra}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_index(n: int, size: tuple[int, int], rounds: int) -> None:
    """Upload `n` camera-sized JPEGs (the sample photos re-encoded at `size`, each made unique) into a fresh
    local collection through `Studio.index_files`, the path the app's upload box takes: copy in, ingest
    (hash, decode, EXIF, resize to the encoder's 1600 px, thumbnail), encode in the model lock's chunks, commit."""
    from app.server import create_app

    sources = sorted(p for p in (ROOT / "assets" / "examples").rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        photos = tmp / "photos"
        photos.mkdir()
        files = write_photos(photos, sources, n, size)
        ckpt, label = checkpoint(tmp)
        rates = []
        for r in range(rounds):
            # As a visitor finds the app once it is up: its start-up work (the class prior's vectors) is done.
            studio, _ = create_app(ckpt, tmp / f"data{r}", sample_dir=None, wait_for_samples=True, log=lambda *a: None)
            if r == 0:  # warm-up: loads the classifier (and TorchScript-freezes it) before anything is timed
                studio.engine.model.encode_candidates([Image.open(files[0])])
                print(f"checkpoint: {label}; {n} photos {size[0]}x{size[1]}; torch threads {torch.get_num_threads()}; "
                      f"load average {os.getloadavg()[0]:.1f}")
            t = time.perf_counter()
            report = studio.index_files(studio.local, files)
            dt = time.perf_counter() - t
            if len(report["indexed"]) != n or report["errors"]:
                raise RuntimeError(f"expected {n} photos indexed, got {len(report['indexed'])}: {report['errors'][:3]}")
            rates.append(n / dt)
            print(f"  round {r + 1}: {n / dt:.1f} photos/s ({dt:.1f} s)")
        print(f"median {statistics.median(rates):.1f} photos/s, best {max(rates):.1f}; "
              f"load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rerank")
    r.add_argument("--n", type=int, default=10_000)
    r.add_argument("--moves", type=int, default=20)
    r.add_argument("--open", action="store_true", help="keep a result's explanation open during the moves")
    sub.add_parser("coldstart")
    x = sub.add_parser("index")
    x.add_argument("--n", type=int, default=96)
    x.add_argument("--size", default="4032x3024", help="WIDTHxHEIGHT of the uploaded JPEGs (a 12 MP phone photo)")
    x.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.cmd == "rerank":
        bench_rerank(args.n, args.moves, args.open)
    elif args.cmd == "index":
        if args.n < 1 or args.rounds < 1:
            p.error(f"--n and --rounds must be positive, got {args.n} and {args.rounds}")
        try:
            size = parse_size(args.size)
        except ValueError as exc:
            p.error(f"--size: {exc}")
        bench_index(args.n, size, args.rounds)
    else:
        bench_coldstart()


if __name__ == "__main__":
    main()
