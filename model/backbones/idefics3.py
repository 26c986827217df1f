"""Idefics3 / SmolVLM: the processor's chat template, image tiles + a global view, 1-D positions.

An image is resized, cut into a grid of tiles plus one downscaled global view; each view becomes
`image_seq_len` `<image>` tokens after the connector's pixel shuffle, preceded by `<row_r_col_c>` or
`<global-img>`. The text model is a Llama, so positions are plain 1-D counts over the unpadded tokens.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from .base import Parsed
from .image_threads import ParallelImageProcessor
from .vlm import VLMBackbone

IMAGE, FAKE, GLOBAL, END = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
_TILE = re.compile(r"<row_(\d+)_col_(\d+)>")


class Idefics3Backbone(VLMBackbone):
    model_types = ("idefics3",)
    # Attention + MLP projections of the text model only: the SigLIP tower (`model.vision_model`) uses the
    # same q/k/v_proj names, so the pattern is anchored on `text_model`.
    default_lora_targets = (
        r".*text_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )

    def __init__(self, model: nn.Module, processor, family: str = "idefics3", max_length: int = 256):
        super().__init__(model, processor.tokenizer, family=family, max_length=max_length)
        # Prepared in threads (image_threads.py): 17 views of a 2048 px upscale cost ~0.3 s of CPU per photo.
        processor.image_processor = ParallelImageProcessor(processor.image_processor)
        self.processor = processor
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in (IMAGE, FAKE, GLOBAL) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer of this Idefics3 backbone lacks the special tokens {missing}")
        if processor.image_seq_len != model.image_seq_len:
            raise ValueError(f"the processor expands an image view to {processor.image_seq_len} tokens but the "
                             f"model produces {model.image_seq_len}: processor and model do not belong together")
        self.reserved_strings = [IMAGE, FAKE, GLOBAL, END]

    @classmethod
    def load_processing(cls, model_id: str, revision: str | None) -> tuple:
        from transformers import AutoProcessor

        return (AutoProcessor.from_pretrained(model_id, revision=revision),)

    @property
    def language_model(self) -> nn.Module:
        return self.model.text_model

    def prompt(self, item: Parsed) -> str:
        content = ([{"type": "image"}] if item.image is not None else []) + (
            [{"type": "text", "text": item.text}] if item.text is not None else [])
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
        # Idefics3's own turn format, for a processor saved without a chat template.
        return f"User:{IMAGE if item.image is not None else ''}{item.text or ''}{END}\nAssistant:"

    def encode_items(self, items: list[Parsed]) -> dict:
        prompts = [self.prompt(p) for p in items]
        has_image = any(p.image is not None for p in items)
        images = [[p.image] if p.image is not None else [] for p in items] if has_image else None
        enc = self.processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if has_image:
            batch["pixel_values"] = enc["pixel_values"]
            batch["pixel_attention_mask"] = enc["pixel_attention_mask"]
        return batch

    def image_features(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        if "pixel_values" not in batch:
            return None
        # Rows without an image carry all-zero padding views, which get_image_features drops.
        out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(device),
                                            pixel_attention_mask=batch["pixel_attention_mask"].to(device),
                                            return_dict=True)
        return torch.cat(list(out.pooler_output), dim=0)

    def position_ids(self, ids: torch.Tensor, mask: torch.Tensor, batch: dict) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    def image_regions(self, ids: list[int], tokens: list[str], image_index: int, batch: dict) -> list[dict]:
        # Each run of <image> tokens is one view; the tag token before the run says which part it shows.
        runs, start = [], None
        for i, t in enumerate(ids + [-1]):
            if t == self.image_token_id and start is None:
                start = i
            elif t != self.image_token_id and start is not None:
                runs.append((start, i))
                start = None
        tiles = []
        for s, e in runs:
            tag = tokens[s - 1].strip() if s > 0 else ""
            m = _TILE.fullmatch(tag)
            tiles.append((s, e, (int(m.group(1)), int(m.group(2))) if m else None))
        rows = max((t[2][0] for t in tiles if t[2]), default=1)
        cols = max((t[2][1] for t in tiles if t[2]), default=1)
        regions = []
        for s, e, rc in tiles:
            side = math.isqrt(e - s)
            grid = (side, side) if side * side == e - s else (1, e - s)
            if rc is None:
                box, kind = (0.0, 0.0, 1.0, 1.0), "global"
            else:
                r, c = rc
                box, kind = ((c - 1) / cols, (r - 1) / rows, c / cols, r / rows), "tile"
            regions.append({"span": (s, e), "grid": grid, "box": box, "kind": kind})
        return regions
