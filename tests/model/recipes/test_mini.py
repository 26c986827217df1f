"""MetaEmbed-Mini: the shipped default checkpoint and the visual tokenizer's edge cases."""


import numpy as np
import pytest
from PIL import Image

from model import MetaEmbed
from model.checkpoint import DEFAULT_CHECKPOINT, WEIGHTS_NAME
from model.scoring import maxsim
from model.visual.classifier import get_classifier
from model.visual.tokenizer import VisualTokenizer
from tests.helpers import EXAMPLES


@pytest.fixture(scope="module")
def mini():
    return MetaEmbed.from_pretrained(device="cpu")


def test_default_checkpoint_is_small_and_loads_offline(mini):
    assert (DEFAULT_CHECKPOINT / WEIGHTS_NAME).stat().st_size < 10 * 2**20
    assert mini.config.name == "metaembed-mini"
    assert mini.config.front_end == "visual-tokenizer"
    dim = mini.config.embed_dim or mini.backbone.hidden_size
    assert mini.encode_queries(["a cat"]).shape == (1, mini.config.num_query_tokens, dim)


def test_the_shipped_checkpoint_writes_entry_level_names(mini):
    """v3.4: a photo's concepts carry what people call them (a lorikeet is a parrot), and the class prior's
    class texts read the same words."""
    assert mini.config.entry_names
    texts = []
    mini.encode_candidates([Image.open(EXAMPLES / "lorikeet.jpg").convert("RGB")], read_texts=texts)
    assert texts[0].startswith("lorikeet, parrot, bird")


def test_a_candidates_own_vectors_differ(mini):
    """The 64 vectors of one candidate are not near-copies (v1's mean cosine between them was 0.95, so the
    budget slider changed nothing; v2's 0.51-0.56). The model issue's goal is 0.5: v3 measured 0.44 / 0.45 on
    held-out photos / pages."""
    photos = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))[:6]]
    passages = [
        "To add a package repository, edit /etc/apt/sources.list and run apt update to refresh the lists. "
        "Signed repositories need their key in /etc/apt/keyrings, referenced by a signed-by option.",
        "The kitten sleeps on the sofa all afternoon and wakes up hungry in the evening, when the house is "
        "quiet and the garden birds have gone to roost in the old pear tree.",
    ]
    for items in (photos, passages):
        c = mini.encode_candidates(items)
        gram = c @ c.transpose(1, 2)
        n = c.shape[1]
        own = ((gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (n * n - n)).mean()
        assert own <= 0.5, float(own)


def test_mini_ranks_obvious_photos(mini):
    names = ["tabby-cat.jpg", "hot-air-balloon-in-the-sky.jpg", "owl.jpg", "boats-at-sunset.jpg"]
    photos = [Image.open(EXAMPLES / n).convert("RGB") for n in names]
    c = mini.encode_candidates(photos)
    q = mini.encode_queries(["a cat", "hot air balloon", "owl", "boats"])
    for budget in mini.config.presets[-2:]:
        ranking = maxsim(q, c, budget).argmax(dim=1).tolist()
        assert ranking == [0, 1, 2, 3], f"budget {budget}: {ranking}"


def test_mini_ranks_obvious_passages(mini):
    passages = [
        "To add a package repository, edit /etc/apt/sources.list and run apt update to refresh the lists.",
        "The kitten sleeps on the sofa all afternoon and wakes up hungry in the evening.",
        "Interest rates rose again this quarter, and the central bank signalled more increases.",
    ]
    c = mini.encode_candidates(passages)
    q = mini.encode_queries(["configure apt package sources", "sleeping cat", "bank interest rates"])
    assert maxsim(q, c).argmax(dim=1).tolist() == [0, 1, 2]


class _Unsure:
    """A classifier that recognises nothing: every class equally likely."""

    def __init__(self):
        self.real = get_classifier()
        self.batch_size = self.real.batch_size

    def predict(self, inputs):
        probs, feats = self.real.predict(inputs)
        return np.full_like(probs, 1.0 / probs.shape[1]), feats

    def cams(self, features, classes):
        return self.real.cams(features, classes)


def test_photo_with_no_recognised_concept_still_gets_a_doc():
    # scene=False: a flat blue top is also a sky to the scene rules; this test is about the colours alone.
    tok = VisualTokenizer(classifier=_Unsure(), ocr_fn=lambda img: [], scene=False)
    img = Image.new("RGB", (320, 240), (30, 90, 200))
    img.paste((240, 240, 240), (0, 160, 320, 240))
    doc = tok.tokenize([img], ocr=False)[0]
    kinds = {t.kind for t in doc.tokens}
    assert kinds == {"colour"}
    assert "blue" in doc.text and doc.text.strip()


def _letters(texts):
    """A stand-in teacher: letter-count vectors, so the nearest doc to a word is the one sharing its letters."""
    import torch

    v = torch.zeros(len(texts), 26)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                v[i, ord(ch) - 97] += 1
    return torch.nn.functional.normalize(v + 1e-6, dim=-1)


def test_open_query_rows_are_distillation_only_and_pair_the_teachers_favourite():
    import random

    from model.recipes.mini.open_queries import common_words, open_query_rows

    words = common_words()
    assert len(words) > 5000 and "the" not in words and all(w.isalpha() and w.islower() for w in words)
    docs = ["zebra zoo", "apple pie", "kitten mitten", "quartz quiz"]
    vocab = ["zzz", "ppp", "ttt", "qqq", "xyx", "eee"]
    rows = open_query_rows(docs, _letters, 40, random.Random(0), words=vocab, top=1, weight=3.0)
    assert len(rows) == 40
    for r in rows:
        assert r["contrastive"] == 0.0 and r["distill"] == 3.0 and r["positive"] in docs
        for w in r["query"].split():
            assert w in vocab
        if len(r["query"].split()) == 1:  # top=1: exactly the stand-in teacher's best doc
            best = int((_letters([r["query"]]) @ _letters(docs).T).argmax())
            assert r["positive"] == docs[best]
    with pytest.raises(ValueError, match="pool of docs"):
        open_query_rows([], _letters, 1, random.Random(0), words=vocab)
    assert open_query_rows(docs, _letters, 0, random.Random(0), words=vocab) == []
