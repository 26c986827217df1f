"""The search's switch-over: when a query scores every item exactly, and when it takes the two-stage path
(app.store.first_stage picks FIRST_STAGE_DEPTH items by their first vector, which are re-scored exactly).

Exact MaxSim costs about items x r_c x D "units" (every candidate vector of the budget, every dimension),
at a price per unit that depends on the CPU far more than on anything else we know: with native bf16
(AVX512-bf16 or AMX) ~0.39 ns (~50 ns per 128-d item-vector, memory-bound, whatever r_q); without it torch
emulates the bf16 GEMMs and a unit costs 0.9-2.6 ns on the 2-core AVX2 machine (two threads, load 3.5; more
at the larger r_q, up to 3.7 ns at load 10). From 8 query vectors that CPU scores in fp32 blocks instead
(model/scoring.py): 0.8-1.5 ns per unit at (8, 16) and (16, 64) over 10,000 384-d items at load 3-4, so the
same price class. A collection is scored exactly while that estimate stays within
EXACT_MS; above, the first stage costs a fraction of it: at 10,000 items of the bundled model's 384-d
vectors on the AVX2 machine, (16, 64) took 86 ms against 629 ms exact and (8, 16) 23 against 131 ms, at
recall@10 0.983 and 0.995 of exact. See docs/benchmarks.md ("Index and search") and bench/search.py switch.

The CPU is classed by its bf16 capability rather than by timing a GEMM when the process starts: on the
shared machine the same exact search swung 1.3-2.2x between runs with the load, which a one-off measurement
would freeze into the switch for the process's life (and make the path, hence the results, depend on what
ran at start-up), while the two classes differ 2.3-6.6x per unit. Where bf16 is emulated, the fused kernel's
fp32 variant (model/maxsim_kernel.c, AVX2), when it loads, scores instead of torch's paths, at 0.3-0.6 ns per
unit (docs/benchmarks.md, "Index and search": the switch-over with the fused kernel), a price of its own.
"""

from __future__ import annotations

from model import maxsim_kernel
from model.device import cpu_has_native_bf16

FIRST_STAGE_DEPTH = 1_000  # items the first stage hands to the exact re-rank (recall@10 0.98+ at 10,000)
EXACT_MS = 32.0  # what an exact search may cost before the first stage takes over
# Nanoseconds per unit of exact work (item x candidate vector x dimension), per CPU class. Native: 50 ns per
# 128-d item-vector, which keeps the switch where it was (640,000 item-vectors of 128-d: 10,000 items at
# (16, 64)), and with the fused kernel Index.search took 0.28-0.42 ns per unit at (8, 16) and (16, 64) on an
# AMD Zen 4 without AMX, so it stands; emulated, torch's paths: the middle of the 0.9-2.6 ns measured on an
# AVX2-only CPU, so that at 10,000 384-d items (2, 4) (14-24 ms there) stays exact and (4, 8) (39-80 ms) does not.
NS_PER_UNIT_NATIVE_BF16 = 50 / 128
NS_PER_UNIT_EMULATED_BF16 = 2.0  # torch's paths
# Emulated bf16 with the fused kernel's fp32 variant: the top of the 0.3-0.6 ns per unit that Index.search
# took exact from (4, 8) to (16, 64) (10,000 384-d and 20,000 128-d items, on an AMD Zen 4's AVX2 units, the
# CPU classed as emulated), so that at 10,000 384-d items (4, 8) (14-16 ms there) is exact and (8, 16)
# (25-36 ms) is not.
NS_PER_UNIT_FP32_KERNEL = 0.6


def fp32_kernel_scores(dim: int = 8) -> bool:
    """Whether the fused kernel's fp32 variant loads here and takes `dim`-d vectors (the default: a multiple
    of 8, which it always takes): what model.scoring runs where bf16 is emulated (model.scoring._compute_dtype)."""
    kernel = maxsim_kernel.load()
    return kernel is not None and kernel.takes(maxsim_kernel.F32, dim)


def exact_work_budget(native_bf16: bool | None = None, fp32_kernel: bool | None = None, dim: int = 8) -> int:
    """The most items x r_c x D an exact search of `dim`-d vectors may score on this CPU, or on one with or
    without native bf16 and, where bf16 is emulated, with or without the fused kernel's fp32 variant (None:
    as here, `fp32_kernel_scores`)."""
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        ns = NS_PER_UNIT_NATIVE_BF16
    else:
        if fp32_kernel is None:
            fp32_kernel = fp32_kernel_scores(dim)
        ns = NS_PER_UNIT_FP32_KERNEL if fp32_kernel else NS_PER_UNIT_EMULATED_BF16
    return int(EXACT_MS * 1e6 / ns)


def uses_exact(count: int, r_c: int, dim: int, *, depth: int | None = None,
               native_bf16: bool | None = None, fp32_kernel: bool | None = None) -> bool:
    """Whether `count` items of r_c x `dim` vectors per budget are scored exactly rather than two-stage.

    Exact while the first stage would hand all of them to the re-rank anyway (count <= depth: the same work
    plus an IVF to build), or while items x r_c x dim fits this CPU's exact work budget for `dim`-d vectors.
    """
    depth = FIRST_STAGE_DEPTH if depth is None else depth
    return count <= depth or count * r_c * dim <= exact_work_budget(native_bf16, fp32_kernel, dim)
