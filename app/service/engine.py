"""The loaded model as the app shares it: one checkpoint, its id, and a lock that puts visitors first.

`Engine` wraps a loaded MetaEmbed with the id that ties index vectors to it (an index refuses another
checkpoint's vectors) and a `ModelLock`: one model call at a time, interactive calls ahead of indexing.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from app.evaluation import load_quality
from app.search import Calibration, load_calibration
from model import MetaEmbed
from model.backbones import VLM_FAMILIES
from model.checkpoint import checkpoint_id

ENCODE_BATCH = 8
INDEX_CHUNK = 2  # items encoded per hold of the model lock while indexing


class ModelLock:
    """A lock with two doors: `urgent()` (a visitor waiting) goes before `background()` (indexing chunks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._urgent = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        with self._cond:
            self._urgent += 1
        try:
            self._lock.acquire()
        finally:
            with self._cond:
                self._urgent -= 1
                self._cond.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._urgent == 0)
        with self._lock:
            yield


@dataclass
class Engine:
    """A loaded model and the id that ties index vectors to it."""

    model: MetaEmbed
    checkpoint_id: str
    source: str  # what the user asked for: "bundled MetaEmbed-Mini", a folder or a Hub id
    # One model call at a time: the fast tokenizer is not safe to call from two threads at once ("Already
    # borrowed"), and concurrent forwards only thrash the shared CPU. Indexing takes it per small chunk
    # and yields to waiting interactive calls, so a visitor's query waits for at most one chunk.
    lock: ModelLock = field(default_factory=lambda: ModelLock(), repr=False)
    # The "no close match" flag (app.search.Calibration), from the checkpoint's calibration.json (None: searches
    # are never flagged).
    calibration: Calibration | None = field(default=None, repr=False)

    @functools.cached_property
    def quality(self) -> dict[str, dict]:
        """The checkpoint's own eval reports (its quality.json; {} when it has none), read once per engine:
        the Model and Scaling tabs draw them at every page load."""
        return load_quality(getattr(self.model, "checkpoint_path", None), self.checkpoint_id)

    @property
    def config(self):
        return self.model.config

    @property
    def presets(self) -> list[tuple[int, int]]:
        return list(self.model.config.presets)

    @property
    def num_query_vectors(self) -> int:
        return self.model.config.num_query_tokens

    @property
    def num_candidate_vectors(self) -> int:
        return self.model.config.num_candidate_tokens

    @property
    def dim(self) -> int:
        return self.model.dim

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "name": cfg.name, "source": self.source, "checkpoint_id": self.checkpoint_id,
            "backbone": f"{cfg.backbone} ({cfg.backbone_id})", "front_end": _images_read_by(cfg),
            "query_vectors": cfg.num_query_tokens, "candidate_vectors": cfg.num_candidate_tokens,
            "dim": self.dim, "presets": [list(p) for p in self.presets], "device": str(self.model.device),
        }

    def encode(self, items: list, side: str, num_tokens: int | None = None) -> torch.Tensor:
        with self.lock.urgent():
            return self.model.encode(items, side, batch_size=ENCODE_BATCH, num_tokens=num_tokens)

    def inspect(self, item, side: str) -> dict:
        with self.lock.urgent():
            return self.model.inspect(item, side)


def load_engine(source: str | None) -> Engine:
    """Load the bundled MetaEmbed-Mini (None), a checkpoint folder or a Hub id; errors say what to do."""
    text = (source or "").strip() or None
    model = MetaEmbed.from_pretrained(text)
    label = text or "bundled MetaEmbed-Mini"
    ckpt = checkpoint_id(model)
    calibration = load_calibration(getattr(model, "checkpoint_path", None), ckpt)
    return Engine(model=model, checkpoint_id=ckpt, source=label, calibration=calibration)


class LockedModel:
    """The model as app.indexing sees it, with every encode taking the engine's lock."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self.config = engine.model.config

    def encode_candidates(self, items: list, batch_size: int = ENCODE_BATCH, progress: bool = False) -> torch.Tensor:
        out = []
        for start in range(0, len(items), INDEX_CHUNK):
            with self._engine.lock.background():  # between chunks, waiting interactive calls go first
                out.append(self._engine.model.encode_candidates(items[start:start + INDEX_CHUNK],
                                                                 batch_size=INDEX_CHUNK))
        return torch.cat(out)


def _images_read_by(cfg) -> str:
    """What turns a photo into something the model reads: a text model's front-end, a VLM's own vision tower."""
    if cfg.front_end:
        return cfg.front_end
    if cfg.backbone in VLM_FAMILIES:
        return "its own vision tower"
    return "none (text only)"
