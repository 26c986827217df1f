"""Word-level OCR over RapidOCR (PP-OCRv4 ONNX models shipped inside the rapidocr-onnxruntime wheel).

RapidOCR detects and recognises text *lines*; search wants *words*, so each line is split into words whose
boxes are proportional sub-boxes of the line box (by character count). Boxes are normalised to 0..1 of the
input image so callers never need the pixel size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import to_rgb

# Larger inputs only slow detection down (RapidOCR's detector upsamples to >= 736 px on the short side
# but never shrinks), while text that matters for search stays readable at this size.
DEFAULT_MAX_SIDE = 1600
DEFAULT_MIN_SCORE = 0.5
# A blank column run at least this fraction of the line-box height is a word space; letter gaps are
# narrower (measured on DejaVu Sans renders: letter gaps <= 0.2, spaces >= 0.4 of the box height).
_SPACE_GAP_FRACTION = 0.3


@dataclass(frozen=True)
class OcrWord:
    """One recognised word. `box` is (x0, y0, x1, y1) normalised to 0..1 of the image."""

    text: str
    box: tuple[float, float, float, float]
    score: float


_engine = None
_engine_lock = threading.Lock()
# RapidOCR.__call__ mutates engine attributes (thresholds) per call, so calls are serialised.
_call_lock = threading.Lock()


def _get_engine():
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                from rapidocr_onnxruntime import RapidOCR

                _engine = RapidOCR()
    return _engine


def _to_bgr_array(img: Image.Image, max_side: int) -> tuple[np.ndarray, float]:
    """RGB-composite (alpha onto white), shrink so the longer side is <= max_side; returns BGR + scale."""
    img = to_rgb(img)
    scale = 1.0
    longest = max(img.size)
    if longest > max_side:
        scale = max_side / longest
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    arr = np.asarray(img)[:, :, ::-1]
    return np.ascontiguousarray(arr), scale


def split_line(text: str, box: tuple[float, float, float, float], score: float) -> list[OcrWord]:
    """Split one recognised line into words with sub-boxes proportional to their character positions.

    A line taller than wide (vertical text) is split along y instead of x.
    """
    x0, y0, x1, y1 = box
    n = len(text)
    if n == 0:
        return []
    vertical = (y1 - y0) > 1.5 * (x1 - x0) and n > 1
    words: list[OcrWord] = []
    pos = 0
    for token in text.split(" "):
        start, end = pos, pos + len(token)
        pos = end + 1
        if not token.strip():
            continue
        a, b = start / n, end / n
        if vertical:
            sub = (x0, y0 + a * (y1 - y0), x1, y0 + b * (y1 - y0))
        else:
            sub = (x0 + a * (x1 - x0), y0, x0 + b * (x1 - x0), y1)
        words.append(OcrWord(text=token.strip(), box=tuple(float(v) for v in sub), score=score))
    return words


def _ink_gaps(grey: np.ndarray, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Blank column runs inside a text-line box that are wide enough to be word spaces (pixel coords).

    The recogniser (a Chinese/English PP-OCR model) often drops spaces between Latin words; the ink profile
    of the line crop recovers them: letter gaps are narrow, spaces are about a third of the line height.
    """
    x0, y0, x1, y1 = box
    crop = grey[y0:y1, x0:x1]
    if crop.size == 0 or crop.shape[1] < 4:
        return []
    background = float(np.median(crop))
    contrast = float(np.abs(crop - background).max())
    if contrast < 20:
        return []
    ink = np.abs(crop - background) > max(20.0, 0.35 * contrast)
    blank = ink.sum(axis=0) == 0
    min_gap = max(3, int(round(_SPACE_GAP_FRACTION * (y1 - y0))))
    gaps: list[tuple[int, int]] = []
    run_start = None
    for col, is_blank in enumerate(blank.tolist() + [False]):
        if is_blank and run_start is None:
            run_start = col
        elif not is_blank and run_start is not None:
            if col - run_start >= min_gap and run_start > 0 and col < len(blank):
                gaps.append((x0 + run_start, x0 + col))
            run_start = None
    return gaps


def _words_from_chars(
    chars: list[str],
    char_boxes: list[tuple[float, float]],
    gaps: list[tuple[int, int]],
) -> list[tuple[str, float, float]]:
    """Group recognised characters into words: break at recognised spaces and at wide ink gaps.

    `char_boxes` are the (x0, x1) pixel extents the recogniser's CTC columns give each character.
    Returns (word, x0, x1) in pixels.
    """
    gap_mids = [0.5 * (a + b) for a, b in gaps]
    words: list[tuple[str, float, float]] = []
    current: list[str] = []
    cx0 = cx1 = 0.0
    prev_centre = None
    for ch, (bx0, bx1) in zip(chars, char_boxes, strict=True):
        centre = 0.5 * (bx0 + bx1)
        is_space = not ch.strip()
        gap_between = prev_centre is not None and any(prev_centre < m < centre for m in gap_mids)
        if (is_space or gap_between) and current:
            words.append(("".join(current), cx0, cx1))
            current = []
        prev_centre = centre
        if is_space:
            continue
        if not current:
            cx0, cx1 = bx0, bx1
        current.append(ch)
        cx0, cx1 = min(cx0, bx0), max(cx1, bx1)
    if current:
        words.append(("".join(current), cx0, cx1))
    return words


def ocr_image(
    img: Image.Image, *, min_score: float = DEFAULT_MIN_SCORE, max_side: int = DEFAULT_MAX_SIDE
) -> list[OcrWord]:
    """Recognise the words in `img`, in reading order (top-to-bottom, left-to-right lines).

    Lines whose recognition score is below `min_score` are dropped. Returns [] when no text is found.
    """
    if not isinstance(img, Image.Image):
        raise ValueError(f"ocr_image: img must be a PIL.Image.Image, got {type(img).__name__}")
    if max_side < 32:
        raise ValueError(f"ocr_image: max_side must be >= 32, got {max_side}")
    if img.width < 2 or img.height < 2:
        return []
    arr, _ = _to_bgr_array(img, max_side)
    height, width = arr.shape[:2]
    engine = _get_engine()
    with _call_lock:
        result, _ = engine(arr, text_score=min_score, return_word_box=True)
    if not result:
        return []
    grey = arr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
    words: list[OcrWord] = []
    for item in result:
        quad, text, score = item[0], str(item[1]), float(item[2])
        pts = np.asarray(quad, dtype=np.float32).reshape(-1, 2)
        lx0, ly0 = float(pts[:, 0].min()), float(pts[:, 1].min())
        lx1, ly1 = float(pts[:, 0].max()), float(pts[:, 1].max())
        norm_line = (lx0 / width, ly0 / height, lx1 / width, ly1 / height)
        char_quads = item[3] if len(item) > 4 else []
        chars = item[4] if len(item) > 4 else []
        horizontal = (lx1 - lx0) >= (ly1 - ly0) and _is_axis_aligned(pts)
        if not horizontal or len(char_quads) != len(chars) or not chars:
            words.extend(split_line(text, _clip_box(norm_line), score))
            continue
        char_x = [
            (float(min(p[0] for p in q)), float(max(p[0] for p in q))) for q in char_quads
        ]
        line_px = (int(lx0), int(ly0), int(np.ceil(lx1)), int(np.ceil(ly1)))
        gaps = _ink_gaps(grey, line_px)
        for word, wx0, wx1 in _words_from_chars(list(chars), char_x, gaps):
            box = _clip_box((wx0 / width, ly0 / height, wx1 / width, ly1 / height))
            words.append(OcrWord(text=word, box=box, score=score))
    return words


def _is_axis_aligned(pts: np.ndarray) -> bool:
    # Rotated lines would need a warped crop for the ink profile; fall back to proportional splitting.
    if len(pts) != 4:
        return False
    height = max(1.0, float(pts[:, 1].max() - pts[:, 1].min()))
    return abs(float(pts[0, 1] - pts[1, 1])) < 0.25 * height


def _clip_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in box)
    return (x0, y0, max(x0, x1), max(y0, y1))


# --- cheap gate: is OCR worth running on this image? -------------------------------------------------------

# ImageNet classes whose images nearly always carry text (index into the classifier's 1000 outputs, name).
TEXT_BEARING_CLASSES: tuple[tuple[int, str], ...] = (
    (446, "binder"), (454, "bookshop"), (478, "carton"), (480, "cash machine"), (487, "cellular telephone"),
    (527, "desktop computer"), (530, "digital clock"), (531, "digital watch"), (549, "envelope"),
    (590, "hand-held computer"), (620, "laptop"), (664, "monitor"), (681, "notebook"), (692, "packet"),
    (704, "parking meter"), (720, "pill bottle"), (769, "rule"), (781, "scoreboard"), (782, "screen"),
    (798, "slide rule"), (851, "television"), (860, "tobacco shop"), (865, "toyshop"), (886, "vending machine"),
    (916, "web site"), (917, "comic book"), (918, "crossword puzzle"), (919, "street sign"),
    (921, "book jacket"), (922, "menu"),
)  # fmt: skip
TEXT_CLASS_INDICES = np.array([i for i, _ in TEXT_BEARING_CLASSES], dtype=np.int64)

# Thresholds measured on 164 Debian wallpaper/photo images vs 92 text images (PIL-rendered documents, slides,
# UI text, captions on photos, and Debian handbook screenshots); see bench/visual.py --gate.
TEXT_MASS_THRESHOLD = 0.5
STROKE_THRESHOLD = 0.01
_STROKE_SIDE = 640
_STROKE_CELL = 16


def text_stroke_score(img: Image.Image) -> float:
    """Share of 16x16 cells (of a <=640 px greyscale copy) that sit in a horizontal run of three "text-like"
    cells: many strong horizontal intensity steps, pixels bunched at the cell's darkest/brightest values
    (ink on background, not photo texture) and enough contrast. About 0.1-0.5 on pages, < 0.01 on photos."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"text_stroke_score: expected a PIL.Image.Image, got {type(img).__name__}")
    grey = to_rgb(img).convert("L")
    if max(grey.size) > _STROKE_SIDE:
        scale = _STROKE_SIDE / max(grey.size)
        grey = grey.resize(
            (max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
            Image.Resampling.BILINEAR,
            reducing_gap=2.0,
        )
    g = np.asarray(grey, dtype=np.int16)
    cell = _STROKE_CELL
    rows, cols = g.shape[0] // cell, g.shape[1] // cell
    if rows < 1 or cols < 3:
        return 0.0
    g = g[: rows * cell, : cols * cell]
    steps = np.zeros(g.shape, dtype=bool)
    steps[:, :-1] = np.abs(np.diff(g, axis=1)) > 48
    transitions = steps.reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    cells = g.reshape(rows, cell, cols, cell).transpose(0, 2, 1, 3).reshape(rows, cols, cell * cell)
    lo = cells.min(axis=-1, keepdims=True)
    hi = cells.max(axis=-1, keepdims=True)
    spread = np.maximum(hi - lo, 1)
    extreme = (((cells - lo) < 0.2 * spread) | ((hi - cells) < 0.2 * spread)).mean(axis=-1)
    texty = (transitions >= 10) & (extreme >= 0.75) & (spread[..., 0] >= 80)
    runs = texty[:, :-2] & texty[:, 1:-1] & texty[:, 2:]
    return float(runs.mean())


def text_class_mass(class_probs: np.ndarray) -> float:
    """Probability the classifier puts on text-bearing ImageNet classes (web site, menu, street sign, ...)."""
    probs = np.asarray(class_probs)
    if probs.shape != (1000,):
        raise ValueError(f"text_class_mass: expected 1000 class probabilities, got shape {probs.shape}")
    return float(probs[TEXT_CLASS_INDICES].sum())


def text_gate(stroke_score: float, class_probs: np.ndarray | None = None) -> bool:
    """The OCR gate's rule on precomputed statistics (see likely_has_text)."""
    if class_probs is not None and text_class_mass(class_probs) >= TEXT_MASS_THRESHOLD:
        return True
    return stroke_score >= STROKE_THRESHOLD


def likely_has_text(img: Image.Image, class_probs: np.ndarray | None = None) -> bool:
    """Cheap OCR gate (a few ms): True when the stroke statistic or, if given, the classifier's mass on
    text-bearing classes says there is probably text worth recognising."""
    if class_probs is not None and text_gate(0.0, class_probs):
        return True
    return text_gate(text_stroke_score(img))
