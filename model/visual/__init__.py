"""Visual tokenizer: turns images into short text documents for the MetaEmbed text backbone.

Public names are imported on first access, so `model.visual.ocr` (used by PDF ingest) does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VisualTokenizer": "tokenizer",
    "VisualDoc": "tokenizer",
    "VisualToken": "tokenizer",
    "render_doc": "render",
    "image_class_probabilities": "tokenizer",
    "ImageNetVocab": "vocab",
    "load_vocab": "vocab",
    "ImageClassifier": "classifier",
    "dominant_colours": "colours",
    "OcrWord": "ocr",
    "ocr_image": "ocr",
    "likely_has_text": "ocr",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
