"""Decoder vision-language backbones (Qwen2-VL, Qwen2.5-VL, Idefics3/SmolVLM) behind the adapter interface.

Each item becomes a normal chat-formatted user turn (image and/or text); the meta tokens are spliced in at
the embedding level after the content. Sequences are LEFT padded, so the meta tokens are the last R
positions of every row, and the decoder's causal mask alone gives the MetaEmbed rule: content never sees
the meta tokens and meta token i sees the content plus meta tokens 0..i. Only the language model runs past
the embeddings (no LM head): we need its last-layer states, not logits.

Family specifics (prompt format, image features, position ids, image regions) live in `qwen2_vl.py` and
`idefics3.py`, subclasses of `VLMBackbone`; this module imports neither (the registry in `__init__.py` maps
family names to them).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .base import Backbone, BackboneOutput, Parsed


def unavailable(model_id: str, revision: str | None, err: Exception) -> ValueError:
    at = f" (revision {revision})" if revision else ""
    return ValueError(
        f"could not load {model_id!r}{at}: {err}. If it is not available offline: download it with "
        f"`hf download {model_id}` (formerly `huggingface-cli download {model_id}`) on a machine with internet, "
        "or pass a local folder holding config.json, the weights, the tokenizer and the image processor"
    )


def check_local(model_id: str) -> None:
    """A path-like id that does not exist is a typo, not a Hub id: say so before asking the Hub."""
    if model_id.startswith(("/", ".", "~")) and not Path(model_id).expanduser().exists():
        raise ValueError(f"backbone folder {model_id!r} does not exist")


class VLMBackbone(Backbone):
    """Shared machinery; subclasses supply the family's processing and image/position handling."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, tokenizer, family: str, max_length: int = 256):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.hidden_size = self.text_config.hidden_size
        self.image_token_id = int(model.config.image_token_id)
        pad = tokenizer.pad_token_id
        # Any ordinary id works as the meta placeholder: its embedding is replaced before the decoder runs.
        self.meta_token_id = pad if pad is not None and pad != self.image_token_id else 0
        # Strings that would be read as image placeholders if a user's text contained them.
        self.reserved_strings: list[str] = []

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_id: str, revision: str | None = None, family: str = "", max_length: int = 256,
             dtype: torch.dtype = torch.float32) -> VLMBackbone:
        """The adapter around `model_id`'s base model, its weights loaded in `dtype` (the dtype it will run in:
        loading in another and casting later would round the weights twice)."""
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        check_local(model_id)
        try:
            config = AutoConfig.from_pretrained(model_id, revision=revision)
        except (OSError, ValueError) as e:
            raise unavailable(model_id, revision, e) from e
        if config.model_type not in cls.model_types:
            raise ValueError(
                f"backbone {model_id!r} is a {config.model_type!r} model, but backbone family {family!r} "
                f"expects model_type {' or '.join(map(repr, cls.model_types))}; set `backbone` to match the model"
            )
        level = hf_logging.get_verbosity()
        # The load report would list the checkpoint's LM head as "unexpected"; we check what matters below.
        hf_logging.set_verbosity_error()
        try:
            parts = cls.load_processing(model_id, revision)
            # The base model (vision tower + language model), without the LM head we have no use for.
            model, info = AutoModel.from_pretrained(model_id, revision=revision, dtype=dtype,
                                                    attn_implementation="sdpa", output_loading_info=True)
        except OSError as e:
            raise unavailable(model_id, revision, e) from e
        finally:
            hf_logging.set_verbosity(level)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ValueError(f"backbone {model_id!r} lacks {len(missing)} weights of {type(model).__name__} "
                             f"(e.g. {missing[:3]}): the checkpoint does not match its config")
        return cls(model, *parts, family=family, max_length=max_length)

    @classmethod
    def load_processing(cls, model_id: str, revision: str | None) -> tuple:
        raise NotImplementedError

    # ---- family hooks -------------------------------------------------------------------------------
    @property
    def text_config(self):
        return self.model.config.text_config

    @property
    def language_model(self) -> nn.Module:
        raise NotImplementedError

    def encode_items(self, items: list[Parsed]) -> dict:
        """Tokenise + image-process: input_ids/attention_mask (left padded) and the family's image tensors."""
        raise NotImplementedError

    def image_features(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        """Vision tower output for every image placeholder of the batch, in order: [N, H] (None: no images)."""
        raise NotImplementedError

    def position_ids(self, ids: torch.Tensor, mask: torch.Tensor, batch: dict) -> torch.Tensor:
        """Position ids of the full sequence (content + meta placeholders), left padding ignored."""
        raise NotImplementedError

    def image_regions(self, ids: list[int], tokens: list[str], image_index: int, batch: dict) -> list[dict]:
        """Which content tokens show which part of the item's image (the batch's `image_index`-th image)."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def clip_text(self, text: str | None) -> str | None:
        """Drop image-placeholder strings and keep at most `max_length` tokens of a user text."""
        if text is None:
            return None
        for s in self.reserved_strings:
            text = text.replace(s, " ")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            text = self.tokenizer.decode(ids[: self.max_length])
        return text if text.strip() else None

    def prepare(self, items: list[Parsed], num_meta: int) -> dict:
        # The meta placeholders are appended in forward(), so a batch serves any number of meta tokens.
        items = [Parsed(image=p.image.convert("RGB") if p.image is not None else None, text=self.clip_text(p.text))
                 for p in items]
        for i, p in enumerate(items):
            if p.image is None and p.text is None:
                raise ValueError(f"item {i} has no content left once image placeholder strings are removed")
        batch = self.encode_items(items)
        tokens, extras, image_index = [], [], 0
        for row, mask, item in zip(batch["input_ids"], batch["attention_mask"], items):
            ids = row[mask.bool()].tolist()
            toks = self.tokenizer.batch_decode([[i] for i in ids])
            tokens.append(toks)
            regions = []
            if item.image is not None:
                regions = self.image_regions(ids, toks, image_index, batch)
                image_index += 1
            extras.append({"image_regions": regions, "image_size": item.image.size if item.image else None})
        batch.update(tokens=tokens, extras=extras, texts=[p.text for p in items])
        return batch

    def forward(self, batch: dict, meta: torch.Tensor, output_attention: bool = False) -> BackboneOutput:
        device = self.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        bsz, length = ids.shape
        num = meta.shape[0]

        content = self.input_embeddings()(ids)
        feats = self.image_features(batch, device)
        if feats is not None:
            slots = ids == self.image_token_id
            if int(slots.sum()) != feats.shape[0]:
                raise ValueError(f"{int(slots.sum())} image placeholder tokens but {feats.shape[0]} image features: "
                                 "the tokenizer does not match the image processor")
            content = content.masked_scatter(slots[..., None], feats.to(content.dtype))
        meta_in = meta.to(content.dtype).unsqueeze(0).expand(bsz, -1, -1)
        inputs = torch.cat([content, meta_in], dim=1)
        full_ids = torch.cat([ids, ids.new_full((bsz, num), self.meta_token_id)], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(bsz, num)], dim=1)
        positions = self.position_ids(full_ids, full_mask, batch)

        capture = _AttentionInputs(self.language_model.layers[-1].self_attn) if output_attention else None
        try:
            out = self.language_model(inputs_embeds=inputs, attention_mask=full_mask, position_ids=positions,
                                      use_cache=False)
        finally:
            if capture is not None:
                capture.remove()
        attention = None
        if capture is not None:
            attention = self._meta_attention(capture, full_mask, length, num)
        return BackboneOutput(meta=out.last_hidden_state[:, length:], attention=attention,
                              tokens=batch.get("tokens"), extras=batch.get("extras", []))

    def _meta_attention(self, capture: _AttentionInputs, mask: torch.Tensor, length: int,
                        num: int) -> torch.Tensor | None:
        """Head-averaged last-layer attention of each meta token over its item's content tokens: [B, R, L].

        Recomputed from the last layer's own q/k projections (LoRA included) and rotary embeddings, so the
        fast sdpa kernels stay on for the forward pass. Row b's first len(tokens[b]) columns are its content
        tokens (left padding removed); the rest are zero.
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, hidden, rope = capture.module, capture.hidden, capture.rope
        head_dim = getattr(attn, "head_dim", None)
        if hidden is None or rope is None or head_dim is None or hasattr(attn, "q_norm"):
            return None  # an attention layout this recomputation does not know
        bsz, total, _ = hidden.shape
        cos, sin = rope
        q = attn.q_proj(hidden[:, -num:]).view(bsz, num, -1, head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(bsz, total, -1, head_dim).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -num:], sin[:, -num:])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scale = getattr(attn, "scaling", head_dim**-0.5)
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale
        query_pos = total - num + torch.arange(num, device=mask.device)
        allowed = mask.bool()[:, None, :] & (torch.arange(total, device=mask.device)[None, :] <= query_pos[:, None])
        probs = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).mean(1)[:, :, :length]
        out = torch.zeros_like(probs)
        counts = mask[:, :length].sum(1).tolist()
        for b, n in enumerate(counts):
            out[b, :, :n] = probs[b, :, length - n:]
        return out


class _AttentionInputs:
    """Records what the last attention layer was called with (its normed input and rotary embeddings)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.hidden: torch.Tensor | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.rope = kwargs.get("position_embeddings")

    def remove(self) -> None:
        self._handle.remove()
