"""Where the model runs: the default device and the CPU's bf16 capability (shared by MetaEmbed and the
visual tokenizer's classifier)."""

from __future__ import annotations

import functools

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-bf16 or AMX): without them bf16 is emulated and slower
    than fp32."""
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False
