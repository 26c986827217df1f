"""Visual tokenizer: turns images into short text documents for the MetaEmbed text backbone.

Submodules are imported on demand so that `model.visual.ocr` does not pull in torch.
"""
