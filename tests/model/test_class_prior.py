"""model.class_prior: the classifier's belief (ConSE) mixed into a photo's first vector, and nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model import MetaEmbed, MetaEmbedConfig
from model.class_prior import TOP_CLASSES, class_texts, prior, with_prior
from tests.helpers import EXAMPLES


def test_config_checks_the_weight_and_the_front_end():
    assert MetaEmbedConfig(front_end="visual-tokenizer", class_prior=0.5).class_prior == 0.5
    with pytest.raises(ValueError, match=r"class_prior must be a weight in \[0, 1\]"):
        MetaEmbedConfig(front_end="visual-tokenizer", class_prior=1.5)
    with pytest.raises(ValueError, match="class_prior needs the visual-tokenizer front end"):
        MetaEmbedConfig(class_prior=0.5)


def test_entry_names_are_a_checked_setting_read_alike_by_photos_and_the_class_texts(monkeypatch):
    monkeypatch.delenv("METAEMBED_ENTRY_NAMES", raising=False)
    config = MetaEmbedConfig(front_end="visual-tokenizer", entry_names=True)
    assert config.reads_entry_names() and not MetaEmbedConfig().reads_entry_names()
    monkeypatch.setenv("METAEMBED_ENTRY_NAMES", "0")  # an evaluation run reading photos the old way
    assert not config.reads_entry_names()
    monkeypatch.setenv("METAEMBED_ENTRY_NAMES", "maybe")
    with pytest.raises(ValueError, match="METAEMBED_ENTRY_NAMES must be 0 or 1"):
        config.reads_entry_names()
    with pytest.raises(ValueError, match="entry_names must be true or false"):
        MetaEmbedConfig(front_end="visual-tokenizer", entry_names="yes")
    with pytest.raises(ValueError, match="entry_names needs the visual-tokenizer front end"):
        MetaEmbedConfig(entry_names=True)
    # A model reads the setting once, when its front end is built: photo texts and class texts agree after.
    monkeypatch.setenv("METAEMBED_ENTRY_NAMES", "1")
    model = MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer", meta_attention="phrases",
                                                  lora_r=None, embed_dim=None, num_query_tokens=4,
                                                  num_candidate_tokens=8, groups=[(1, 1), (2, 4), (4, 8)]),
                                  device="cpu")
    monkeypatch.setenv("METAEMBED_ENTRY_NAMES", "0")
    assert model.backbone.front_end.entry_names and model.reads_entry_names()
    drake = 97  # n01847000 in classifier order
    assert class_texts(entry_names=True)[drake].startswith("drake, duck, ")
    assert "duck" not in class_texts()[drake]


def test_only_the_first_vector_of_a_photo_row_moves():
    torch.manual_seed(0)
    vecs = F.normalize(torch.randn(3, 4, 8), dim=-1)
    table = F.normalize(torch.randn(5, 8), dim=-1)
    photo = SimpleNamespace(class_probs=((1, 0.6), (3, 0.2)))
    extras = [{}, {"visual": photo}, {"visual": SimpleNamespace(class_probs=())}]
    out = with_prior(vecs, extras, lambda: table, 0.5)
    expected_prior = F.normalize(0.75 * table[1] + 0.25 * table[3], dim=-1)  # renormalised over the pairs
    assert torch.allclose(prior(table, photo.class_probs), expected_prior, atol=1e-6)
    assert torch.allclose(out[1, 0], F.normalize(0.5 * vecs[1, 0] + 0.5 * expected_prior, dim=-1), atol=1e-6)
    assert torch.equal(out[1, 1:], vecs[1, 1:]) and torch.equal(out[0], vecs[0]) and torch.equal(out[2], vecs[2])
    # No photo row, or no weight: the class vectors are not even made.
    def never():
        raise AssertionError("class vectors made without a photo")
    assert torch.equal(with_prior(vecs, [{}, {}, {}], never, 0.5), vecs)
    assert torch.equal(with_prior(vecs, extras, never, 0.0), vecs)


def test_a_model_with_the_prior_reads_a_photo_with_its_classes_and_text_as_before():
    base_cfg = dict(front_end="visual-tokenizer", meta_attention="phrases", lora_r=None, embed_dim=None,
                    num_query_tokens=4, num_candidate_tokens=8, groups=[(1, 1), (2, 4), (4, 8)])
    plain = MetaEmbed.from_config(MetaEmbedConfig(**base_cfg), device="cpu", seed=3).eval()
    mixed = MetaEmbed.from_config(MetaEmbedConfig(**base_cfg, class_prior=0.5), device="cpu", seed=3).eval()
    photo = Image.open(EXAMPLES / "owl.jpg")
    a, b = plain.encode_candidates([photo, "an owl on a branch"]), mixed.encode_candidates([photo, "an owl on a branch"])
    assert torch.equal(a[1], b[1]) and torch.equal(a[0, 1:], b[0, 1:])  # text rows and the photo's parts: as before
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-3)
    table = mixed.class_vectors()
    texts = class_texts(mixed.reads_entry_names())
    assert table.shape == (len(texts), mixed.dim) and torch.allclose(table.norm(dim=-1), torch.ones(1000))
    # The same vectors as encoding the words (to bf16 autocast: the table is made in batches of 128).
    assert torch.allclose(table[:2], mixed.encode_candidates(texts[:2])[:, 0], atol=5e-3)
    doc = mixed.backbone.front_end.tokenize([photo])[0]
    assert len(doc.class_probs) == TOP_CLASSES and doc.class_probs[0][1] >= doc.class_probs[-1][1]
    expected = F.normalize(0.5 * a[0, 0] + 0.5 * prior(table, doc.class_probs), dim=-1)
    assert torch.allclose(b[0, 0], expected, atol=1e-3)
    # A picture with words of its own (an image-and-text query) keeps its words' first vector.
    pair = {"image": photo, "text": "at night"}
    assert torch.equal(mixed.encode_queries([pair]), plain.encode_queries([pair]))
    # New weights, or training, make the table again from them.
    mixed.train()
    assert mixed._class_vectors is None
    mixed.eval()
    # A photo as a query ("more like this") is read the same way.
    assert torch.allclose(mixed.encode_queries([photo])[0, 0], F.normalize(
        0.5 * plain.encode_queries([photo])[0, 0] + 0.5 * prior(table, doc.class_probs), dim=-1), atol=1e-3)


def test_the_texts_read_are_the_items_own_when_the_class_vectors_are_made_on_the_way():
    """The eval command notes what the model reads (`encode_candidates(read_texts=...)`) for its baseline. The
    1,000 class texts, made while the first photo is encoded, once joined the noted texts and shifted every
    item's baseline text (its MRR fell to 0.08)."""
    model = MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer", meta_attention="phrases", lora_r=None,
                                                  embed_dim=None, num_query_tokens=4, num_candidate_tokens=8,
                                                  groups=[(1, 1), (4, 8)], class_prior=0.5), device="cpu").eval()
    noted: list = []
    model.encode_candidates([Image.open(EXAMPLES / "owl.jpg"), "a note about owls"], read_texts=noted)
    assert model._class_vectors is not None  # made during that call
    assert len(noted) == 2 and "owl" in noted[0] and noted[1] == "a note about owls"
