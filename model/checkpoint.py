"""Checkpoint folders: `metaembed_config.json` + `metaembed.safetensors` (what training produced).

The base backbone is not copied: the config pins it (`backbone_id` + `backbone_revision`), and only the
meta tokens, the projection and the LoRA weights are stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from .config import CONFIG_NAME, MetaEmbedConfig
from .files import atomic_path

if TYPE_CHECKING:
    from .metaembed import MetaEmbed

WEIGHTS_NAME = "metaembed.safetensors"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "metaembed-mini"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(path_or_id: str | os.PathLike | None, revision: str | None = None) -> Path:
    """A local checkpoint folder for `path_or_id`: the bundled default, a local folder, or a Hub repo."""
    if path_or_id is None:
        if not (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"the bundled MetaEmbed-Mini checkpoint is missing from {DEFAULT_CHECKPOINT}; "
                "rebuild it with `python -m model.recipes.mini.train` or pass a checkpoint folder or Hub id"
            )
        return DEFAULT_CHECKPOINT
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; a MetaEmbed checkpoint is a folder holding {CONFIG_NAME}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"checkpoint folder {path} has no {name}")
        return path
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise FileNotFoundError(f"checkpoint folder {text!r} does not exist (and it is not a Hub id owner/name)")
    return _from_hub(text, revision)


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*.md"]))
    except Exception as e:  # the Hub client raises many types (offline, 404, auth)
        raise ValueError(
            f"could not fetch MetaEmbed checkpoint {repo_id!r} from the Hugging Face Hub: {e}. "
            "Check the id and your connection, or pass a local checkpoint folder"
        ) from e


def save_weights(state: dict[str, torch.Tensor], directory: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint folder {directory} has no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


# The id ties an index's vectors to the checkpoint that made them: an index refuses a model with another id.
def checkpoint_id_of_folder(folder: str | os.PathLike) -> str:
    """Stable id of a checkpoint folder: config name + sha256 over its config and weights files."""
    folder = Path(folder)
    config = MetaEmbedConfig.load(folder)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint folder {folder} has no {name}")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"{config.name}-{digest.hexdigest()[:16]}"


def checkpoint_id(model: MetaEmbed) -> str:
    """The id of the checkpoint `model` was loaded from; for an unsaved model, a hash of its trained state."""
    folder = getattr(model, "checkpoint_path", None)
    if folder:
        return checkpoint_id_of_folder(folder)
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for key, tensor in sorted(model.trained_state_dict().items()):
        t = tensor.detach().float().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().tobytes())
    return f"{model.config.name}-unsaved-{digest.hexdigest()[:16]}"
