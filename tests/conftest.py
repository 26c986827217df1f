"""Shared test setup: offline everywhere, quiet libraries, one MetaEmbed built per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_model():
    """Untrained MetaEmbed on the bundled MiniLM-L6 (text only), shared by read-only tests."""
    from model import MetaEmbed, MetaEmbedConfig

    return MetaEmbed.from_config(MetaEmbedConfig(name="test-text"), device="cpu")


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory):
    """An untrained MetaEmbed (MiniLM-L6 + visual tokenizer front-end) saved once per session."""
    from model import MetaEmbed, MetaEmbedConfig

    model = MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer", name="test-index"), device="cpu")
    return model.save_pretrained(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def test_model(test_checkpoint):
    """The saved test checkpoint loaded as the CLI loads it (from_pretrained: LoRA merged)."""
    from model import MetaEmbed

    return MetaEmbed.from_pretrained(test_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def other_checkpoint(test_checkpoint, tmp_path_factory):
    """A second checkpoint (same architecture, different weights) for mismatch tests."""
    from safetensors.torch import load_file, save_file

    from model.checkpoint import WEIGHTS_NAME
    from model.config import MetaEmbedConfig

    dst = tmp_path_factory.mktemp("other-checkpoint")
    state = load_file(str(test_checkpoint / WEIGHTS_NAME))
    state["query_meta"] = state["query_meta"] + 0.5
    save_file(state, str(dst / WEIGHTS_NAME))
    MetaEmbedConfig.load(test_checkpoint).save(dst)
    return dst
