"""Qwen-VL vision attention with one `scaled_dot_product_attention` call per segment length, not per segment.

The vision towers of Qwen2-VL and Qwen2.5-VL attend over one packed sequence holding all of a batch's patches,
cut into segments by `cu_seqlens`: whole images and, in most Qwen2.5-VL blocks, windows of 8 x 8 patches.
Without flash-attn, transformers runs one sdpa call per segment: 14,464 calls for a batch of 32 photos of
448 px through Qwen2.5-VL-3B, which leaves an H200 waiting on kernel launches (docs/benchmarks.md). Segments of
the same length can be stacked on the batch dimension and attended in one call instead: each segment still
attends to itself alone, with the same arithmetic, so the result is the stock one (the tests compare them).

The wiring leaves everything but the attention itself to transformers' own code (q/k/v projection, rotary
embedding, output projection):
- a forward pre-hook on each vision attention module passes the real `cu_seqlens` to the attention function
  (as a keyword argument, which the module hands on to it) and gives the module a single segment instead, so
  its per-segment loop makes one call over the whole sequence;
- that call goes to `grouped_attention`, registered with transformers' `AttentionInterface` as `GROUPED` and
  selected by the vision config's `_attn_implementation`, which attends each group of equal-length segments
  in one sdpa call.
The hook rewrites the arguments only while the config names `GROUPED`, so setting the config back to "sdpa"
(which `set_attn_implementation` on the model also does) restores the stock path. `GroupedVisionAttention.install`
checks the structure it relies on and runs both paths on a small random input before switching; when anything
is not as expected it logs why and leaves the stock attention in place.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

GROUPED = "metaembed_grouped_sdpa"
STOCK = "sdpa"  # the only implementation this replaces: flash-attn is already one varlen call, eager is asked for
SEGMENTS = "metaembed_segments"  # keyword argument that carries a SegmentPlan from the hook to the attention function


class SegmentPlan:
    """How one `cu_seqlens` splits the packed sequence into groups of equal-length segments.

    Built once per `cu_seqlens` tensor (the tower passes the same tensor to every block of a kind), so its host
    sync and index building are paid twice per forward pass, not in every block. `whole` stays on the device of
    `cu_seqlens`, as the module expects, although its split of that one segment costs a small sync per block."""

    def __init__(self, cu_seqlens: torch.Tensor):
        bounds = [int(b) for b in cu_seqlens.tolist()]
        if not bounds or bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must rise from 0, got {bounds[:8]}")
        self.total = bounds[-1]
        starts: dict[int, list[int]] = {}
        for a, b in zip(bounds, bounds[1:]):
            if b > a:  # Qwen2.5-VL's window index can repeat a boundary: an empty window, nothing to attend
                starts.setdefault(b - a, []).append(a)
        self.lengths = sorted(starts)
        self.counts = [len(starts[n]) for n in self.lengths]
        device = cu_seqlens.device
        # The whole sequence as one segment, for the module's own per-segment split.
        self.whole = torch.tensor([0, self.total], dtype=cu_seqlens.dtype, device=device)
        self.index: list[torch.Tensor] | None = None
        self.inverse: torch.Tensor | None = None
        if len(self.lengths) > 1:
            # Token positions of each group's segments, in order; `inverse` puts the groups' outputs, concatenated,
            # back in sequence order with one gather.
            self.index = []
            for n in self.lengths:
                first = torch.tensor(starts[n], device=device)
                self.index.append((first[:, None] + torch.arange(n, device=device)).reshape(-1))
            self.inverse = torch.argsort(torch.cat(self.index))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
               dropout: float = 0.0, is_causal: bool = False) -> torch.Tensor:
        """Attention within each segment: q, k, v and the result are [S, heads, head_dim]."""
        if q.shape[0] != self.total:
            raise ValueError(f"cu_seqlens covers {self.total} tokens but the sequence has {q.shape[0]}")

        def batched(n: int, m: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # [m * n, H, D] -> m segments of n tokens on the batch dimension, heads before tokens as sdpa wants.
            q, k, v = (t.reshape(m, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale, is_causal=is_causal)
            _, heads, _, head_dim = out.shape
            return out.transpose(1, 2).reshape(m * n, heads, head_dim)

        if self.index is None:  # one length (448 px photos: every window, and every image): a reshape, no copy
            if not self.lengths:
                return q.clone()
            return batched(self.lengths[0], self.counts[0], q, k, v)
        parts = [batched(n, m, q.index_select(0, i), k.index_select(0, i), v.index_select(0, i))
                 for n, m, i in zip(self.lengths, self.counts, self.index)]
        return torch.cat(parts).index_select(0, self.inverse)


def grouped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-function contract: [1, H, S, D] inputs -> ([1, S, H, D], no weights)."""
    plan = kwargs.get(SEGMENTS)
    if not isinstance(plan, SegmentPlan):
        # Without the hook's plan the segments are unknown, and attending over the whole sequence would be wrong.
        raise RuntimeError(f"attention implementation {GROUPED!r} is only for Qwen-VL vision towers set up by "
                           "GroupedVisionAttention (the segment plan is missing)")
    if attention_mask is not None or query.shape[0] != 1 or key.shape[1] != query.shape[1]:
        raise ValueError(f"{GROUPED!r} expects one packed sequence, no mask and as many key as query heads")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = plan.attend(q, k, v, scale=scaling, dropout=dropout, is_causal=bool(is_causal))
    return out.unsqueeze(0), None


class GroupedVisionAttention:
    """The grouped attention installed on one Qwen-VL model's vision tower; `enabled` switches it on and off."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self.configs = list({id(m.config): m.config for m in modules}.values())
        self._plans: dict[int, tuple[torch.Tensor, SegmentPlan]] = {}
        self._hooks = [m.register_forward_pre_hook(self._pre_hook, with_kwargs=True) for m in modules]

    # ---- setup --------------------------------------------------------------------------------------
    @classmethod
    def install(cls, model: nn.Module) -> GroupedVisionAttention | None:
        """Install on `model` (a Qwen2-VL / Qwen2.5-VL model) and switch it on, or log why not and return None."""
        modules, problem = vision_attention_modules(model)
        if problem:
            log.warning("grouped vision attention not used: %s; the vision tower keeps transformers' per-segment "
                        "sdpa calls", problem)
            return None
        implementations = {m.config._attn_implementation for m in modules}
        if implementations != {STOCK}:
            log.info("grouped vision attention not used: the vision tower runs %s, not %r",
                     sorted(map(str, implementations)), STOCK)
            return None
        from transformers import AttentionInterface

        AttentionInterface.register(GROUPED, grouped_attention)
        grouped = cls(modules)
        try:
            error = grouped.self_check()
        except Exception as e:  # noqa: BLE001 - any failure means the structure is not the one expected
            error = f"{type(e).__name__}: {e}"
        if error is not None:
            grouped.remove()
            log.warning("grouped vision attention not used: on a test input it differs from the stock attention "
                        "(%s); the vision tower keeps transformers' per-segment sdpa calls", error)
            return None
        grouped.enabled = True
        return grouped

    def self_check(self) -> str | None:
        """Run the first attention module both ways on three segments of two lengths: None if they agree."""
        module = self.modules[0]
        param = module.qkv.weight
        dim, heads = module.qkv.in_features, module.num_heads
        head_dim = dim // heads
        gen = torch.Generator().manual_seed(0)
        cu = torch.tensor([0, 3, 8, 13], dtype=torch.int32, device=param.device)
        hidden = torch.randn(13, dim, generator=gen).to(param.device, param.dtype)
        angles = torch.rand(13, head_dim // 2, generator=gen) * 2 * math.pi
        emb = torch.cat([angles, angles], dim=-1).to(param.device)
        rope = (emb.cos(), emb.sin())
        outs = []
        with torch.no_grad():
            for on in (False, True):
                self.enabled = on
                outs.append(module(hidden, cu_seqlens=cu, position_embeddings=rope).float())
        self.enabled = False
        stock, ours = outs
        tolerance = 1e-4 if param.dtype == torch.float32 else 3e-2
        err = float((ours - stock).abs().max() / stock.abs().max().clamp_min(1e-6))
        return None if err <= tolerance else f"relative difference {err:.2e} > {tolerance:g}"

    def remove(self) -> None:
        """Back to the stock attention for good: the hooks go, the configs name the stock implementation."""
        self.enabled = False
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ---- switch -------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self._hooks) and all(c._attn_implementation == GROUPED for c in self.configs)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if on and not self._hooks:
            raise RuntimeError("this grouped vision attention was removed; install it again")
        for c in self.configs:
            c._attn_implementation = GROUPED if on else STOCK
        self._plans.clear()

    # ---- per call -----------------------------------------------------------------------------------
    def _plan(self, cu_seqlens: torch.Tensor) -> SegmentPlan:
        # Keyed by the tensor itself: an entry holds its tensor, so the id cannot be reused while it is cached.
        # transformers builds cu_seqlens afresh for each forward pass and never writes to it.
        entry = self._plans.get(id(cu_seqlens))
        if entry is not None and entry[0] is cu_seqlens:
            return entry[1]
        if len(self._plans) >= 8:  # a forward pass uses two (windows, whole images); older ones are done with
            self._plans.clear()
        plan = SegmentPlan(cu_seqlens)
        self._plans[id(cu_seqlens)] = (cu_seqlens, plan)
        return plan

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if module.config._attn_implementation != GROUPED:
            return None
        positional = len(args) > 1
        cu = args[1] if positional else kwargs.get("cu_seqlens")
        if cu is None:
            raise RuntimeError("the vision attention was called without cu_seqlens")
        plan = self._plan(cu)
        kwargs = {**kwargs, SEGMENTS: plan}
        if positional:
            args = (args[0], plan.whole, *args[2:])
        else:
            kwargs["cu_seqlens"] = plan.whole
        return args, kwargs


def vision_attention_modules(model: nn.Module) -> tuple[list[nn.Module], str | None]:
    """The attention modules of `model`'s vision tower, or a reason why they are not the kind this handles."""
    visual = getattr(model, "visual", None)
    blocks = getattr(visual, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return [], f"{type(model).__name__} has no `visual.blocks`"
    modules = [getattr(b, "attn", None) for b in blocks]
    for m in modules:
        if m is None or not all(hasattr(m, a) for a in ("qkv", "proj", "num_heads", "config")):
            return [], f"vision block attention {type(m).__name__} lacks qkv / proj / num_heads / config"
        params = inspect.signature(m.forward).parameters
        if "cu_seqlens" not in params or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return [], f"{type(m).__name__}.forward does not take cu_seqlens and **kwargs"
    return modules, None
