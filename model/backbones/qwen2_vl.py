"""Qwen2-VL and Qwen2.5-VL: a ChatML user turn, dynamic-resolution image tokens, multimodal RoPE positions.

The prompt is assembled here from the tokenizer and the image processor rather than by `AutoProcessor`:
the Qwen2-VL processor also builds a video processor, which needs torchvision, and our CPU install has
none. The format is Qwen's fixed ChatML, and the image expands to one `<|image_pad|>` per merged patch
(grid_t * grid_h * grid_w / merge_size**2), exactly as the Qwen processor does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import env_switch
from .base import Parsed
from .image_threads import ParallelImageProcessor
from .qwen_vision_attention import GroupedVisionAttention
from .vlm import VLMBackbone

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Set to 0 to keep transformers' stock vision attention (one sdpa call per window / image) in every Qwen backbone.
GROUPED_ATTENTION_ENV = "METAEMBED_GROUPED_VISION_ATTENTION"


class QwenVLBackbone(VLMBackbone):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    # Attention + MLP projections of the language model only: the vision tower's blocks (`model.visual`,
    # whose Qwen2.5 MLP also has gate/up/down_proj) stay frozen.
    default_lora_targets = (
        r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )
    # Cap on visual tokens per image: the stock processors allow up to 16k for a large photo.
    max_image_tokens: int = 1024

    def __init__(self, model: nn.Module, tokenizer, image_processor, family: str = "qwen2-vl", max_length: int = 256,
                 grouped_vision_attention: bool | None = None):
        super().__init__(model, tokenizer, family=family, max_length=max_length)
        # Prepared in threads (image_threads.py): serial PIL work would keep a GPU waiting.
        self.image_processor = ParallelImageProcessor(image_processor)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IM_START, IM_END, VISION_START, IMAGE_PAD, VISION_END) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer of this Qwen-VL backbone lacks the special tokens {missing}")
        if vocab[IMAGE_PAD] != self.image_token_id:
            raise ValueError(f"tokenizer id of {IMAGE_PAD} ({vocab[IMAGE_PAD]}) differs from the model's "
                             f"image_token_id ({self.image_token_id}): tokenizer and model do not belong together")
        self.reserved_strings = [VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>", IM_START, IM_END]
        self.merge = int(model.config.vision_config.spatial_merge_size)
        patch = int(model.config.vision_config.patch_size)
        size = image_processor.size
        # smart_resize budget in pixels (shortest_edge/longest_edge are min/max pixel counts for Qwen).
        self.min_pixels = int(size["shortest_edge"])
        self.max_pixels = min(int(size["longest_edge"]), self.max_image_tokens * (patch * self.merge) ** 2)
        self._grouped: GroupedVisionAttention | None = None
        self._grouped_tried = False  # install once: a failed attempt logs its reason once
        if grouped_vision_attention is None:
            grouped_vision_attention = env_switch(GROUPED_ATTENTION_ENV) is not False  # unset: on
        self.set_grouped_vision_attention(grouped_vision_attention)

    def set_grouped_vision_attention(self, enabled: bool) -> bool:
        """Attend the vision tower's equal-length windows (and images) in one sdpa call per length instead of one
        per window (qwen_vision_attention.py): the same result, far fewer kernel launches on a GPU. On by default
        (off: `grouped_vision_attention=False` or the environment variable METAEMBED_GROUPED_VISION_ATTENTION=0).
        Returns whether it is on: it stays off where the installed transformers does not have the structure it
        relies on (logged once, at the first attempt)."""
        if enabled and not self._grouped_tried:
            self._grouped_tried = True
            self._grouped = GroupedVisionAttention.install(self.model)
        if self._grouped is not None:
            self._grouped.enabled = enabled
        return self.grouped_vision_attention

    @property
    def grouped_vision_attention(self) -> bool:
        """Whether the grouped vision attention is on (e.g. `model.set_attn_implementation` switches it off)."""
        return self._grouped is not None and self._grouped.enabled

    @classmethod
    def load_processing(cls, model_id: str, revision: str | None) -> tuple:
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        image_processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
        return tokenizer, image_processor

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def encode_items(self, items: list[Parsed]) -> dict:
        images = [p.image for p in items if p.image is not None]
        batch: dict = {}
        grids = iter(())
        if images:
            out = self.image_processor(images=images, return_tensors="pt",
                                       size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels})
            batch["pixel_values"] = out["pixel_values"]
            batch["image_grid_thw"] = out["image_grid_thw"]
            grids = iter(out["image_grid_thw"].tolist())
        prompts = []
        for p in items:
            content = ""
            if p.image is not None:
                t, h, w = next(grids)
                content += VISION_START + IMAGE_PAD * (t * h * w // self.merge**2) + VISION_END
            if p.text is not None:
                content += p.text
            prompts.append(f"{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n")
        enc = self.tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False,
                             return_tensors="pt")
        batch["input_ids"] = enc["input_ids"]
        batch["attention_mask"] = enc["attention_mask"]
        return batch

    def image_features(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        if "pixel_values" not in batch:
            return None
        out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(device),
                                            image_grid_thw=batch["image_grid_thw"].to(device), return_dict=True)
        return torch.cat(list(out.pooler_output), dim=0)

    def position_ids(self, ids: torch.Tensor, mask: torch.Tensor, batch: dict) -> torch.Tensor:
        # M-RoPE: image tokens get (t, h, w) positions, text (and the meta tokens, typed as text) run on after.
        grid = batch.get("image_grid_thw")
        positions, _ = self.model.get_rope_index(
            input_ids=ids, mm_token_type_ids=(ids == self.image_token_id).int(),
            image_grid_thw=grid.to(ids.device) if grid is not None else None, attention_mask=mask,
        )
        return positions

    def image_regions(self, ids: list[int], tokens: list[str], image_index: int, batch: dict) -> list[dict]:
        # One region: the whole (resized) image, its merged patches in row-major order.
        slots = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if not slots:
            return []
        _, h, w = batch["image_grid_thw"][image_index].tolist()
        return [{"span": (slots[0], slots[-1] + 1), "grid": (h // self.merge, w // self.merge),
                 "box": (0.0, 0.0, 1.0, 1.0), "kind": "image"}]
