"""The grouped Qwen-VL vision attention (model/backbones/qwen_vision_attention.py) against transformers' stock
per-segment sdpa path, on tiny random vision towers in fp32: same features and gradients, fewer sdpa calls."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from model.backbones import qwen_vision_attention as qva
from model.backbones.qwen_vision_attention import GroupedVisionAttention, SegmentPlan, grouped_attention

# (t, h, w) in patches: 10 x 14 patches are 5 x 7 merged ones, so 2 x 2-merged windows leave partial windows of
# 8 and 4 patches at the edges; 8 x 8 patches give whole windows only. Images of two sizes in one batch.
GRIDS = [[1, 10, 14], [1, 8, 8], [1, 8, 8]]


def tiny_model(family: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel, Qwen2VLConfig, Qwen2VLModel

    text = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_heads=2)
    torch.manual_seed(0)
    if family == "qwen2.5-vl":
        # window_size 56 px = 2 merged patches of 28 px: windowed blocks 0 and 2, full attention in block 1.
        vision = dict(depth=3, hidden_size=32, out_hidden_size=64, intermediate_size=48, window_size=56,
                      fullatt_block_indexes=[1], **common)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=5, video_token_id=6)
        cls = Qwen2_5_VLModel
    else:
        config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=2, embed_dim=32, hidden_size=64,
                                                                    mlp_ratio=2, **common),
                               image_token_id=5, video_token_id=6)
        cls = Qwen2VLModel
    return cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


def pixels(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.tensor(GRIDS)
    n = int(grid.prod(-1).sum())
    return torch.randn(n, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed)), grid


class CountingSdpa:
    """Counts F.scaled_dot_product_attention calls while installed (transformers calls it through the module)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = F.scaled_dot_product_attention

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counting)

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def features(model, px: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's merged output and its gradient with respect to the pixels."""
    px = px.clone().requires_grad_(True)
    out = model.get_image_features(pixel_values=px, image_grid_thw=grid, return_dict=True).pooler_output
    out = torch.cat(list(out))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), px.grad


def segments_per_pass(model, grid: torch.Tensor) -> tuple[int, int]:
    """(sdpa calls of the stock path, distinct segment lengths summed over blocks) for one tower forward."""
    from transformers.vision_utils import get_vision_window_index

    visual = model.visual
    per_image = grid.prod(-1)
    full = (len(per_image), len(set(per_image.tolist())))
    if not getattr(visual, "fullatt_block_indexes", None):
        return len(visual.blocks) * full[0], len(visual.blocks) * full[1]
    _, cu = get_vision_window_index(grid, spatial_merge_size=2, window_size=visual.window_size, patch_size=14)
    lengths = (cu[1:] - cu[:-1]).tolist()
    windowed = len(visual.blocks) - len(visual.fullatt_block_indexes)
    n_full = len(visual.fullatt_block_indexes)
    return (windowed * len(lengths) + n_full * full[0],
            windowed * len(set(lengths)) + n_full * full[1])


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen2-vl"])
def test_grouped_attention_gives_the_stock_features_and_gradients_with_one_call_per_length(family, monkeypatch):
    model = tiny_model(family)
    px, grid = pixels()
    sdpa = CountingSdpa(monkeypatch)
    stock, stock_grad = features(model, px, grid)
    stock_calls = sdpa.take()

    grouped = GroupedVisionAttention.install(model)
    assert grouped is not None and grouped.enabled
    sdpa.take()  # the install's own check
    ours, our_grad = features(model, px, grid)
    our_calls = sdpa.take()

    assert stock_grad is not None and bool(stock_grad.abs().sum() > 0)
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, stock_grad, atol=1e-6, rtol=1e-5)
    expected_stock, expected_ours = segments_per_pass(model, grid)
    assert stock_calls == expected_stock
    assert our_calls == expected_ours < stock_calls
    if family == "qwen2.5-vl":
        assert our_calls == 2 * 3 + 2  # 2 windowed blocks x window lengths 16, 8, 4; 1 full block x 2 image sizes

    grouped.enabled = False  # switched off: the stock path, call for call
    again, _ = features(model, px, grid)
    assert sdpa.take() == stock_calls
    torch.testing.assert_close(again, stock, atol=0, rtol=0)


def test_same_length_segments_are_one_call_without_copies_and_empty_windows_are_skipped():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(12, 2, 8, generator=gen) for _ in range(3))
    cu = torch.tensor([0, 4, 4, 8, 12], dtype=torch.int32)  # a repeated boundary: an empty window
    plan = SegmentPlan(cu)
    assert plan.lengths == [4] and plan.counts == [3] and plan.index is None
    out = plan.attend(q, k, v)
    for a in range(0, 12, 4):
        ref = F.scaled_dot_product_attention(*(t[a:a + 4].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        torch.testing.assert_close(out[a:a + 4], ref)
    with pytest.raises(ValueError, match="covers 12 tokens"):
        plan.attend(q[:8], k[:8], v[:8])


def test_the_attention_function_refuses_to_run_without_the_segments():
    q = torch.randn(1, 2, 6, 8)
    with pytest.raises(RuntimeError, match="segment plan is missing"):
        grouped_attention(torch.nn.Module(), q, q, q, attention_mask=None)


def test_set_attn_implementation_switches_it_off_and_the_stock_path_runs(monkeypatch):
    model = tiny_model("qwen2.5-vl")
    grouped = GroupedVisionAttention.install(model)
    px, grid = pixels()
    with torch.no_grad():
        ours = model.get_image_features(pixel_values=px, image_grid_thw=grid, return_dict=True).pooler_output
    model.set_attn_implementation("sdpa")
    assert not grouped.enabled
    sdpa = CountingSdpa(monkeypatch)
    with torch.no_grad():
        stock = model.get_image_features(pixel_values=px, image_grid_thw=grid, return_dict=True).pooler_output
    assert sdpa.take() == segments_per_pass(model, grid)[0]
    torch.testing.assert_close(torch.cat(list(ours)), torch.cat(list(stock)), atol=1e-6, rtol=1e-5)


def test_a_structure_it_does_not_expect_falls_back_to_the_stock_attention_with_a_log_line(monkeypatch, caplog):
    model = tiny_model("qwen2.5-vl")
    caplog.set_level(logging.INFO, logger=qva.__name__)
    # An attention function that gets the segments wrong (as a changed transformers could make it): the install's
    # check on a test input notices, removes its hooks and leaves the config on stock sdpa.
    monkeypatch.setattr(SegmentPlan, "attend", lambda self, q, k, v, **kw: F.scaled_dot_product_attention(
        *(t.transpose(0, 1) for t in (q, k, v))).transpose(0, 1))
    assert GroupedVisionAttention.install(model) is None
    assert "differs from the stock attention" in caplog.text
    assert model.visual.config._attn_implementation == "sdpa"
    assert all(not blk.attn._forward_pre_hooks for blk in model.visual.blocks)

    caplog.clear()
    del model.visual.blocks[0].attn.qkv
    assert GroupedVisionAttention.install(model) is None
    assert "lacks qkv" in caplog.text

    caplog.clear()
    eager = tiny_model("qwen2.5-vl")
    eager.set_attn_implementation("eager")
    assert GroupedVisionAttention.install(eager) is None
    assert "runs ['eager']" in caplog.text
