"""MetaEmbed: multi-vector retrieval with flexible late interaction (arXiv 2509.18095)."""

from .config import MetaEmbedConfig
from .metaembed import MetaEmbed

__all__ = ["MetaEmbed", "MetaEmbedConfig"]
