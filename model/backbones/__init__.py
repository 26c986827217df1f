"""Backbone adapters behind one interface (see base.py), picked by `MetaEmbedConfig.backbone`.

This package is the registry that maps family names to adapter classes. Imports run one way only: here ->
family modules (minilm.py, qwen2_vl.py, idefics3.py) -> shared code (vlm.py, base.py), so each module also
imports on its own. The modules import transformers only when a backbone is loaded, so registering every
family here costs a text-only run nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Backbone, BackboneOutput, Parsed, parse_items
from .idefics3 import Idefics3Backbone
from .minilm import TextEncoderBackbone
from .qwen2_vl import QwenVLBackbone
from .vlm import VLMBackbone

if TYPE_CHECKING:
    from ..config import MetaEmbedConfig

TEXT_FAMILIES = ("minilm", "bert")
# Each adapter checks the loaded model's `model_type` against its own `model_types`.
VLM_FAMILIES: dict[str, type[VLMBackbone]] = {
    "qwen2-vl": QwenVLBackbone,
    "qwen2.5-vl": QwenVLBackbone,
    "idefics3": Idefics3Backbone,
}
FRONT_ENDS = ("visual-tokenizer",)


class LazyFrontEnd:
    """Builds the visual tokenizer on first use, so text-only work never pays for loading it."""

    def __init__(self, name: str, scene_words: bool = False, entry_names: bool = False):
        if name not in FRONT_ENDS:
            raise ValueError(f"unknown front_end {name!r}; known: {list(FRONT_ENDS)}")
        self.name = name
        self.scene_words = scene_words  # the checkpoint's setting; $METAEMBED_SCENE overrides it for experiments
        self.entry_names = entry_names  # as the checkpoint reads it (MetaEmbedConfig.reads_entry_names)
        self._impl = None

    def tokenizer(self):
        """The visual tokenizer, built on first use ($METAEMBED_SCENE overriding the checkpoint's scene words)."""
        if self._impl is None:
            # Deferred: the visual tokenizer pulls in the image classifier (and its weights), OCR and the
            # face detector, which text-only runs never need.
            from ..config import env_switch
            from ..visual import VisualTokenizer
            from ..visual.tokenizer import SCENE_ENV

            override = env_switch(SCENE_ENV)
            self._impl = VisualTokenizer(scene=self.scene_words if override is None else override,
                                         entry_names=self.entry_names)
        return self._impl

    def tokenize(self, images):
        return self.tokenizer().tokenize(images)

    def classifier_setup(self) -> str | None:
        """How its classifier ran ("lite0, torch, bfloat16"), or None before it has read a picture."""
        return None if self._impl is None else self._impl.classifier.setup


def load_backbone(cfg: MetaEmbedConfig, dtype: torch.dtype = torch.float32) -> Backbone:
    """Build the adapter for `cfg` with the backbone's pretrained weights (a VLM's in `dtype`; the text
    encoders load in fp32 and are cast by the caller, which costs them nothing: they are small)."""
    if cfg.backbone in TEXT_FAMILIES:
        front = (LazyFrontEnd(cfg.front_end, scene_words=cfg.scene_words, entry_names=cfg.reads_entry_names())
                 if cfg.front_end else None)
        return TextEncoderBackbone.load(cfg.backbone_id, cfg.backbone_revision, front_end=front,
                                        max_length=cfg.max_length)
    if cfg.backbone in VLM_FAMILIES:
        if cfg.meta_attention != "full":
            raise ValueError(f"meta_attention={cfg.meta_attention!r} is implemented for text backbones only; "
                             f"{cfg.backbone} checkpoints use 'full'")
        return VLM_FAMILIES[cfg.backbone].load(cfg.backbone_id, cfg.backbone_revision, family=cfg.backbone,
                                               max_length=cfg.max_length, dtype=dtype)
    raise ValueError(
        f"unknown backbone family {cfg.backbone!r}; supported: {[*TEXT_FAMILIES, *VLM_FAMILIES]}"
    )


__all__ = ["Backbone", "BackboneOutput", "Parsed", "load_backbone", "parse_items"]
