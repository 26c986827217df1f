"""MetaEmbed core: prefix consistency, encoding, checkpoints, bad input."""

import json

import pytest
import torch

from model import MetaEmbed, MetaEmbedConfig
from model.config import CONFIG_NAME, env_switch

TEXTS = ["a dog running on the beach", "red sports car", "how to configure apt sources on Debian"]


def test_config_json_round_trip(tmp_path):
    cfg = MetaEmbedConfig(num_query_tokens=8, num_candidate_tokens=32, groups=[(1, 1), (8, 32)], embed_dim=None)
    cfg.save(tmp_path)
    back = MetaEmbedConfig.load(tmp_path)
    assert back == cfg
    assert back.groups == [(1, 1), (8, 32)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": [(17, 64)]}, "out of range"),
        ({"num_query_tokens": 0}, "positive integer"),
        ({"group_weights": [1.0]}, "group_weights"),
        ({"format_version": 99}, "format_version"),
        ({"temperature": 0}, "temperature"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaEmbedConfig(**kwargs)


def test_encode_shapes_and_norms(text_model):
    q = text_model.encode_queries(TEXTS)
    c = text_model.encode_candidates(TEXTS)
    assert q.shape == (3, 16, 128) and c.shape == (3, 64, 128)
    assert q.dtype == torch.float32 and q.device.type == "cpu"
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(3, 64), atol=1e-5, rtol=0)
    # Different texts give different embeddings (the model is not collapsed to a constant).
    assert (c[0] - c[1]).abs().max() > 1e-3


@pytest.mark.parametrize("side, r", [("query", 4), ("candidate", 8), ("candidate", 1)])
def test_prefix_consistency(text_model, side, r):
    """The first r vectors do not depend on how many meta tokens ran (the Matryoshka premise)."""
    full, _ = text_model.embed(text_model.prepare(TEXTS, side), side)
    part, _ = text_model.embed(text_model.prepare(TEXTS, side, r), side, num_tokens=r)
    torch.testing.assert_close(part, full[:, :r], atol=1e-5, rtol=1e-4)


def test_padding_invariance(text_model, monkeypatch):
    """An item's vectors do not depend on the other (longer or shorter) items in its batch (checked in fp32:
    under bf16 autocast, batch shape changes the rounding; the next test bounds that)."""
    monkeypatch.setattr(text_model, "cpu_autocast", False)
    together = text_model.encode_candidates(TEXTS)
    alone = torch.cat([text_model.encode_candidates([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_cpu_bf16_autocast_stays_close_to_fp32(text_model, monkeypatch):
    monkeypatch.setattr(text_model, "cpu_autocast", False)
    exact = text_model.encode_candidates(TEXTS)
    monkeypatch.setattr(text_model, "cpu_autocast", True)
    together = text_model.encode_candidates(TEXTS)
    alone = torch.cat([text_model.encode_candidates([t]) for t in TEXTS])
    assert not torch.equal(together, exact)  # autocast really ran
    for fast in (together, alone):
        assert (fast * exact).sum(-1).min() > 0.999
    # Only the default (no dtype) on a CPU turns autocast on; an explicit dtype is used as given.
    text_model._place("cpu", torch.float32)
    assert text_model.cpu_autocast is False
    text_model._place("cpu", None)


def test_content_tokens_ignore_meta_tokens(text_model):
    """Content states are the backbone's own: meta tokens never leak into them."""
    batch = text_model.prepare(TEXTS[:1], "candidate")
    emb = text_model.backbone.model
    with torch.no_grad():
        plain = emb(batch["input_ids"], batch["attention_mask"])
        out = text_model.backbone(batch, text_model.candidate_meta.detach(), output_attention=True)
    # The last layer's meta attention is a distribution over the content tokens.
    assert out.attention.shape == (1, 64, plain.shape[1])
    assert torch.all(out.attention.sum(-1) <= 1.0 + 1e-4)
    assert out.tokens[0][0] == "[CLS]"


@pytest.mark.parametrize(
    "items, message",
    [([], "empty"), ([""], "empty"), (["ok", "   "], "item 1 is empty"), ([42], "unsupported type"),
     ("just a string", "list of items")],
)
def test_bad_inputs_raise_clear_errors(text_model, items, message):
    with pytest.raises(ValueError, match=message):
        text_model.encode_queries(items)


def test_images_need_a_visual_front_end(text_model):
    from PIL import Image

    with pytest.raises(ValueError, match="cannot read images"):
        text_model.encode_candidates([Image.new("RGB", (8, 8))])


def test_a_model_says_how_its_pictures_were_classified(test_checkpoint, text_model):
    """Eval reports record how the visual tokenizer's classifier ran (the CPU picks it, and it moves photo
    numbers): nothing before a picture is read or for a model without the visual tokenizer."""
    from PIL import Image

    model = MetaEmbed.from_pretrained(test_checkpoint, device="cpu")  # its own front end, not yet used
    assert model.image_reader_setup() is None and text_model.image_reader_setup() is None
    model.encode_candidates([Image.new("RGB", (64, 48), "orange")])
    classifier = model.backbone.front_end.tokenizer().classifier
    assert model.image_reader_setup() == classifier.setup and classifier.setup.startswith("lite0, ")


def _perturb_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def test_save_load_round_trip(tmp_path):
    # fp32 (no CPU autocast): merged and unmerged LoRA then agree to fp32 rounding.
    model = MetaEmbed.from_config(MetaEmbedConfig(name="roundtrip"), device="cpu", dtype=torch.float32)
    _perturb_lora(model)  # untrained LoRA is a no-op; make it matter so the test can fail
    before = model.encode_candidates(TEXTS)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["name"] == "roundtrip"
    for merge in (False, True):
        loaded = MetaEmbed.from_pretrained(tmp_path, device="cpu", dtype=torch.float32, merge_lora=merge)
        torch.testing.assert_close(loaded.encode_candidates(TEXTS), before, atol=1e-4, rtol=1e-4)
    # Only what training produced is stored, not the 22M backbone weights.
    assert (tmp_path / "metaembed.safetensors").stat().st_size < 10 * 2**20


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MetaEmbed.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metaembed_config.json"):
        MetaEmbed.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="Hugging Face Hub"):
        MetaEmbed.from_pretrained("nobody-here/no-such-metaembed")


def test_unknown_format_version(tmp_path, text_model):
    text_model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["format_version"] = 7
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        MetaEmbed.from_pretrained(tmp_path)


def test_checkpoint_for_another_backbone(tmp_path, text_model):
    """A checkpoint trained on MiniLM, pointed at a different (tiny, local) BERT: a clear shape error."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tiny = tmp_path / "tiny-bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(text_model.backbone.tokenizer.name_or_path).save_pretrained(tiny)
    ckpt = tmp_path / "ckpt"
    text_model.save_pretrained(ckpt)
    data = json.loads((ckpt / CONFIG_NAME).read_text())
    data["backbone_id"] = str(tiny)
    (ckpt / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another backbone"):
        MetaEmbed.from_pretrained(ckpt)


def test_unknown_backbone_family():
    with pytest.raises(ValueError, match="unknown backbone family"):
        MetaEmbed.from_config(MetaEmbedConfig(backbone="gpt-17"))


# ---- granular meta tokens (meta_attention="spans") --------------------------------------------------------
def test_meta_levels_follow_the_groups():
    cfg = MetaEmbedConfig(meta_attention="spans")
    assert cfg.meta_levels("query") == [1, 1, 2, 4, 8]
    assert cfg.meta_levels("candidate") == [1, 3, 4, 8, 48]
    # Tokens past the largest group form one more level.
    assert MetaEmbedConfig(groups=[(1, 1), (4, 8)]).meta_levels("candidate") == [1, 7, 56]


def test_span_bounds_split_the_text_into_nested_parts():
    from model.backbones.minilm import span_bounds

    # 10 tokens: [CLS], 8 words, [SEP]; levels 1 + 2 + 4.
    start, end = span_bounds(torch.tensor([10]), [1, 2, 4], 7)
    assert list(zip(start[0].tolist(), end[0].tolist())) == [(1, 9), (1, 5), (5, 9), (1, 3), (3, 5), (5, 7), (7, 9)]
    # Shorter than a level: parts repeat tokens but are never empty, and stay inside the text.
    start, end = span_bounds(torch.tensor([4, 2]), [1, 2, 4], 7)
    assert bool((end > start).all())
    assert end[0].max() <= 3 and start[0].min() >= 1
    assert end[1].max() <= 2


@pytest.fixture(scope="module", params=["spans", "phrases", "phrases+clusters"])
def span_model(request):
    return MetaEmbed.from_config(MetaEmbedConfig(name="test-spans", meta_attention=request.param), device="cpu")


@pytest.mark.parametrize("side, r", [("query", 4), ("candidate", 8)])
def test_granular_prefix_consistency(span_model, side, r):
    full, _ = span_model.embed(span_model.prepare(TEXTS, side), side)
    part, _ = span_model.embed(span_model.prepare(TEXTS, side, r), side, num_tokens=r)
    torch.testing.assert_close(part, full[:, :r], atol=1e-5, rtol=1e-4)


def test_granular_meta_tokens_read_only_their_span(span_model):
    """Meta token 0 reads the whole text; a last-level token reads only its part: changing the last word moves
    the last part's vector far more than the first part's (which feels it only through the content's context)."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    edited = words[:-1] + ["banana"]
    with torch.no_grad():
        a = span_model.encode_candidates([" ".join(words)])[0]
        b = span_model.encode_candidates([" ".join(edited)])[0]
    moved = (a - b).norm(dim=-1)
    assert moved[0] > 1e-3  # the whole-text vector sees the edit
    assert moved[16] < 0.5 * moved[-1]  # finest level: the first part vs the part holding the edited word


def test_granular_layout_is_for_text_backbones_only():
    with pytest.raises(ValueError, match="meta_attention"):
        MetaEmbedConfig(meta_attention="windows")


def test_untrained_readout_is_the_mean_of_each_span(span_model):
    """With its query weights and gate at zero, the span readout's state for meta token i is the plain mean of
    the frozen base's last-layer states over token i's span: the structure the readout starts from."""
    from model.backbones.minilm import span_mask
    from model.parts import clustered_mask, part_mask

    model = span_model
    batch = model.prepare(TEXTS, "candidate")
    with torch.no_grad():
        _, out = model.embed(batch, "candidate", meta_states=True)
        states, _ = model.readout(out.meta, out.content, out.span)
        base = model.backbone.model(batch["input_ids"], batch["attention_mask"])
    lengths = batch["attention_mask"].sum(1)
    levels = model.config.meta_levels("candidate")
    if model.config.meta_attention == "spans":
        inside = span_mask(lengths, levels, 64, lengths.max()).float()
    else:
        inside = part_mask(batch["tokens"], levels, 64, int(lengths.max()))
        if model.config.meta_attention == "phrases+clusters":
            inside = clustered_mask(inside, batch["tokens"], base, list(range(len(TEXTS))), levels)
        inside = inside.float()
    expected = inside @ base / inside.sum(-1, keepdim=True)
    torch.testing.assert_close(states, expected, atol=2e-5, rtol=1e-4)
    # Its attention is what the app shows as "what this vector reads": uniform over the span, zero outside.
    _, att = model.readout(out.meta, out.content, out.span)
    torch.testing.assert_close(att, inside / inside.sum(-1, keepdim=True))


@pytest.mark.parametrize("side", ["query", "candidate"])
def test_span_mean_readout_skips_the_meta_states_with_the_same_vectors(span_model, side):
    """Outside training, a readout at its plain span mean never runs the meta tokens through the backbone
    (queries: 2-3x less work) and gives the vectors and attention of the full path."""
    batch = span_model.prepare(TEXTS, side)
    with torch.inference_mode():
        full, full_out = span_model.embed(batch, side, meta_states=True)
        fast, fast_out = span_model.embed(batch, side, output_attention=True)
    assert full_out.meta is not None and fast_out.meta is None
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_out.attention, full_out.attention)
    grad, grad_out = span_model.embed(batch, side)  # training: the meta states are computed
    assert grad_out.meta is not None


PAGES = [
    "To add a package repository, edit the sources list and run the update command to refresh the package "
    "lists. Signed repositories need their key in the keyrings folder, named by a signed-by option on the "
    "repository's line. A repository without a key is refused: the update command warns and skips it, and "
    "packages from it cannot be installed until its key is there. Keys expire, so an old key refuses a repository "
    "that worked yesterday; fetch the new key from the repository's home page and put it where the old one was.",
    "The kitten sleeps on the sofa all afternoon and wakes up hungry in the evening, when the house is quiet and "
    "the garden birds have gone to roost in the old pear tree. Then it eats, washes its paws and face, and goes "
    "out through the flap in the kitchen door to look for the neighbour's cat, which sits on the wall each night "
    "and watches the garden, the birds in the pear tree and the kitten, and never comes down to play with it.",
]


@pytest.fixture(scope="module")
def layouts():
    cfg = dict(name="t", embed_dim=None, lora_r=None)
    return {name: MetaEmbed.from_config(MetaEmbedConfig(meta_attention=name, **cfg), device="cpu")
            for name in ("phrases", "phrases+clusters")}


def test_clusters_layout_changes_only_a_text_candidates_finest_level(layouts):
    """`phrases+clusters`: a page's 48 finest vectors read clusters of its states, every other vector (and
    every query vector) reads what the `phrases` layout reads."""
    from model.parts import part_mask

    phrases, clusters = layouts["phrases"], layouts["phrases+clusters"]
    with torch.inference_mode():
        a = phrases.encode_candidates(PAGES)
        b = clusters.encode_candidates(PAGES)
        torch.testing.assert_close(clusters.encode_queries(PAGES), phrases.encode_queries(PAGES))
    torch.testing.assert_close(b[:, :16], a[:, :16], atol=5e-3, rtol=0)  # padding vs alone, in bf16
    assert (b[:, 16:] - a[:, 16:]).norm(dim=-1).mean() > 0.1
    batch = clusters.prepare(PAGES, "candidate")
    with torch.inference_mode():
        _, out = clusters.embed(batch, "candidate")
    fine = out.span[:, 16:]
    # The same page word in two far-apart sentences can share a finest vector; a phrase part never spans that.
    spread = [(int(r.nonzero().max()) - int(r.nonzero().min())) for r in fine.reshape(-1, fine.shape[-1]) if r.any()]
    assert max(spread) > 30
    # A photo's text (written by the visual tokenizer) keeps its phrase parts in the same batch.
    batch["extras"] = [{"visual": object()}, {}]
    with torch.inference_mode():
        _, mixed = clusters.embed(batch, "candidate")
    phrase_parts = part_mask(batch["tokens"], clusters.config.meta_levels("candidate"), 64, batch["input_ids"].shape[1])
    assert torch.equal(mixed.span[0], phrase_parts[0]) and torch.equal(mixed.span[1], out.span[1])


def test_clusters_layout_gives_a_page_the_same_vectors_in_any_batch(layouts):
    """Clusters follow the states closely enough that padding's rounding could move a boundary: a clustered
    row runs alone, so a page gets exactly the same vectors alone, in a batch, in any order."""
    model = layouts["phrases+clusters"]
    items = [PAGES[0], "a short caption", PAGES[1]]
    with torch.inference_mode():
        together = model.encode_candidates(items)
        alone = torch.cat([model.encode_candidates([t]) for t in items])
        reversed_ = model.encode_candidates(items[::-1]).flip(0)
    assert torch.equal(together, alone) and torch.equal(together, reversed_)


def test_a_trained_readout_reads_the_meta_states():
    model = MetaEmbed.from_config(MetaEmbedConfig(name="t", meta_attention="phrases", embed_dim=None), device="cpu")
    assert model.readout.is_span_mean()
    with torch.no_grad():
        model.readout.gate.fill_(0.3)
    assert not model.readout.is_span_mean()
    with torch.inference_mode():
        vecs, out = model.embed(model.prepare(TEXTS, "candidate"), "candidate")
        mean, _ = model.readout.span_mean(out.content, out.span)
    assert out.meta is not None  # computed: the gate adds them to each vector
    assert not torch.allclose(vecs, torch.nn.functional.normalize(mean, dim=-1), atol=1e-3)
    with pytest.raises(ValueError, match="granular"):
        model.backbone(model.prepare(TEXTS, "query"), model.query_meta, meta_states=False)


def test_readout_weights_are_saved_and_loaded(tmp_path):
    cfg = MetaEmbedConfig(name="t", lora_r=None, meta_attention="spans", embed_dim=16, embed_bias=True)
    model = MetaEmbed.from_config(cfg, device="cpu")
    with torch.no_grad():
        model.readout.query.weight.normal_()
        model.readout.gate.fill_(0.3)
    assert {"readout.query.weight", "readout.gate"} <= set(model.trained_state_dict())
    model.save_pretrained(tmp_path / "ck")
    loaded = MetaEmbed.from_pretrained(tmp_path / "ck", device="cpu")
    torch.testing.assert_close(loaded.readout.query.weight, model.readout.query.weight)
    torch.testing.assert_close(loaded.encode_candidates(TEXTS), model.encode_candidates(TEXTS))


def test_env_switch(monkeypatch):
    monkeypatch.delenv("METAEMBED_TEST_SWITCH", raising=False)
    assert env_switch("METAEMBED_TEST_SWITCH") is None
    for value, expected in (("1", True), (" Yes ", True), ("off", False), ("0", False), ("", None)):
        monkeypatch.setenv("METAEMBED_TEST_SWITCH", value)
        assert env_switch("METAEMBED_TEST_SWITCH") is expected
    monkeypatch.setenv("METAEMBED_TEST_SWITCH", "maybe")
    with pytest.raises(ValueError, match="METAEMBED_TEST_SWITCH"):
        env_switch("METAEMBED_TEST_SWITCH")
