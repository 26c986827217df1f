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
