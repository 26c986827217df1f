"""A VLM's image processor run over slices of a batch in threads.

The stock PIL image processors are serial, and preparing photos can cost more than encoding them: SmolVLM's
upscales each photo to 2048 px and cuts 17 views of it, 295 ms of CPU per photo, against 25 ms of H200 time
(docs/benchmarks.md). PIL and numpy release the GIL while they resize and normalise, so slices of a batch
prepared in threads run side by side. Their outputs are joined as the processor would have returned the whole
batch: tensors and arrays concatenated on the batch dimension (Idefics3's views, heights and widths padded
with zeros, as its processor pads them), lists chained. Every slice holds a photo (a processor fails on rows
without one). A test checks the joined output equals the serial call's.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..config import image_threads


class ParallelImageProcessor:
    """Wraps an image processor; calls with `images` of at least 4 items are split over `threads` threads,
    at least 2 items and one photo each. Every other attribute is the wrapped processor's."""

    def __init__(self, inner, threads: int | None = None):
        self.inner = inner
        self.threads = image_threads() if threads is None else max(1, threads)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (e.g. while copying): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, images=None, *args, **kwargs):
        if images is None and "images" in kwargs:
            images = kwargs.pop("images")
        n = len(images) if isinstance(images, (list, tuple)) else 1
        if self.threads <= 1 or n < 4:
            return self.inner(images, *args, **kwargs)
        step = math.ceil(n / min(self.threads, n // 2))
        parts = _with_an_image_each([list(images[i : i + step]) for i in range(0, n, step)])
        if len(parts) == 1:
            return self.inner(images, *args, **kwargs)
        with ThreadPoolExecutor(len(parts), thread_name_prefix="image-processor") as pool:
            outs = list(pool.map(lambda part: self.inner(part, *args, **kwargs), parts))
        return type(outs[0])(data={key: _join([o[key] for o in outs]) for key in outs[0].keys()})


def _with_an_image_each(parts: list[list]) -> list[list]:
    """Slices of a batch of per-row image lists (Idefics3: `[[photo], [], ...]`), each holding an image: a
    processor fails on a slice of text-only rows, so such a slice joins the one before it (or after it)."""
    out: list[list] = []
    for part in parts:
        if out and (not _any_image(part) or not _any_image(out[-1])):
            out[-1] += part
        else:
            out.append(part)
    return out


def _any_image(part: list) -> bool:
    return any(not (isinstance(x, (list, tuple)) and len(x) == 0) for x in part)


def _join(values: list):
    first = values[0]
    if isinstance(first, (torch.Tensor, np.ndarray)):
        if first.ndim >= 3:
            # [batch, views, (channels,) height, width]: every slice padded at the end of each axis to the
            # batch's largest, with zeros, as the processor pads a whole batch (its pixel mask says 0 there).
            shape = tuple(max(v.shape[d] for v in values) for d in range(1, first.ndim))
            values = [_pad_to(v, shape) for v in values]
        return torch.cat(values) if isinstance(first, torch.Tensor) else np.concatenate(values)
    if isinstance(first, list):
        return [x for v in values for x in v]
    raise TypeError(f"cannot join image-processor outputs of type {type(first).__name__}")


def _pad_to(v, shape: tuple[int, ...]):
    if tuple(v.shape[1:]) == shape:
        return v
    if isinstance(v, torch.Tensor):
        out = torch.zeros((v.shape[0], *shape), dtype=v.dtype)
    else:
        out = np.zeros((v.shape[0], *shape), v.dtype)
    out[tuple(slice(0, n) for n in v.shape)] = v
    return out
