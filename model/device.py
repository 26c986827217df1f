"""Where the model runs: the default device, the CPU's bf16 capability (shared by MetaEmbed and the visual
tokenizer's classifier) and the CPU's name (for reports and benchmarks)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch


def target_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or by default the GPU when there is one."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_dtype(device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype weights are kept in on `device`: `dtype` if given, else bf16 on a GPU and fp32 on CPU (CPU
    bf16 is for storing and scoring vectors; the encoder itself runs fp32 weights, under autocast where bf16
    is native)."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if target_device(device).type == "cuda" else torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-bf16 or AMX): without them bf16 is emulated and slower
    than fp32."""
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 9B14"), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
