"""Visual tokenizer speed and OCR-gate quality on this machine.

    .venv/bin/python bench/visual.py --photos DIR [--n 64] [--rounds 3] [--show 12] [--no-gate]

Photos: any folder of images (searched recursively). Each is re-encoded once, untimed, as a 1600x1200 (or
1200x1600) JPEG in a temporary folder, so the timed runs decode typical camera-sized files. Debian's
wallpaper packages are a good offline source (photos of animals, flowers, buildings, fruit, landscapes):

    cd /tmp && apt-get download mate-backgrounds gnome-backgrounds plasma-workspace-wallpapers palapeli-data \\
        lxqt-themes && for f in *.deb; do dpkg -x "$f" /tmp/wallpapers; done
    .venv/bin/python bench/visual.py --photos /tmp/wallpapers/usr/share

Without --photos it generates synthetic scenes (less representative). Measured:
- photos/s of `VisualTokenizer.tokenize(ocr=False)` on batches of --n images, file decode included;
- photos/s with ocr="auto" (the text gate runs, OCR only where it fires);
- the gate's precision/recall: the photos vs text images rendered here with PIL (pages, slides, UI text,
  captions and signs drawn onto the photos);
- --show: the docs of the first photos, to eyeball.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.backbones import LazyFrontEnd  # noqa: E402
from model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from model.config import MetaEmbedConfig  # noqa: E402
from model.visual.ocr import likely_has_text, ocr_image, text_class_mass, text_stroke_score  # noqa: E402
from model.visual.tokenizer import VisualTokenizer, _working_copy, image_class_probabilities  # noqa: E402
from model.visual.vocab import load_vocab  # noqa: E402

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
PHOTO_SIZE = (1600, 1200)


def find_images(root: Path, limit: int) -> list[Path]:
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    out = []
    for p in found:
        try:
            with Image.open(p) as im:
                if min(im.size) >= 600:
                    out.append(p)
        except OSError:
            continue
        if len(out) == limit:
            break
    return out


def prepare_photos(sources: list[Path], out_dir: Path) -> list[Path]:
    paths = []
    for i, src in enumerate(sources):
        with Image.open(src) as im:
            im = im.convert("RGB")
            size = PHOTO_SIZE if im.width >= im.height else PHOTO_SIZE[::-1]
            im = im.resize(size, Image.Resampling.LANCZOS)
        path = out_dir / f"photo_{i:03d}.jpg"
        im.save(path, quality=88)
        paths.append(path)
    return paths


def synthetic_photos(n: int, out_dir: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        w, h = PHOTO_SIZE
        y = np.linspace(0, 1, h)[:, None, None]
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        arr = (top * (1 - y) + bottom * y) * np.ones((1, w, 1)) + rng.normal(0, 8, (h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(40, 300)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
        path = out_dir / f"synthetic_{i:03d}.jpg"
        img.save(path, quality=88)
        paths.append(path)
    return paths


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if not path.is_file():
        raise SystemExit(f"font missing: {path} (apt-get install -y fonts-dejavu-core)")
    return ImageFont.truetype(str(path), size)


def text_images(photos: list[Path], seed: int = 0) -> list[tuple[str, Image.Image]]:
    """PIL-rendered images that contain text: pages, slides, UI text, and captions/signs on photos."""
    rng = random.Random(seed)
    words = [w for w in load_vocab().extra_nouns() if w.isalpha()]

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    out: list[tuple[str, Image.Image]] = []
    for _ in range(10):
        page = Image.new("RGB", (1240, 1754), "white")
        draw = ImageDraw.Draw(page)
        size = rng.choice([16, 20, 24, 28])
        font = _font(rng.choice(["DejaVuSans.ttf", "DejaVuSerif.ttf"]), size)
        for y in range(100, 1654, int(size * 1.6)):
            draw.text((100, y), sentence(rng.randint(4, 9)), font=font, fill="black")
        out.append(("page", page))
    for _ in range(8):
        bg = tuple(rng.randint(0, 255) for _ in range(3))
        fg = (255, 255, 255) if sum(bg) < 380 else (0, 0, 0)
        slide = Image.new("RGB", (1600, 900), bg)
        draw = ImageDraw.Draw(slide)
        draw.text((80, 60), sentence(3).title(), font=_font("DejaVuSans-Bold.ttf", 64), fill=fg)
        for k in range(4):
            draw.text((120, 220 + k * 120), "- " + sentence(5), font=_font("DejaVuSans.ttf", 40), fill=fg)
        out.append(("slide", slide))
    for _ in range(6):
        ui = Image.new("RGB", (1280, 800), (240, 240, 240))
        draw = ImageDraw.Draw(ui)
        for k in range(40):
            draw.text((20, 15 + k * 19), sentence(6), font=_font("DejaVuSansMono.ttf", 14), fill=(30, 30, 30))
        out.append(("ui", ui))
    for i in range(10):
        with Image.open(photos[i % len(photos)]) as im:
            photo = im.convert("RGB")
        draw = ImageDraw.Draw(photo)
        w, h = photo.size
        font = _font("DejaVuSans-Bold.ttf", max(24, h // 14))
        text = sentence(rng.randint(1, 3)).upper()
        if i % 2 == 0:
            draw.rectangle((0, h - h // 6, w, h), fill=(0, 0, 0))
            draw.text((w // 20, h - h // 7), text, font=font, fill="white")
            out.append(("caption", photo))
        else:
            x0, y0 = w // 4, h // 3
            draw.rectangle((x0, y0, x0 + w // 2, y0 + h // 4), fill=(0, 90, 40))
            draw.text((x0 + 20, y0 + 20), text, font=font, fill="white")
            out.append(("sign", photo))
    return out


def time_tokenize(tok: VisualTokenizer, paths: list[Path], ocr, rounds: int) -> tuple[list[float], int, float]:
    """Wall-clock photos/s per round, OCR count, and the best round's CPU milliseconds per photo (all
    threads of this process): on a shared machine the CPU time says what an idle one would do."""
    rates, ocr_runs, cpu_ms = [], 0, float("inf")
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        docs = tok.tokenize([Image.open(p) for p in paths], ocr=ocr)
        rates.append(len(paths) / (time.perf_counter() - t0))
        cpu_ms = min(cpu_ms, (time.process_time() - c0) * 1000 / len(paths))
        ocr_runs = sum(d.ocr_ran for d in docs)
    return rates, ocr_runs, cpu_ms


def stage_breakdown(tok: VisualTokenizer, paths: list[Path]) -> None:
    """Milliseconds per photo of each stage, run one after another on the same batch."""
    from model.visual.classifier import preprocess
    from model.visual.colours import dominant_colours

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1000 / len(paths)

    works, t_decode = timed(lambda: [_working_copy(Image.open(p)) for p in paths])
    pre, t_pre = timed(lambda: [preprocess(w) for w in works])
    _, t_col = timed(lambda: [dominant_colours(w) for w in works])
    _, t_gate = timed(lambda: [text_stroke_score(w) for w in works])
    _, t_cls = timed(lambda: tok.classifier.predict(np.concatenate([x for x, _ in pre])))
    print(f"per photo: decode+reduce {t_decode:.1f} ms, classifier input {t_pre:.1f} ms, colours {t_col:.1f} ms, "
          f"text gate {t_gate:.1f} ms, classifier {t_cls:.1f} ms")


def gate_report(photos: list[Path], texts: list[tuple[str, Image.Image]]) -> None:
    rows = []
    for p in photos:
        with Image.open(p) as im:
            work = _working_copy(im)
        rows.append(("photo", p.name, work))
    rows += [(kind, kind, _working_copy(img)) for kind, img in texts]
    tp = fp = fn = 0
    misses, false_alarms = [], []
    t_gate = 0.0
    for kind, name, work in rows:
        probs = image_class_probabilities(work)
        t0 = time.perf_counter()
        fired = likely_has_text(work, probs)
        t_gate += time.perf_counter() - t0
        has_text = kind != "photo"
        detail = f"{name} (stroke {text_stroke_score(work):.3f}, text-class mass {text_class_mass(probs):.2f})"
        if fired and has_text:
            tp += 1
        elif fired:
            fp += 1
            false_alarms.append(detail)
        elif has_text:
            fn += 1
            misses.append(f"{kind}: {detail}")
    n_text = sum(1 for k, _, _ in rows if k != "photo")
    precision = tp / max(tp + fp, 1)
    recall = tp / max(n_text, 1)
    print(f"\nOCR gate on {len(photos)} photos + {n_text} rendered text images:")
    print(f"  fires on {tp}/{n_text} text images (recall {recall:.2f}) and {fp}/{len(photos)} photos; "
          f"precision {precision:.2f}; {t_gate / len(rows) * 1000:.1f} ms per image")
    for line in false_alarms:
        print(f"  false alarm: {line}")
    sample = [img for _, img in texts[::4]]
    t0 = time.perf_counter()
    n_words = sum(len(ocr_image(img)) for img in sample)
    print(f"  OCR where it runs: {(time.perf_counter() - t0) / len(sample):.2f} s per text image "
          f"({len(sample)} images, {n_words / len(sample):.0f} words each on average)")
    for line in misses:
        print(f"  missed: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=None, help="folder of photos (searched recursively)")
    ap.add_argument("--n", type=int, default=64, help="photos per timed batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--show", type=int, default=12, help="print the docs of this many photos")
    ap.add_argument("--no-gate", action="store_true", help="skip the OCR-gate precision/recall part")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be >= 1")

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="visual-bench-") as tmp:
        tmp_dir = Path(tmp)
        if args.photos is not None:
            if not args.photos.is_dir():
                ap.error(f"--photos {args.photos}: not a folder")
            sources = find_images(args.photos, args.n)
            if not sources:
                ap.error(f"--photos {args.photos}: no images of at least 600 px found")
            unique = prepare_photos(sources, tmp_dir)
            paths = [unique[i % len(unique)] for i in range(args.n)]  # repeat a small set to fill the batch
            origin = f"{len(paths)} images ({len(unique)} distinct photos) from {args.photos}"
        else:
            paths = synthetic_photos(args.n, tmp_dir)
            origin = f"{len(paths)} synthetic scenes (pass --photos for real ones)"
        print(f"images: {origin}, re-encoded as {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG (q=88)")
        import torch

        print(f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
              f"load average before: {os.getloadavg()[0]:.1f}")

        t0 = time.perf_counter()
        # The bundled checkpoint's reading of photos (scene words, entry-level names; $METAEMBED_SCENE and
        # $METAEMBED_ENTRY_NAMES override them), built as the app builds it.
        cfg = MetaEmbedConfig.load(DEFAULT_CHECKPOINT)
        tok = LazyFrontEnd(cfg.front_end, scene_words=cfg.scene_words, entry_names=cfg.reads_entry_names()).tokenizer()
        tok.tokenize([Image.open(paths[0])], ocr=False)
        print(f"classifier + vocab load and first call: {time.perf_counter() - t0:.1f} s")

        for overlap in (False, True):
            tok.overlap = overlap
            rates, _, cpu_ms = time_tokenize(tok, paths, False, args.rounds)
            print(f"tokenize(ocr=False), batch of {len(paths)}, decode included, overlap={overlap}: "
                  f"best {max(rates):.1f} photos/s, median {statistics.median(rates):.1f} "
                  f"(rounds: {', '.join(f'{r:.1f}' for r in rates)}); CPU {cpu_ms:.0f} ms/photo "
                  f"= {os.cpu_count() * 1000 / cpu_ms:.0f} photos/s if all {os.cpu_count()} cores were ours")
        tok.overlap = False
        rates, ocr_runs, cpu_ms = time_tokenize(tok, paths, "auto", args.rounds)
        print(f"tokenize(ocr='auto'): best {max(rates):.1f} photos/s, median {statistics.median(rates):.1f}; "
              f"CPU {cpu_ms:.0f} ms/photo; OCR ran on {ocr_runs}/{len(paths)}")
        stage_breakdown(tok, paths)
        print(f"load average after: {os.getloadavg()[0]:.1f}")

        if args.show:
            docs = tok.tokenize([Image.open(p) for p in paths[: args.show]], ocr="auto")
            names = sources if args.photos is not None else paths
            print("\nsample docs:")
            for src, doc in zip(names[: args.show], docs, strict=False):
                print(f"  {Path(src).name}: {doc.text}")

        if not args.no_gate:
            distinct = list(dict.fromkeys(paths))
            gate_report(distinct, text_images(distinct))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
