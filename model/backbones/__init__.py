"""Backbone adapters behind one interface (see base.py), picked by `MetaEmbedConfig.backbone`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backbone, BackboneOutput, Parsed, parse_items

if TYPE_CHECKING:
    from ..config import MetaEmbedConfig

TEXT_FAMILIES = ("minilm", "bert")
VLM_FAMILIES = ("qwen2-vl", "qwen2.5-vl", "idefics3")
FRONT_ENDS = ("visual-tokenizer",)


class LazyFrontEnd:
    """Builds the visual tokenizer on first use, so text-only work never pays for loading it."""

    def __init__(self, name: str):
        if name not in FRONT_ENDS:
            raise ValueError(f"unknown front_end {name!r}; known: {list(FRONT_ENDS)}")
        self.name = name
        self._impl = None

    def tokenize(self, images):
        if self._impl is None:
            from ..visual import VisualTokenizer

            self._impl = VisualTokenizer()
        return self._impl.tokenize(images)


def load_backbone(cfg: MetaEmbedConfig) -> Backbone:
    """Build the adapter for `cfg` with the backbone's pretrained weights."""
    if cfg.backbone in TEXT_FAMILIES:
        from .minilm import TextEncoderBackbone

        front = LazyFrontEnd(cfg.front_end) if cfg.front_end else None
        return TextEncoderBackbone.load(cfg.backbone_id, cfg.backbone_revision, front_end=front,
                                        max_length=cfg.max_length)
    if cfg.backbone in VLM_FAMILIES:
        from .vlm import load_vlm

        if cfg.meta_attention != "full":
            raise ValueError(f"meta_attention={cfg.meta_attention!r} is implemented for text backbones only; "
                             f"{cfg.backbone} checkpoints use 'full'")
        return load_vlm(cfg)
    raise ValueError(
        f"unknown backbone family {cfg.backbone!r}; supported: {list(TEXT_FAMILIES + VLM_FAMILIES)}"
    )


__all__ = ["Backbone", "BackboneOutput", "Parsed", "load_backbone", "parse_items"]
