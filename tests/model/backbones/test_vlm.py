"""Vision-language backbones (Qwen2-VL, Qwen2.5-VL, Idefics3) on tiny random models built here, offline.

Each family gets a randomly initialised model, an in-memory word-level tokenizer with the family's special
tokens and a small-image processor, saved to a folder and loaded back through the real path
(`MetaEmbed.from_config` -> `load_backbone` -> the family's `VLMBackbone.load` -> Auto classes).
"""

from __future__ import annotations

import json
import random
import shutil

import huggingface_hub.constants
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from model.backbones import load_backbone
from model.backbones.base import parse_items
from model.backbones.vlm import VLMBackbone
from model.config import MetaEmbedConfig
from model.device import run_dtype
from model.metaembed import MetaEmbed
from model.train import TrainArgs, _step_loss, load_rows, train

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "idefics3")
WORDS = ("a photo of the red blue green cat dog house tree car on in with and what is user assistant "
         "User Assistant : system").split()
GROUPS = [(1, 1), (2, 4), (4, 8)]

QWEN_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
                "<|vision_end|>", "<|video_pad|>"]
IDEFICS_SPECIAL = (["<pad>", "<unk>", "<|begin_of_text|>", "<|im_start|>", "<end_of_utterance>",
                    "<fake_token_around_image>", "<image>", "<global-img>"]
                   + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
# SmolVLM's chat template, in its essentials.
IDEFICS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def word_tokenizer(special: list[str], **tokens) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", **tokens)


def tiny_text(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **extra)


def build_qwen(folder, family: str) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = word_tokenizer(QWEN_SPECIAL, eos_token="<|im_end|>")
    ids = tokenizer.get_vocab()
    text = tiny_text(len(ids), eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|im_start|>"],
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_heads=2)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2-vl":
        config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=32, hidden_size=64,
                                                                    mlp_ratio=2, **common), **tokens)
        model = Qwen2VLForConditionalGeneration(config)
    else:
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48, window_size=56,
                      fullatt_block_indexes=[1], **common)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                                                                     **tokens))
    # Between 1 and 3x3 merged patches per image: tiny, yet grids of different shapes.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=84 * 84, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def build_idefics3(folder) -> None:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = word_tokenizer(IDEFICS_SPECIAL, bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>")
    ids = tokenizer.get_vocab()
    text = tiny_text(len(ids), model_type="llama", eos_token_id=ids["<end_of_utterance>"],
                     bos_token_id=ids["<|begin_of_text|>"])
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=2, image_token_id=ids["<image>"],
                            pad_token_id=0)
    model = Idefics3ForConditionalGeneration(config)
    # 32 px tiles of (32 / 8)^2 / 2^2 = 4 tokens; images up to 64 px, so up to 2 x 2 tiles + the global view.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory) -> dict[str, str]:
    torch.manual_seed(0)
    dirs = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family.replace(".", ""))
        build_idefics3(folder) if family == "idefics3" else build_qwen(folder, family)
        dirs[family] = str(folder)
    return dirs


def make_config(family: str, folder: str, **kw) -> MetaEmbedConfig:
    return MetaEmbedConfig(backbone=family, backbone_id=folder, embed_dim=32, num_query_tokens=4,
                           num_candidate_tokens=8, groups=GROUPS, lora_r=4, **kw)


def load(family: str, dirs: dict[str, str]) -> MetaEmbed:
    return MetaEmbed.from_config(make_config(family, dirs[family]), device="cpu")


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.rectangle([x0, y0, x0 + rng.randrange(4, 20), y0 + rng.randrange(4, 20)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def mixed_items() -> list:
    return [
        "a red cat on the house",
        picture(60, 40, 1),
        (picture(30, 70, 2), "a dog with a blue car"),
        {"image": picture(50, 50, 3), "text": "tree"},
        "green",
    ]


def perturb_trained(model: MetaEmbed) -> None:
    """LoRA B starts at zero; give every trained tensor some value so a round trip has something to lose."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_unit_norms_for_text_image_and_pairs(family, backbone_dirs):
    model = load(family, backbone_dirs)
    assert isinstance(model.backbone, VLMBackbone)
    items = mixed_items()
    cands = model.encode_candidates(items, batch_size=3)
    queries = model.encode_queries(["a cat", picture(40, 40, 4)])
    assert cands.shape == (len(items), 8, 32) and queries.shape == (2, 4, 32)
    for vecs in (cands, queries):
        assert torch.isfinite(vecs).all()
        assert torch.allclose(vecs.norm(dim=-1), torch.ones(vecs.shape[:2]), atol=1e-4)
    # Different content gives different vectors (the image features really reach the decoder).
    assert not torch.allclose(cands[1], cands[3], atol=1e-3)
    assert not torch.allclose(cands[0], cands[4], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_first_r_meta_outputs_do_not_depend_on_how_many_ran(family, backbone_dirs):
    model = load(family, backbone_dirs)
    perturb_trained(model)
    batch = model.prepare(mixed_items()[:3], "candidate")
    with torch.no_grad():
        full, _ = model.embed(batch, "candidate")
        for r in (1, 3):
            part, out = model.embed(batch, "candidate", num_tokens=r)
            assert out.meta.shape[1] == r
            torch.testing.assert_close(part, full[:, :r], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_item_vectors_do_not_depend_on_the_rest_of_the_batch(family, backbone_dirs):
    model = load(family, backbone_dirs)
    perturb_trained(model)
    items = mixed_items()
    together = model.encode_candidates(items, batch_size=len(items))
    alone = torch.cat([model.encode_candidates([x]) for x in items])
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_states_equal_the_stock_model_run_on_the_same_embeddings_as_tokens(family, backbone_dirs):
    """Meta tokens set to real token embeddings must give what the stock forward (its own image merging,
    M-RoPE / position ids and masks) gives for those tokens appended to the prompt."""
    backbone = load(family, backbone_dirs).backbone
    extra_ids = torch.tensor([backbone.tokenizer.convert_tokens_to_ids(w) for w in ("cat", "dog", "tree")])
    meta = backbone.input_embeddings().weight[extra_ids].detach()
    batch = backbone.prepare(parse_items(mixed_items()[:4]), 3)
    with torch.no_grad():
        ours = backbone(batch, meta).meta
        bsz = batch["input_ids"].shape[0]
        ids = torch.cat([batch["input_ids"], extra_ids.expand(bsz, -1)], dim=1)
        mask = torch.cat([batch["attention_mask"], torch.ones(bsz, 3, dtype=torch.long)], dim=1)
        kwargs = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "pixel_attention_mask") if k in batch}
        if family.startswith("qwen"):
            kwargs["mm_token_type_ids"] = (ids == backbone.image_token_id).int()
        stock = backbone.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state
    torch.testing.assert_close(ours, stock[:, -3:], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip_gives_identical_embeddings(family, backbone_dirs, tmp_path):
    model = load(family, backbone_dirs)
    perturb_trained(model)
    items = mixed_items()[:3]
    before_c = model.encode_candidates(items)
    before_q = model.encode_queries(["what is the red car"])
    model.save_pretrained(tmp_path / "ckpt")
    again = MetaEmbed.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert again.config.backbone == family
    torch.testing.assert_close(again.encode_candidates(items), before_c, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(again.encode_queries(["what is the red car"]), before_q, atol=2e-5, rtol=1e-4)


def test_a_backbone_loads_in_the_dtype_it_runs_in_wherever_a_gpu_is(backbone_dirs, monkeypatch, tmp_path):
    """On a machine with a GPU, a model asked for on the CPU loads its backbone in fp32, not bf16 cast back up.
    The bf16 load rounded the backbone and the trained LoRA weights, so a checkpoint reloaded on the CPU of a
    GPU machine encoded differently (by up to 7e-3) from the model that was saved (seen on an H200)."""
    family = "qwen2.5-vl"
    model = load(family, backbone_dirs)
    perturb_trained(model)
    model.save_pretrained(tmp_path / "ckpt")
    items = mixed_items()[:3]
    before = model.encode_candidates(items)
    # What the load sees on a GPU machine; nothing below touches the GPU, as everything is asked for on the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_dtype(None) == torch.bfloat16 and run_dtype("cpu") == torch.float32
    assert run_dtype("cuda", torch.float32) == torch.float32
    again = MetaEmbed.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert again.backbone.model.dtype == torch.float32
    torch.testing.assert_close(again.encode_candidates(items), before, atol=2e-5, rtol=1e-4)
    # Asked for bf16, the backbone is loaded in bf16 directly (a GPU's default; no fp32 copy on the way).
    cfg = make_config(family, backbone_dirs[family])
    assert load_backbone(cfg, torch.bfloat16).model.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_covers_the_language_model_and_not_the_vision_tower(family, backbone_dirs):
    model = load(family, backbone_dirs)
    wrapped = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    text = "language_model" if family.startswith("qwen") else "text_model"
    vision = "visual" if family.startswith("qwen") else "vision_model"
    assert wrapped and all(f".{text}." in n for n in wrapped)
    assert not any(f".{vision}." in n for n in wrapped)
    kinds = {n.rsplit(".", 1)[1] for n in wrapped}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(wrapped) == 7 * 2  # every projection of both decoder layers
    # The vision tower has modules of the same names (q/k/v_proj or gate/up/down_proj) for the regex to skip.
    same_named = [n for n, _ in model.backbone.named_modules() if f".{vision}." in n and n.endswith(tuple(kinds))]
    if family != "qwen2-vl":
        assert same_named


@pytest.mark.parametrize("family", FAMILIES)
def test_training_steps_update_meta_tokens_projection_and_lora_only(family, backbone_dirs, tmp_path):
    model = load(family, backbone_dirs)
    for i in range(3):
        picture(48, 36, 10 + i).save(tmp_path / f"img{i}.png")
    rows = [
        {"query": "a red cat", "positive": "img0.png", "negative": "a blue house"},
        {"query": "the green tree", "positive": {"image": "img1.png", "text": "tree"}, "negative": "img2.png"},
        {"query": "img2.png", "positive": "a dog in the car", "negative": "house"},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, load_rows(data), TrainArgs(out=str(tmp_path / "run"), steps=2, batch_size=2, lr=5e-3,
                                            warmup=1, progress=False))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"query_meta", "candidate_meta", "proj.weight"} <= changed
    assert any("lora_B" in k for k in changed)
    assert all(k in ("query_meta", "candidate_meta", "proj.weight") or "lora_" in k for k in changed)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert (tmp_path / "run" / "metaembed.safetensors").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_attention_matches_the_eager_attention_of_the_last_layer(family, backbone_dirs):
    model = load(family, backbone_dirs)
    perturb_trained(model)  # LoRA on q/k must show up in the recomputed attention too
    item = (picture(56, 42, 5), "a red car")
    info = model.inspect(item, "candidate")
    tokens, att = info["tokens"], info["attention"]
    assert att.shape == (8, len(tokens))
    assert (att >= 0).all() and (att.sum(-1) <= 1 + 1e-5).all() and (att.sum(-1) > 0).all()

    backbone = model.backbone
    backbone.model.set_attn_implementation("eager")
    seen = {}
    hook = backbone.language_model.layers[-1].self_attn.register_forward_hook(
        lambda mod, args, out: seen.update(weights=out[1]))
    try:
        with torch.no_grad():
            model.embed(model.prepare([item], "candidate"), "candidate")
    finally:
        hook.remove()
        backbone.model.set_attn_implementation("sdpa")
    reference = seen["weights"][0, :, -8:, : len(tokens)].mean(0).float()
    torch.testing.assert_close(att, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_attention_is_aligned_with_each_items_tokens(family, backbone_dirs):
    model = load(family, backbone_dirs)
    items = ["a cat", (picture(60, 60, 6), "the house with a tree")]
    batch = model.prepare(items, "candidate")
    with torch.no_grad():
        _, out = model.embed(batch, "candidate", output_attention=True)
        _, single = model.embed(model.prepare(items[:1], "candidate"), "candidate", output_attention=True)
    n = len(out.tokens[0])
    assert n < len(out.tokens[1])
    torch.testing.assert_close(out.attention[0, :, :n], single.attention[0], atol=2e-5, rtol=1e-4)
    assert (out.attention[0, :, n:] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_image_regions_point_at_the_image_tokens(family, backbone_dirs):
    model = load(family, backbone_dirs)
    image_token = "<|image_pad|>" if family.startswith("qwen") else "<image>"
    batch = model.prepare(["a cat", (picture(64, 40, 7), "a car")], "candidate")
    tokens, extras = batch["tokens"], batch["extras"]
    assert extras[0]["image_regions"] == []
    regions = extras[1]["image_regions"]
    covered = set()
    for reg in regions:
        start, end = reg["span"]
        assert all(t == image_token for t in tokens[1][start:end])
        assert reg["grid"][0] * reg["grid"][1] == end - start
        x0, y0, x1, y1 = reg["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        covered.update(range(start, end))
    assert covered == {i for i, t in enumerate(tokens[1]) if t == image_token}
    if family == "idefics3":
        kinds = [r["kind"] for r in regions]
        assert kinds.count("global") == 1 and kinds.count("tile") >= 2  # a wide image is split into tiles
        tiles = [r["box"] for r in regions if r["kind"] == "tile"]
        assert max(b[2] for b in tiles) == 1 and max(b[3] for b in tiles) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholder_strings_in_user_text_are_not_read_as_images(family, backbone_dirs):
    model = load(family, backbone_dirs)
    marker = "<|image_pad|>" if family.startswith("qwen") else "<image>"
    vecs = model.encode_queries([f"a {marker} cat", (picture(40, 40, 8), f"{marker}{marker} dog")])
    assert vecs.shape == (2, 4, 32)
    with pytest.raises(ValueError, match="no content"):
        model.encode_queries([marker])


@pytest.mark.parametrize("family", FAMILIES)
def test_long_texts_are_clipped_to_max_length_tokens(family, backbone_dirs):
    model = MetaEmbed.from_config(make_config(family, backbone_dirs[family], max_length=4), device="cpu")
    batch = model.prepare(["a red cat on the house with a tree", "the blue dog car"], "query")
    assert len(batch["tokens"][0]) == len(batch["tokens"][1])  # 9 words cut to 4, like the 4-word text
    assert batch["texts"][0] == "a red cat on"


def test_missing_folder_wrong_family_broken_checkpoint_and_offline_hub_id_give_clear_errors(
        backbone_dirs, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        MetaEmbed.from_config(make_config("qwen2-vl", str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="model_type 'idefics3'"):
        MetaEmbed.from_config(make_config("idefics3", backbone_dirs["qwen2-vl"]))
    broken = shutil.copytree(backbone_dirs["qwen2-vl"], tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1." not in k}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks .* weights"):
        MetaEmbed.from_config(make_config("qwen2-vl", str(broken)))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"not available offline: download it with `hf download nobody/no-vlm`"):
        MetaEmbed.from_config(make_config("qwen2-vl", "nobody/no-vlm"))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_recomputes_the_decoder_layers_and_changes_no_gradient(family, backbone_dirs,
                                                                                     tmp_path):
    model = load(family, backbone_dirs)
    perturb_trained(model)  # LoRA B away from zero, so the LoRA A gradients are not trivially zero
    backbone = model.backbone
    for i in range(2):
        picture(48, 36, 20 + i).save(tmp_path / f"img{i}.png")
    rows = [{"query": "a red cat", "positive": {"image": str(tmp_path / "img0.png"), "text": None},
             "negative": "a blue house"},
            {"query": "the green tree", "positive": "a dog in the car",
             "negative": {"image": str(tmp_path / "img1.png"), "text": "tree"}}]
    params = model.trainable_parameters()
    mlp = backbone.language_model.layers[0].mlp  # inside the layer: runs again when the layer is recomputed
    calls = [0]
    counter = mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def step(checkpointing: bool):
        assert (backbone.set_gradient_checkpointing(checkpointing) > 0) == checkpointing
        model.train()
        model.zero_grad(set_to_none=True)
        calls[0] = 0
        torch.manual_seed(0)  # the same LoRA dropout masks both times (a recomputation replays its forward's)
        loss, _ = _step_loss(model, rows, model.config)
        forward_calls = calls[0]
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
        return loss.detach(), grads, forward_calls, calls[0]

    try:
        loss, grads, forward_calls, calls_off = step(False)
        assert calls_off == forward_calls == 2  # the queries' forward pass and the candidates'
        loss_gc, grads_gc, forward_gc, calls_on = step(True)
        assert forward_gc == forward_calls and calls_on == 2 * forward_calls  # each layer ran again in backward
        # transformers' input-grad hooks are gone: the frozen vision tower's output is no part of the graph.
        assert not getattr(backbone.model, "_require_grads_hooks", None)
        batch = model.prepare([picture(48, 36, 20)], "candidate")
        assert not backbone.image_features(batch, backbone.device).requires_grad
    finally:
        backbone.set_gradient_checkpointing(False)
        model.eval()
    torch.testing.assert_close(loss_gc, loss, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads)
    for g_on, g_off in zip(grads_gc, grads):
        torch.testing.assert_close(g_on, g_off, atol=1e-5, rtol=1e-4)

    # train() switches it on for the run (the layers run twice per forward pass) and off again afterwards.
    calls[0] = 0
    train(model, rows, TrainArgs(out=str(tmp_path / "run"), steps=1, batch_size=2, warmup=1, progress=False,
                                 gradient_checkpointing=True))
    counter.remove()
    assert calls[0] == 2 * forward_calls
    assert not any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_backbones_group_their_vision_attention_by_default_and_can_switch_it_off(family, backbone_dirs,
                                                                                      monkeypatch):
    model = load(family, backbone_dirs)
    backbone = model.backbone
    assert backbone.grouped_vision_attention
    items = mixed_items()
    grouped = model.encode_candidates(items, batch_size=len(items))
    assert backbone.set_grouped_vision_attention(False) is False
    torch.testing.assert_close(model.encode_candidates(items, batch_size=len(items)), grouped, atol=1e-6, rtol=1e-5)
    assert backbone.set_grouped_vision_attention(True) is True
    monkeypatch.setenv("METAEMBED_GROUPED_VISION_ATTENTION", "0")
    assert not load(family, backbone_dirs).backbone.grouped_vision_attention


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_meta_tokens_start_on_the_device_the_backbone_was_built_on(device, backbone_dirs):
    """A backbone built on a GPU (e.g. from a config, straight onto the device) gets its meta tokens there, the
    same ones for a seed as on the CPU: the seeded noise is drawn on the CPU and joins the embeddings."""
    backbone = load("qwen2.5-vl", backbone_dirs).backbone
    reference = backbone.meta_init(4, torch.Generator().manual_seed(3))
    backbone.to(device)
    meta = backbone.meta_init(4, torch.Generator().manual_seed(3))
    assert meta.device.type == device and meta.shape == (4, backbone.hidden_size)
    torch.testing.assert_close(meta.cpu(), reference)
    model = MetaEmbed(make_config("qwen2.5-vl", backbone_dirs["qwen2.5-vl"]), backbone)
    assert model.query_meta.device.type == device
