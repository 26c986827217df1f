"""The threaded image processor gives exactly what the stock serial call gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backbones.base import parse_items
from model.backbones.image_threads import (
    ParallelImageProcessor,
    _any_image,
    _join,
    _with_an_image_each,
)
from model.config import IMAGE_THREADS_ENV as THREADS_ENV
from model.config import image_threads

from . import test_vlm
from .test_vlm import FAMILIES, load, picture

backbone_dirs = test_vlm.backbone_dirs  # the tiny backbones' fixture (module scope: built once here)


def processor_of(backbone) -> ParallelImageProcessor:
    owner = backbone.processor if hasattr(backbone, "processor") else backbone
    assert isinstance(owner.image_processor, ParallelImageProcessor)
    return owner.image_processor


class Counting:
    """The wrapped processor, counting the images of each call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, images, *args, **kwargs):
        self.calls.append(len(images))
        return self.inner(images, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def assert_same(a, b) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = a[key], b[key]
        if torch.is_tensor(x):
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert torch.equal(x, y), key
        else:
            assert x == y, key


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_prepared_in_threads_equals_the_serial_one(family, backbone_dirs):
    backbone = load(family, backbone_dirs).backbone
    images = processor_of(backbone)
    # Sizes that give the slices different numbers of views / patches; text-only rows between photos, and
    # (second batch) a run of text-only rows that would make a slice without a photo.
    batches = [
        ["a", picture(60, 40, 1), "a red cat", (picture(30, 70, 2), "a dog"), picture(90, 90, 3), "green",
         picture(20, 50, 4), picture(120, 30, 5), {"image": picture(50, 50, 6)}],
        ["a cat", "a dog", "red", "blue", "green", picture(70, 20, 7), picture(40, 40, 8)],
    ]
    for n, raw in enumerate(batches):
        items = parse_items(raw)
        images.threads = 1
        serial = backbone.prepare(items, 4)
        images.threads = 3
        counting = images.inner = Counting(images.inner)
        try:
            threaded = backbone.prepare(items, 4)
        finally:
            images.inner = counting.inner
        if n == 0 or family == "idefics3":  # Qwen's processor sees the 2 photos alone: too few to split
            assert len(counting.calls) >= 2, "the batch was not split"
        assert_same(threaded, serial)


def test_small_batches_and_one_thread_call_the_processor_once():
    seen = []
    proc = ParallelImageProcessor(lambda images, **k: seen.append(len(images)) or {"x": [1] * len(images)}, threads=4)
    proc([1, 2, 3])
    proc.threads = 1
    proc(list(range(10)))
    assert seen == [3, 10]


def test_every_slice_holds_a_photo():
    photo = [object()]
    parts = _with_an_image_each([[[], []], [[], photo], [[], []], [photo, photo]])
    assert [len(p) for p in parts] == [6, 2] and all(_any_image(p) for p in parts)
    assert _with_an_image_each([[photo], [[]]]) == [[photo, []]]
    assert len(_with_an_image_each([["a", "b"], ["c", "d"]])) == 2  # plain images (Qwen) are photos


def test_views_heights_and_widths_are_padded_with_zeros_when_slices_differ():
    a, b = np.ones((2, 3, 1, 2, 4), np.float32), np.ones((1, 5, 1, 3, 2), np.float32)
    joined = _join([a, b])
    assert joined.shape == (3, 5, 1, 3, 4)
    assert joined.sum() == a.sum() + b.sum()
    assert joined[:2, :3, :, :2, :4].min() == 1 and joined[2, :5, :, :3, :2].min() == 1
    mask = _join([torch.ones(1, 2, 4, 4, dtype=torch.bool), torch.ones(1, 1, 4, 4, dtype=torch.bool)])
    assert mask.shape == (2, 2, 4, 4) and not mask[1, 1].any()
    assert _join([[1], [2, 3]]) == [1, 2, 3]
    with pytest.raises(TypeError, match="cannot join"):
        _join(["text", "more"])


def test_threads_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert image_threads() == 3 and ParallelImageProcessor(None).threads == 3
    monkeypatch.setenv(THREADS_ENV, "0")
    assert image_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        image_threads()
    monkeypatch.delenv(THREADS_ENV)
    assert 1 <= image_threads() <= 8
