"""MetaEmbed: learnable meta tokens appended to a backbone; their last-layer states are the embedding."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint
from .backbones import Backbone, load_backbone, parse_items
from .class_prior import class_texts, with_prior
from .config import GRANULAR, MetaEmbedConfig
from .device import cpu_has_native_bf16, run_dtype, target_device
from .readout import SpanReadout

SIDES = ("query", "candidate")


class MetaEmbed(nn.Module):
    """Multi-vector embedder: queries get `num_query_tokens` vectors, candidates `num_candidate_tokens`."""

    def __init__(self, config: MetaEmbedConfig, backbone: Backbone, seed: int = 0):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.cpu_autocast = False  # decided by _place (from_config / from_pretrained)
        self._class_vectors: torch.Tensor | None = None  # made on first use (class_vectors)
        gen = torch.Generator().manual_seed(seed)
        self.query_meta = nn.Parameter(backbone.meta_init(config.num_query_tokens, gen))
        self.candidate_meta = nn.Parameter(backbone.meta_init(config.num_candidate_tokens, gen))
        hidden = backbone.hidden_size
        # Granular meta tokens read their spans once more after the last layer (model/readout.py).
        self.readout = SpanReadout(hidden) if config.meta_attention in GRANULAR else None
        self.proj = nn.Linear(hidden, config.embed_dim, bias=config.embed_bias) if config.embed_dim else None
        if self.proj is not None:
            # A seeded random projection scaled by 1/sqrt(hidden): it roughly preserves inner products, so the
            # untrained model already ranks by the backbone's geometry (and seeds make it reproducible).
            with torch.no_grad():
                w = torch.randn(config.embed_dim, hidden, generator=gen) * hidden**-0.5
                self.proj.weight.copy_(w)
                if self.proj.bias is not None:
                    self.proj.bias.zero_()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: MetaEmbedConfig, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, seed: int = 0) -> MetaEmbed:
        """An untrained MetaEmbed on the config's backbone (pretrained backbone weights, fresh meta tokens)."""
        backbone = load_backbone(config, run_dtype(device, dtype))
        model = cls(config, backbone, seed=seed)
        if config.lora_r:
            model._add_lora()
        return model._place(device, dtype)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        merge_lora: bool = True) -> MetaEmbed:
        """Load a checkpoint folder, a Hub repo id, or (None) the bundled MetaEmbed-Mini."""
        folder = checkpoint.resolve(path_or_id, revision)
        config = MetaEmbedConfig.load(folder)
        state = checkpoint.load_weights(folder)
        backbone = load_backbone(config, run_dtype(device, dtype))
        model = cls(config, backbone)
        if config.lora_r:
            model._add_lora()
        model._load_trained(state, folder)
        if merge_lora and config.lora_r:
            model._merge_lora()
        model.checkpoint_path = str(folder)
        return model._place(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        # One metadata key: safetensors writes several in a random order per process, and the checkpoint id
        # is a hash of the file, so two keys made the same weights two different checkpoints half the time.
        checkpoint.save_weights(self.trained_state_dict(), directory,
                                metadata={"backbone": f"{self.config.backbone} {self.config.backbone_id}"})
        self.config.save(directory)
        return directory

    def _place(self, device, dtype) -> MetaEmbed:
        device = target_device(device)
        # Default on a CPU with native bf16 (AVX512-bf16, AMX), for backbones measured to allow it: fp32
        # weights, encoding under bf16 autocast (MiniLM: ~2.5x faster, vectors within 1e-5 cosine of fp32,
        # finer than their bf16 storage). Never fp16 on CPU. An explicit dtype is used as given.
        self.cpu_autocast = (dtype is None and device.type == "cpu" and self.backbone.cpu_autocast
                             and cpu_has_native_bf16())
        self.to(device=device, dtype=run_dtype(device, dtype))
        self.eval()
        return self

    # ---- LoRA ---------------------------------------------------------------------------------------
    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.config
        targets = cfg.lora_targets or self.backbone.default_lora_targets
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets)
        inject_adapter_in_model(lora, self.backbone)

    def _merge_lora(self) -> None:
        from peft.tuners.lora import LoraLayer

        for module in self.backbone.modules():
            if isinstance(module, LoraLayer) and not module.merged:
                module.merge()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What MetaEmbed training updates: meta tokens, readout, projection and LoRA weights (not the backbone)."""
        params = []
        for name, p in self.named_parameters():
            train = _is_trained(name, bool(self.config.lora_r))
            p.requires_grad_(train)
            if train:
                params.append(p)
        return params

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        lora = bool(self.config.lora_r)
        return {k: v for k, v in self.state_dict().items() if _is_trained(k, lora)}

    def _load_trained(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        own = self.trained_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {folder} does not fit backbone {self.config.backbone_id!r}: "
                f"{len(missing)} missing tensors (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]}); was it trained for another backbone or LoRA setting?"
            )
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"checkpoint {folder}: tensor {key} has shape {tuple(value.shape)} but this backbone "
                    f"needs {tuple(own[key].shape)}; the checkpoint was made for another backbone or size"
                )
        self.load_state_dict(state, strict=False)
        self._class_vectors = None  # made from the old weights

    # ---- embedding ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """D of the vectors: the projection's size, or the backbone's hidden size without one."""
        return self.config.embed_dim or self.backbone.hidden_size

    @property
    def device(self) -> torch.device:
        return self.query_meta.device

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast)

    def meta_tokens(self, side: str) -> nn.Parameter:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.query_meta if side == "query" else self.candidate_meta

    def num_tokens(self, side: str) -> int:
        return self.config.num_query_tokens if side == "query" else self.config.num_candidate_tokens

    def embed(self, batch: dict, side: str, num_tokens: int | None = None, output_attention: bool = False,
              meta_states: bool | None = None) -> tuple[torch.Tensor, object]:
        """Differentiable embedding of a prepared batch: ([B, R, D] L2-normalised, backbone output).

        meta_states: whether the backbone computes the meta tokens' states (the output's `meta`). None (the
        default): except for a span readout at its plain mean outside training, whose vectors are the same
        without them (and then skipping them saves 2-3x of a short text's work)."""
        meta = self.meta_tokens(side)
        total = meta.shape[0]
        num = total if num_tokens is None else num_tokens
        if not 1 <= num <= total:
            raise ValueError(f"num_tokens={num} is out of range for {side}s: allowed 1..{total}")
        if self.config.meta_attention in GRANULAR:
            batch = {**batch, "meta_levels": self.config.meta_levels(side), "meta_layout": self.config.meta_attention,
                     "meta_side": side}
        if meta_states is None:
            meta_states = torch.is_grad_enabled()  # training reads them (the readout's query weights and gate)
        # Without a readout, or with a trained one, the vectors need the meta states whatever was asked.
        span_mean = not meta_states and self.readout is not None and self.readout.is_span_mean()
        extra = {"meta_states": False} if span_mean else {}
        out = self.backbone(batch, meta[:num], output_attention=output_attention and self.readout is None, **extra)
        vecs = out.meta
        if span_mean:
            vecs, out.attention = self.readout.span_mean(out.content, out.span)
        elif self.readout is not None:
            vecs, out.attention = self.readout(out.meta, out.content, out.span)
        if self.proj is not None:
            vecs = self.proj(vecs.to(self.proj.weight.dtype))
        vecs = F.normalize(vecs.float(), dim=-1)
        if self.config.class_prior:
            vecs = with_prior(vecs, out.extras or [], self.class_vectors, self.config.class_prior)
        return vecs, out

    def class_vectors(self) -> torch.Tensor:
        """[1000, D] float32: each ImageNet class's words read as a candidate's first vector (the class prior's
        embeddings, model/class_prior.py); made once per model (~1 s on a CPU), in eval mode, and made again
        after new weights are loaded or training starts (within a training run they stay as first made)."""
        if self._class_vectors is None:
            modes = [(m, m.training) for m in self.modules()]
            nn.Module.train(self, False)  # no dropout in a table every later photo reads
            try:
                with torch.inference_mode():
                    vecs = self.encode(class_texts(self.reads_entry_names()), "candidate", batch_size=128,
                                       num_tokens=1)
            finally:
                for module, mode in modes:  # each module as it was (a trainer may keep some in eval mode)
                    module.training = mode
            with torch.inference_mode(False):
                self._class_vectors = vecs[:, 0].clone()  # a plain tensor: training may read it too
        return self._class_vectors

    def reads_entry_names(self) -> bool:
        """Whether this model's photo texts carry entry-level names: as its visual front end was built (the
        config, or $METAEMBED_ENTRY_NAMES when it loaded), so the class prior reads the same words even if the
        variable changes later."""
        front = getattr(self.backbone, "front_end", None)
        return front.entry_names if front is not None else self.config.reads_entry_names()

    def image_reader_setup(self) -> str | None:
        """How this model's visual tokenizer classified the pictures it read ("lite0, torch, bfloat16"; the CPU
        decides the runtime and the arithmetic), or None when it has read none or reads images otherwise (a VLM)."""
        front = getattr(self.backbone, "front_end", None)
        return front.classifier_setup() if front is not None else None

    def train(self, mode: bool = True) -> MetaEmbed:
        if mode:
            self._class_vectors = None  # the weights are about to change
        return super().train(mode)

    def prepare(self, items: list, side: str, num_tokens: int | None = None) -> dict:
        parsed = parse_items(items, what=side)
        return self.backbone.prepare(parsed, num_tokens or self.num_tokens(side))

    @torch.inference_mode()
    def encode(self, items: list, side: str, batch_size: int = 32, progress: bool = False,
               num_tokens: int | None = None, read_texts: list | None = None) -> torch.Tensor:
        """Encode a list of texts / PIL images / (image, text) pairs -> float32 CPU [B, R, D].
        read_texts: a list that receives, item by item, the text the model read (a photo's visual tokenizer
        words; None where a backbone reads pixels), e.g. for a baseline that must read the same text."""
        parse_items(items, what=side)  # validate everything before spending time on any batch
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        bar = tqdm(total=len(items), desc=f"encoding {side}s", unit="item", disable=not progress)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = self.prepare(chunk, side, num_tokens)
            if read_texts is not None:
                read_texts.extend(batch.get("texts") or [None] * len(chunk))
            with self._autocast():
                vecs, _ = self.embed(batch, side, num_tokens)
            out.append(vecs.float().cpu())
            bar.update(len(chunk))
        bar.close()
        return torch.cat(out)

    def encode_queries(self, items: list, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Queries -> float32 CPU tensor [B, R_q, D], rows L2-normalised."""
        return self.encode(items, "query", batch_size=batch_size, progress=progress)

    def encode_candidates(self, items: list, batch_size: int = 32, progress: bool = False,
                          read_texts: list | None = None) -> torch.Tensor:
        """Candidates (photos, pages, passages) -> float32 CPU tensor [B, R_c, D], rows L2-normalised
        (read_texts: see `encode`)."""
        return self.encode(items, "candidate", batch_size=batch_size, progress=progress, read_texts=read_texts)

    @torch.inference_mode()
    def inspect(self, item, side: str) -> dict:
        """One item's vectors plus what explains them: its content tokens, each meta vector's last-layer
        attention over those tokens, and the front-end's details (e.g. the visual tokens of a photo)."""
        batch = self.prepare([item], side)
        with self._autocast():
            vecs, out = self.embed(batch, side, output_attention=True)
        return {
            "vectors": vecs[0].float().cpu(),
            "tokens": out.tokens[0] if out.tokens else [],
            "attention": out.attention[0].cpu() if out.attention is not None else None,
            "text": batch.get("texts", [None])[0],
            "offsets": batch["offsets"][0].tolist() if "offsets" in batch else None,
            "extras": out.extras[0] if out.extras else {},
        }


def _is_trained(name: str, lora: bool) -> bool:
    if name in ("query_meta", "candidate_meta") or name.startswith(("proj.", "readout.")):
        return True
    return lora and "lora_" in name
