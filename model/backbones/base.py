"""The one small interface every backbone adapter implements.

An adapter turns raw inputs (text, PIL images, image+text pairs) into the backbone's input, appends the
meta tokens after the content, runs the backbone and returns the last-layer states at the meta positions.
Attention rules (checked by the tests): content never attends to meta tokens, and meta token i attends to
all content plus meta tokens 0..i, so the first r outputs do not depend on how many meta tokens ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

Content = Any  # str | PIL.Image.Image | tuple[PIL.Image.Image, str] | dict(image=..., text=...)


@dataclass
class Parsed:
    """One input item, normalised: an optional image and an optional text."""

    image: Image.Image | None = None
    text: str | None = None


def parse_items(items: list[Content], what: str = "input") -> list[Parsed]:
    """Validate and normalise a batch; raises ValueError naming the bad item."""
    if isinstance(items, (str, Image.Image, tuple, dict)):
        raise ValueError(f"{what} must be a list of items, got a single {type(items).__name__}; wrap it in [ ]")
    items = list(items)
    if not items:
        raise ValueError(f"empty {what} batch: pass at least one text or image")
    out = []
    for i, item in enumerate(items):
        image, text = None, None
        if isinstance(item, str):
            text = item
        elif isinstance(item, Image.Image):
            image = item
        elif isinstance(item, dict):
            image, text = item.get("image"), item.get("text")
        elif isinstance(item, tuple) and len(item) == 2:
            a, b = item
            image, text = (a, b) if isinstance(a, Image.Image) else (b, a)
        else:
            raise ValueError(
                f"{what} item {i} has unsupported type {type(item).__name__}: "
                "allowed are str, PIL.Image.Image, (image, text) or {'image': ..., 'text': ...}"
            )
        if image is not None and not isinstance(image, Image.Image):
            raise ValueError(f"{what} item {i}: image must be a PIL.Image.Image, got {type(image).__name__}")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{what} item {i}: text must be a str, got {type(text).__name__}")
        if text is not None and not text.strip():
            text = None
        if image is None and text is None:
            raise ValueError(f"{what} item {i} is empty: give a non-empty text or an image")
        out.append(Parsed(image=image, text=text))
    return out


@dataclass
class BackboneOutput:
    meta: torch.Tensor | None  # [B, R, H] last-layer states at the meta positions (None: not computed)
    attention: torch.Tensor | None = None  # [B, R, L] last-layer attention of each meta token over content
    tokens: list[list[str]] | None = None  # the content tokens each row of `attention` refers to
    extras: list[dict] = field(default_factory=list)  # per item: front-end details (e.g. visual tokens)
    # Granular meta tokens only: the content's last-layer states [B, L, H] and each meta token's span [B, R, L].
    content: torch.Tensor | None = None
    span: torch.Tensor | None = None


class Backbone(nn.Module):
    """Adapter base class. Subclasses set `family`, `hidden_size` and `default_lora_targets`."""

    family: ClassVar[str] = ""
    default_lora_targets: ClassVar[str | list[str]] = []
    hidden_size: int
    # Room for embeddings of the meta tokens: adapters that cap the content length leave this many positions.
    max_meta_tokens: int = 64
    # Whether fp32 weights may encode under bf16 autocast on a CPU with native bf16 (MetaEmbed's default there);
    # set only where measured.
    cpu_autocast: ClassVar[bool] = False

    def prepare(self, items: list[Parsed], num_meta: int) -> dict:
        """CPU-side preprocessing (tokenise, image processing) of one batch."""
        raise NotImplementedError

    def forward(self, batch: dict, meta: torch.Tensor, output_attention: bool = False) -> BackboneOutput:
        """Run the backbone with `meta` ([R, H] embeddings) appended after each item's content."""
        raise NotImplementedError

    def meta_init(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial meta-token embeddings [num, H]: the mean input embedding plus noise at the embedding table's own
        per-coordinate spread, so each meta token starts distinct and within the range the backbone expects."""
        emb = self.input_embeddings().weight.detach().float()
        center = emb.mean(0)
        scale = emb.std().item()
        # The noise is drawn on the CPU (the seeded generator's device, so a seed gives the same tokens on any
        # device) and joins the embeddings wherever the backbone was built (a GPU, for one built there).
        noise = torch.randn(num, emb.shape[1], generator=generator) * scale
        return center + noise.to(center.device)

    def input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    def set_gradient_checkpointing(self, enabled: bool) -> int:
        """Switch activation (gradient) checkpointing of the backbone's transformers model (`self.model`) on or off:
        each layer keeps only its input in the forward pass and runs again in the backward pass, so training holds
        far fewer activations for about a third more compute. Returns how many modules now checkpoint.

        Non-reentrant checkpointing, the kind that needs no input to require grad: transformers' enable call also
        hooks every input embedding (the vision tower's patch embedding included) to make its output require grad,
        which the reentrant kind needs, and those hooks are removed again. Kept, they would make autograd record
        the whole frozen vision tower and run its backward pass, with no trainable parameter in it."""
        model = getattr(self, "model", None)
        if not hasattr(model, "gradient_checkpointing_disable"):
            raise ValueError(f"{type(self).__name__} has no transformers model whose layers could be checkpointed")
        # transformers >= 5.2x calls it activation checkpointing; the old name stays as a deprecated alias.
        if enabled:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        else:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
        model.disable_input_require_grads()
        return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [B, Lq, Lk] -> additive float mask [B, 1, Lq, Lk] (0 where allowed)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
