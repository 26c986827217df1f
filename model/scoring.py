"""MaxSim late-interaction scoring with Matryoshka budgets.

score(q, c) at budget (r_q, r_c) = sum over the first r_q query vectors of the max dot product with
the first r_c candidate vectors. Everything here is inference-only (no autograd) except `maxsim_dense`,
the differentiable fp32 form that training's loss scores with.

Speed comes from the candidate layout: `CandidateStore` keeps candidates vector-major, ``[R_c, N, D]``
in bf16, so the j-th vector of every candidate is one contiguous ``[N, D]`` matrix and any budget prefix
``[:r_c]`` is a contiguous block. Scoring is then plain bf16 GEMMs of the query rows against those
matrices (several vectors per GEMM when they lie back to back), folded with a running max; see
`_score_vector_major`, bench/maxsim.py and docs/benchmarks.md for the formulations measured against it.
On a CPU that only emulates bf16 (e.g. AVX2 without AVX512-bf16) those GEMMs are slower than fp32 ones, so
there the stored vectors are converted to fp32 block by block and scored in fp32 (`_score_fp32_blocks`),
which is also how the precise path scores everywhere. The torch thread count scoring runs at is chosen per
CPU in model/scoring_threads.py.
Where the fused C kernel builds (model/maxsim_kernel.py: any C compiler, an x86-64 CPU with AVX2) it replaces
all of these: its products never leave the registers, and it reads the stored bf16 vectors in place. It scores
bf16 query rows where the CPU has AVX512-BF16 and fp32 rows elsewhere and on the precise path, split into one
range of candidates per thread of the caller (docs/benchmarks.md, "MaxSim scoring").
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import maxsim_kernel
from .device import cpu_has_native_bf16
from .scoring_threads import lane_count, run_lanes, run_scoring

__all__ = ["CandidateStore", "explain", "fast_path_is_precise", "maxsim", "maxsim_dense", "near_top",
           "scores_in_place"]

_STORE_DTYPE = torch.bfloat16
# Bound on each scoring buffer (query rows x candidates [x grouped vectors]): 16M bf16 elements = 32 MiB.
# Scoring memory stays bounded whatever N is, while blocks are big enough to keep the op count low
# (see _score_vector_major and bench/maxsim.py --variants).
_BLOCK_ELEMENTS = 1 << 24
# Elements of one converted or gathered [r_c, k, D] slice (16M = 32 MiB of bf16): functional maxsim and
# scoring by indices copy candidates into the fast layout slice by slice, so memory stays bounded.
_GATHER_ELEMENTS = 1 << 24
# The fp32 path (`_score_fp32_blocks`): candidate vectors converted per block (512K values = 2 MiB of fp32,
# so a block is still in cache when its GEMM reads it, with two lanes sharing the cache) and per GEMM (8
# vectors of the same candidates); the query rows from which a CPU without native bf16 takes it over the
# bf16 GEMMs, and from which its GEMMs put candidates first. Measured with bench/maxsim.py on the 2-core
# AVX2 EPYC (docs/benchmarks.md, "MaxSim scoring").
_FP32_BLOCK_ELEMENTS = 1 << 19
_FP32_GROUP = 8
_FP32_MIN_ROWS = 8
_FP32_CANDIDATES_FIRST_ROWS = 16
_FP32_LANE_MIN = 256  # candidates below which another lane costs more (a hand-off) than it saves
# The fused kernel: query rows per call (its running maxima, rows x a tile of candidates, stay in cache), and
# the multiply-adds below which a second lane costs more (a hand-off of ~50 us) than it saves.
_KERNEL_ROWS = 64
_KERNEL_LANE_WORK = 1 << 22
_GROWTH = 1.5  # capacity factor on append: amortised O(1) per row without doubling a large store


# ---------------------------------------------------------------------------------------------------------
# Validation helpers: every failure is a ValueError that names the argument and what is allowed.


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__qualname__}")
    if not (x.is_floating_point()):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_queries(q: object) -> Tensor:
    q = _check_tensor(q, "q")
    if q.ndim != 3:
        hint = " (for a single query use q.unsqueeze(0))" if q.ndim == 2 else ""
        raise ValueError(f"q must have shape [Bq, R_q, D] (3 dims), got shape {tuple(q.shape)}{hint}")
    bq, rq, d = q.shape
    if bq == 0:
        raise ValueError("q is an empty query batch (Bq=0); at least one query is required")
    if rq == 0:
        raise ValueError("q has 0 vectors per query (R_q=0); at least one is required")
    if d == 0:
        raise ValueError("q has vector dimension D=0; D must be at least 1")
    return q


def _check_candidates(c: object, name: str = "c") -> Tensor:
    c = _check_tensor(c, name)
    if c.ndim != 3:
        hint = " (for a single candidate use c.unsqueeze(0))" if c.ndim == 2 else ""
        raise ValueError(f"{name} must have shape [N, R_c, D] (3 dims), got shape {tuple(c.shape)}{hint}")
    if c.shape[1] == 0:
        raise ValueError(f"{name} has 0 vectors per candidate (R_c=0); at least one is required")
    if c.shape[2] == 0:
        raise ValueError(f"{name} has vector dimension D=0; D must be at least 1")
    return c


def _check_dims(d_q: int, d_c: int) -> None:
    if d_q != d_c:
        raise ValueError(f"dimension mismatch: queries have D={d_q}, candidates have D={d_c}")


def _resolve_budget(budget: object, rq: int, rc: int) -> tuple[int, int]:
    """Turn budget (None or (r_q, r_c)) into a validated (r_q, r_c) pair."""
    if budget is None:
        return rq, rc
    if (
        not isinstance(budget, Sequence)
        or isinstance(budget, str)
        or len(budget) != 2
        or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in budget)
    ):
        raise ValueError(f"budget must be None or a pair of ints (r_q, r_c), got {budget!r}")
    r_q, r_c = int(budget[0]), int(budget[1])
    if not 1 <= r_q <= rq:
        raise ValueError(f"budget r_q={r_q} is out of range: queries have {rq} vectors, allowed 1..{rq}")
    if not 1 <= r_c <= rc:
        raise ValueError(f"budget r_c={r_c} is out of range: candidates have {rc} vectors, allowed 1..{rc}")
    return r_q, r_c


def _check_indices(indices: object, n: int, what: str) -> Tensor:
    """1-D int64 tensor of row indices, each in [0, n)."""
    if isinstance(indices, Tensor):
        idx = indices.detach().cpu()
    else:
        try:
            idx = torch.as_tensor(np.asarray(indices))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{what}: indices must be a 1-D sequence of ints, got {indices!r}") from err
    if idx.dtype == torch.bool:
        raise ValueError(f"{what}: indices must be ints, got a bool mask (use keep(mask) for masks)")
    if idx.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex():
        raise ValueError(
            f"{what}: indices must be a 1-D sequence of ints, got dtype {idx.dtype} shape {tuple(idx.shape)}"
        )
    idx = idx.long()
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{what}: index {bad} is out of range for a store of {n} candidates (allowed 0..{n - 1})"
        )
    return idx


# ---------------------------------------------------------------------------------------------------------
# Scoring core.


def _query_rows(q: Tensor, r_q: int, dtype: torch.dtype = _STORE_DTYPE) -> Tensor:
    """[Bq, R_q, D] -> [Bq * r_q, D] (bf16 unless told), query-major, so rows of one query are adjacent."""
    return q[:, :r_q].detach().to(device="cpu", dtype=dtype).reshape(-1, q.shape[2]).contiguous()


def _score_vector_major(rows: Tensor, vm: Tensor, bq: int, r_q: int, r_c: int) -> Tensor:
    """MaxSim of query rows [Bq*r_q, D] against vector-major candidates vm [>=r_c, n, D] -> [Bq, n] fp32.

    Running max over the candidate vectors: S = max_j rows @ vm[j].T, then each query sums its r_q rows.
    The number of torch ops matters more than anything else once other processes share the cores (each
    op is a two-thread parallel region that waits for both threads), so ops are made as large as the
    memory bound allows:
    - candidates are taken in chunks of up to _BLOCK_ELEMENTS // rows (usually all of them at once);
    - when a chunk is the whole set and the vectors lie back to back (no spare capacity), vm[j0:j1] is
      one [k*n, D] matrix, so one GEMM covers k vectors and one amax folds them.
    """
    n, d = vm.shape[1], vm.shape[2]
    out = torch.empty(bq, n, dtype=torch.float32)
    if n == 0:
        return out
    n_rows = rows.shape[0]
    chunk = min(n, max(1024, _BLOCK_ELEMENTS // n_rows))
    group, flat = 1, None
    if chunk == n and r_c > 1 and vm[:r_c].is_contiguous():
        group = max(1, min(r_c, _BLOCK_ELEMENTS // (n_rows * n)))
        flat = vm[:r_c].view(r_c * n, d)
    run_buf = torch.empty(n_rows * chunk, dtype=rows.dtype)
    sim_buf = torch.empty(n_rows * chunk * group, dtype=rows.dtype) if r_c > 1 else None
    max_buf = torch.empty(n_rows * chunk, dtype=rows.dtype) if group > 1 and r_c > group else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        m = e - s
        # Flat buffers viewed at the exact size: a shorter last chunk must stay contiguous for out=.
        run = run_buf[: n_rows * m].view(n_rows, m)
        for j0 in range(0, r_c, group):
            j1 = min(r_c, j0 + group)
            k = j1 - j0
            block = vm[j0, s:e] if flat is None else flat[j0 * n : j1 * n]
            if j0 == 0 and k == 1:
                torch.mm(rows, block.T, out=run)
                continue
            sim = sim_buf[: n_rows * k * m].view(n_rows, k * m)
            torch.mm(rows, block.T, out=sim)
            if j0 == 0:
                torch.amax(sim.view(n_rows, k, m), dim=1, out=run)
                continue
            if k > 1:
                best = max_buf[: n_rows * m].view(n_rows, m)
                torch.amax(sim.view(n_rows, k, m), dim=1, out=best)
            else:
                best = sim
            torch.maximum(run, best, out=run)
        torch.sum(run.view(bq, r_q, m), dim=1, dtype=torch.float32, out=out[:, s:e])
    return out


def _score_fp32_blocks(rows: Tensor, vm: Tensor, bq: int, r_q: int, r_c: int,
                       idx: Tensor | None = None) -> Tensor:
    """`_score_fp32_lane` on one-thread lanes (model.scoring_threads.run_lanes), the candidates split into one
    contiguous range per lane: as many lanes as the caller has torch threads (`lane_count`: one where torch's
    count is process-wide), each of _FP32_LANE_MIN candidates or more."""
    n = vm.shape[1] if idx is None else idx.numel()
    lanes = max(1, min(lane_count(), n // _FP32_LANE_MIN))
    bounds = [n * i // lanes for i in range(lanes + 1)]
    parts = run_lanes([
        (lambda s=s, e=e: _score_fp32_lane(rows, vm[:, s:e] if idx is None else vm, bq, r_q, r_c,
                                           None if idx is None else idx[s:e]))
        for s, e in zip(bounds, bounds[1:], strict=False)
    ])
    return torch.cat(parts, dim=1)


def _score_fp32_lane(rows: Tensor, vm: Tensor, bq: int, r_q: int, r_c: int,
                     idx: Tensor | None = None) -> Tensor:
    """MaxSim of fp32 query rows [Bq*r_q, D] against vector-major candidates vm [>=r_c, n, D] (bf16 or
    fp32; only the candidates `idx` when given, in that order), in fp32 throughout -> [Bq, n] fp32.

    Blocks of candidates are converted (and gathered) into one fp32 buffer small enough to stay in cache and
    multiplied with the query rows, k vectors per GEMM, folded by a running max. The GEMM's orientation
    follows the row count: MKL's sgemm ran rows @ block.T 3-4x faster than block @ rows.T for 2-8 rows, and
    the other way round about 1.1-1.2x faster from 16 rows (one thread, AVX2; docs/benchmarks.md).
    """
    n = vm.shape[1] if idx is None else idx.numel()
    d, n_rows = vm.shape[2], rows.shape[0]
    if n == 0:
        return torch.empty(bq, 0, dtype=torch.float32)
    group = min(r_c, _FP32_GROUP)
    m = min(n, max(64, _FP32_BLOCK_ELEMENTS // (group * max(d, n_rows))))
    rows_first = n_rows < _FP32_CANDIDATES_FIRST_ROWS
    # The similarities of one block as [rows, k, m] (rows first) or [k, m, rows] (candidates first).
    k_dim = 1 if rows_first else 0
    rows_t = rows.T.contiguous()
    out = torch.empty((bq, n) if rows_first else (n, bq), dtype=torch.float32)
    buf = torch.empty(group * m * d, dtype=torch.float32)
    sim_buf = torch.empty(group * m * n_rows, dtype=torch.float32)
    run_buf = torch.empty(m * n_rows, dtype=torch.float32)
    best_buf = torch.empty(m * n_rows, dtype=torch.float32) if r_c > group else None
    for s in range(0, n, m):
        e = min(n, s + m)
        w = e - s
        shape = (n_rows, w) if rows_first else (w, n_rows)
        run = run_buf[: w * n_rows].view(shape)
        for j0 in range(0, r_c, group):
            j1 = min(r_c, j0 + group)
            k = j1 - j0
            block = buf[: k * w * d].view(k, w, d)
            block.copy_(vm[j0:j1, s:e] if idx is None else vm[j0:j1].index_select(1, idx[s:e]))
            flat = block.view(k * w, d)
            sim = run if j0 == 0 and k == 1 else sim_buf[: k * w * n_rows].view(
                (n_rows, k * w) if rows_first else (k * w, n_rows))
            if rows_first:
                torch.mm(rows, flat.T, out=sim)
            else:
                torch.mm(flat, rows_t, out=sim)
            if sim is run:
                continue
            best = run if j0 == 0 else best_buf[: w * n_rows].view(shape)
            if k > 1:
                folded = (n_rows, k, w) if rows_first else (k, w, n_rows)
                torch.amax(sim.view(folded), dim=k_dim, out=best)
            else:
                best = sim
            if j0 > 0:
                torch.maximum(run, best, out=run)
        if rows_first:
            torch.sum(run.view(bq, r_q, w), dim=1, out=out[:, s:e])
        else:
            torch.sum(run.view(w, bq, r_q), dim=2, out=out[s:e])
    return out if rows_first else out.T.contiguous()


def _kernel_variant(dtype: torch.dtype, dim: int) -> int | None:
    """The fused kernel's variant that scores query rows of `dtype` (fp32 or bf16) at `dim`, or None where it
    cannot."""
    kernel = maxsim_kernel.load()
    if kernel is None:
        return None
    variant = maxsim_kernel.F32 if dtype == torch.float32 else maxsim_kernel.BF16
    return variant if kernel.takes(variant, dim) else None


def _score_kernel(variant: int, rows: Tensor, vm: Tensor, bq: int, r_q: int, r_c: int,
                  idx: Tensor | None = None) -> Tensor:
    """MaxSim of query rows [Bq*r_q, D] against vector-major bf16 candidates vm [>=r_c, n, D] (only the
    candidates `idx` when given, in that order) with the fused kernel -> [Bq, n] fp32.

    The candidates are split into one range per lane (`lane_count`: the caller's torch threads), each scored
    by one call of the kernel on a one-thread worker (ctypes lets go of the GIL), so no call waits on another.
    """
    kernel = maxsim_kernel.load()
    n = vm.shape[1] if idx is None else idx.numel()
    out = torch.empty(bq, n, dtype=torch.float32)
    if n == 0:
        return out
    lanes = max(1, min(lane_count(), rows.shape[0] * r_c * vm.shape[2] * n // _KERNEL_LANE_WORK))
    bounds = [n * i // lanes for i in range(lanes + 1)]
    per_call = max(1, _KERNEL_ROWS // r_q)  # queries per call

    def lane(s: int, e: int) -> None:
        for b0 in range(0, bq, per_call):
            b1 = min(bq, b0 + per_call)
            kernel.score(variant, rows[b0 * r_q : b1 * r_q], vm if idx is not None else vm[:, s:e], r_c, r_q,
                         out[b0:b1, s:e], None if idx is None else idx[s:e])

    if lanes == 1:
        lane(0, n)  # here: a hand-off to a worker would cost more than the call
    else:
        run_lanes([(lambda s=s, e=e: lane(s, e)) for s, e in zip(bounds, bounds[1:], strict=False)])
    return out


def scores_in_place(n_rows: int, dim: int, precise: bool = False) -> bool:
    """Whether `CandidateStore.maxsim(indices=...)` scores the chosen candidates where they lie, with no copy
    of them made first: the fused kernel reads them by index, torch's fp32 blocks widen them block by block;
    only torch's bf16 GEMMs gather them. So a caller holding candidates scattered over a big store can score
    them there instead of gathering them into a store of their own (app.store.segments.View.score_rows)."""
    dtype = _compute_dtype(n_rows, precise)
    return dtype == torch.float32 or _kernel_variant(dtype, dim) is not None


def fast_path_is_precise(n_rows: int) -> bool:
    """Whether `CandidateStore.maxsim` (and `maxsim`) score `n_rows` query rows (Bq * r_q) in fp32 on this
    CPU, so that their scores are already the precise ones and a `near_top` re-scoring changes nothing."""
    return _compute_dtype(n_rows, precise=False) == torch.float32


def _compute_dtype(n_rows: int, precise: bool) -> torch.dtype:
    """fp32 for the precise path. Otherwise, with the fused kernel: bf16 where the CPU computes it natively,
    fp32 elsewhere (the kernel reads the stored bf16 either way). With torch's paths: fp32 where the CPU
    emulates bf16 and there are enough query rows for the GEMMs rather than the reading of the vectors to
    dominate (below that, reading half the bytes wins). The choice does not look at D: where the kernel cannot
    take it (odd, or for fp32 not a multiple of 8) torch's path scores in the same dtype, so that
    `fast_path_is_precise`, which callers ask without D, stays true to what runs."""
    if precise:
        return torch.float32
    kernel = maxsim_kernel.load()
    native = cpu_has_native_bf16()
    if kernel is not None and kernel.features & (1 << (maxsim_kernel.BF16 if native else maxsim_kernel.F32)):
        return _STORE_DTYPE if native else torch.float32
    if n_rows >= _FP32_MIN_ROWS and not native:
        return torch.float32
    return _STORE_DTYPE


def _score_in_slices(
    rows: Tensor, bq: int, r_q: int, r_c: int, n: int, block: Callable[[int, int], Tensor],
    variant: int | None = None,
) -> Tensor:
    """Score candidates that first need copying into the fast layout, one bounded slice at a time.

    block(s, e) returns candidates s..e as a vector-major [r_c, e - s, D] bf16 tensor; slices hold at most
    _GATHER_ELEMENTS values so converting or gathering never copies more than one slice at once. Each slice is
    scored by the fused kernel's `variant` when given, else fp32 rows in fp32 (`_score_fp32_blocks`) and bf16
    rows with bf16 GEMMs.
    """
    out = torch.empty(bq, n, dtype=torch.float32)
    step = max(256, _GATHER_ELEMENTS // (r_c * rows.shape[1]))
    if variant is not None:
        score = functools.partial(_score_kernel, variant)
    else:
        score = _score_fp32_blocks if rows.dtype == torch.float32 else _score_vector_major
    for s in range(0, n, step):
        e = min(n, s + step)
        out[:, s:e] = score(rows, block(s, e), bq, r_q, r_c)
    return out


@torch.no_grad()
def maxsim(q: Tensor, c: Tensor, budget: tuple[int, int] | None = None) -> Tensor:
    """MaxSim scores of every query against every candidate.

    q: [Bq, R_q, D] queries; c: [N, R_c, D] candidates (any float dtype). budget=(r_q, r_c) scores with the
    first r_q query vectors and first r_c candidate vectors; None uses all of them. Candidates are rounded to
    bf16 (the store's layout) and scored like `CandidateStore.maxsim`; returns [Bq, N] float32. c is converted
    to the vector-major bf16 layout on every call: to score the same candidates repeatedly, build a
    `CandidateStore` once.
    """
    q = _check_queries(q)
    c = _check_candidates(c)
    _check_dims(q.shape[2], c.shape[2])
    r_q, r_c = _resolve_budget(budget, q.shape[1], c.shape[1])
    c = c[:, :r_c].detach()
    rows = _query_rows(q, r_q, _compute_dtype(q.shape[0] * r_q, precise=False))

    def block(s: int, e: int) -> Tensor:
        return c[s:e].to(device="cpu", dtype=_STORE_DTYPE).transpose(0, 1).contiguous()

    variant = _kernel_variant(rows.dtype, rows.shape[1])

    def score() -> Tensor:
        return _score_in_slices(rows, q.shape[0], r_q, r_c, c.shape[0], block, variant)

    if variant is not None:
        return score()  # the kernel splits itself into lanes
    return run_scoring(score, rows.dtype)  # at the thread count measured fastest on this CPU


def maxsim_dense(q: Tensor, c: Tensor) -> Tensor:
    """Differentiable MaxSim of every query against every candidate: [B, rq, D] x [N, rc, D] -> [B, N].

    No validation, budget or bf16 layout: the loss calls it on prefixes it has already sliced, in the
    inputs' own dtype, and needs the gradient.
    """
    sim = torch.einsum("bqd,ncd->bnqc", q, c)
    return sim.amax(dim=-1).sum(dim=-1)


@torch.no_grad()
def explain(q: Tensor, c: Tensor, budget: tuple[int, int] | None = None) -> dict:
    """Per-token breakdown of one query/candidate MaxSim, in fp32.

    q: [R_q, D], c: [R_c, D]. Returns a dict with
      sim: [r_q, r_c] float32 dot products of the budget prefixes,
      argmax: [r_q] int64, the candidate vector that wins each query vector,
      contributions: [r_q] float32, each query vector's max similarity (they sum to score),
      score: float, the MaxSim at this budget (matches `maxsim` up to its bf16 rounding).
    """
    q = _check_tensor(q, "q")
    c = _check_tensor(c, "c")
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(
            f"explain: q must be one query of shape [R_q, D] with R_q, D >= 1, got {tuple(q.shape)}"
        )
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(
            f"explain: c must be one candidate of shape [R_c, D] with R_c, D >= 1, got {tuple(c.shape)}"
        )
    _check_dims(q.shape[1], c.shape[1])
    r_q, r_c = _resolve_budget(budget, q.shape[0], c.shape[0])
    sim = q[:r_q].detach().cpu().float() @ c[:r_c].detach().cpu().float().T
    contributions, argmax = sim.max(dim=1)
    return {
        "sim": sim,
        "argmax": argmax,
        "contributions": contributions,
        "score": float(contributions.double().sum()),
    }


def near_top(scores: Tensor, k: int, r_q: int, limit: int = 256) -> Tensor:
    """Positions in 1-D fast-path `scores` that may belong to the precise top k, best first, at most
    max(k, limit): every score within r_q / 128 of the k-th best. That is the widest two candidates' fast
    scores can be misordered: each of the r_q terms is off by at most 2^-8 (bf16 query, bf16 result, unit
    vectors). Rescore these with `CandidateStore.maxsim(..., precise=True)`."""
    if scores.ndim != 1:
        raise ValueError(f"near_top: scores must be 1-D, got shape {tuple(scores.shape)}")
    if k < 1 or r_q < 1:
        raise ValueError(f"near_top: k and r_q must be >= 1, got k={k}, r_q={r_q}")
    m = max(k, limit)
    order = None
    if scores.numel() > 4 * m:
        # A full sort of a large collection's scores cost more than scoring it (100,000 items: ~10 ms against
        # ~0.4 ms for topk). The m best by topk give the floor; everything at or above it (more than m only on
        # ties) is sorted stably, so the order is the full stable sort's: best first, ties by position.
        floor = torch.topk(scores, m, sorted=False).values.min()
        at_least = torch.nonzero(scores >= floor).squeeze(1)
        if at_least.numel() >= m:  # fewer only where NaNs made the floor meaningless: sort everything then
            order = at_least[torch.argsort(scores[at_least], descending=True, stable=True)][:m]
    if order is None:
        order = torch.argsort(scores, descending=True, stable=True)[:m]
    if order.numel() <= k:
        return order
    kth = scores[order[k - 1]]
    return order[scores[order] >= kth - r_q / 128.0]


# ---------------------------------------------------------------------------------------------------------


class CandidateStore:
    """Candidates held in the fast scoring layout: vector-major [R_c, N, D] bf16 on CPU.

    The buffer may have spare capacity along N (for cheap appends), so `vector_major()` returns a view
    that is contiguous per vector but not across vectors. Stores built by `from_vector_major` share the
    caller's memory (e.g. a read-only memmap) and never write into it: append/remove/keep reallocate.
    """

    def __init__(self, c: Tensor | None = None, *, dim: int | None = None, num_vectors: int | None = None):
        if c is None:
            if dim is None or num_vectors is None:
                raise ValueError(
                    "CandidateStore needs candidates c, or both dim= and num_vectors= for an empty store"
                )
            for name, v in (("dim", dim), ("num_vectors", num_vectors)):
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"CandidateStore: {name} must be a positive int, got {v!r}")
            self._data = torch.empty(int(num_vectors), 0, int(dim), dtype=_STORE_DTYPE)
            self._n = 0
            self._shared = False
            return
        c = _check_candidates(c)
        if dim is not None and dim != c.shape[2]:
            raise ValueError(f"CandidateStore: dim={dim} but candidates have D={c.shape[2]}")
        if num_vectors is not None and num_vectors != c.shape[1]:
            raise ValueError(
                f"CandidateStore: num_vectors={num_vectors} but candidates have R_c={c.shape[1]}"
            )
        self._data = c.detach().to(device="cpu", dtype=_STORE_DTYPE).transpose(0, 1).contiguous()
        self._n = c.shape[0]
        # With R_c == 1 (or N == 1) a bf16 input needs no copy, so the buffer may be the caller's tensor.
        self._shared = self._data.data_ptr() == c.data_ptr()

    @classmethod
    def from_vector_major(cls, arr: Tensor | np.ndarray) -> CandidateStore:
        """Wrap an existing vector-major [R_c, N, D] array without copying when it is already bf16.

        Accepts a torch tensor (bf16 is used as is; uint16 is reinterpreted as bf16 bits; other float
        dtypes are converted) or a numpy array/memmap (uint16 holds bf16 bits, since numpy has no bf16;
        float arrays are converted). A C-contiguous bf16/uint16 input is shared, not copied.
        """
        if isinstance(arr, np.ndarray):
            if arr.dtype != np.uint16 and not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(
                    f"from_vector_major: numpy array must be uint16 (bf16 bits) or float, got dtype {arr.dtype}"
                )
            with warnings.catch_warnings():
                # Read-only memmaps are fine: this store never writes into shared memory.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                t = torch.from_numpy(np.ascontiguousarray(arr))
        elif isinstance(arr, Tensor):
            t = arr.detach().cpu()
        else:
            raise ValueError(
                f"from_vector_major: arr must be a torch.Tensor or numpy array, got {type(arr).__qualname__}"
            )
        if t.dtype in (torch.uint16, torch.int16):
            t = t.view(_STORE_DTYPE)
        if not t.is_floating_point():
            raise ValueError(
                f"from_vector_major: arr must hold bf16 bits (uint16) or floats, got dtype {t.dtype}"
            )
        if t.ndim != 3 or t.shape[0] == 0 or t.shape[2] == 0:
            raise ValueError(
                f"from_vector_major: arr must have shape [R_c, N, D] with R_c, D >= 1, got {tuple(t.shape)}"
            )
        store = cls.__new__(cls)
        store._data = t.to(_STORE_DTYPE).contiguous()
        store._n = t.shape[1]
        store._shared = store._data.data_ptr() == t.data_ptr()
        return store

    # -- shape --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"CandidateStore(n={self._n}, num_vectors={self.num_vectors}, dim={self.dim}, "
                f"capacity={self.capacity})")

    @property
    def num_vectors(self) -> int:
        """R_c, vectors per candidate."""
        return self._data.shape[0]

    @property
    def dim(self) -> int:
        """D, the vector dimension."""
        return self._data.shape[2]

    @property
    def capacity(self) -> int:
        """Candidates the buffer can hold before the next append reallocates."""
        return self._data.shape[1]

    # -- reading ------------------------------------------------------------------------------------------

    def vector_major(self) -> Tensor:
        """[R_c, N, D] bf16 view of the stored candidates (no copy; call .contiguous() before saving)."""
        return self._data[:, : self._n]

    def first_vectors(self) -> Tensor:
        """[N, D] float32 copy of each candidate's first vector: its (1, 1)-budget embedding."""
        return self._data[0, : self._n].float()

    def candidate(self, index: int) -> Tensor:
        """[R_c, D] float32 vectors of one candidate (e.g. for `explain`)."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < self._n:
            raise ValueError(
                f"candidate: index {index!r} is out of range for a store of {self._n} candidates"
            )
        return self._data[:, int(index)].float()

    @torch.no_grad()
    def maxsim(
        self, q: Tensor, budget: tuple[int, int] | None = None, *, indices: object | None = None,
        precise: bool = False,
    ) -> Tensor:
        """MaxSim of queries q [Bq, R_q, D] against the stored candidates -> [Bq, N] float32.

        indices: optional 1-D ints; scores only those candidates, in that order -> [Bq, len(indices)]
        (the rerank step of a two-stage search).
        precise: fp32 queries, products and maxima over the stored (bf16) vectors. Where the CPU computes
          bf16 natively the fast path is bf16 and faster: it rounds the query to bf16 (and, on torch's GEMMs
          without the fused kernel, each query vector's best product: about 3 significant digits), which can
          reorder candidates whose scores differ by less than about r_q / 256; rank the final shortlist with
          precise=True (see `near_top`). Where bf16 is emulated, the fast path is fp32 (with torch's paths,
          from 8 query rows (Bq * r_q) up), so its scores are the precise ones.
        """
        q = _check_queries(q)
        _check_dims(q.shape[2], self.dim)
        r_q, r_c = _resolve_budget(budget, q.shape[1], self.num_vectors)
        bq = q.shape[0]
        rows = _query_rows(q, r_q, _compute_dtype(bq * r_q, precise))
        vm = self._data[:r_c, : self._n]
        idx = None if indices is None else _check_indices(indices, self._n, "maxsim")

        def block(s: int, e: int) -> Tensor:
            return vm.index_select(1, idx[s:e])

        def score() -> Tensor:
            if rows.dtype == torch.float32:
                return _score_fp32_blocks(rows, vm, bq, r_q, r_c, idx)
            if idx is None:
                return _score_vector_major(rows, vm, bq, r_q, r_c)
            return _score_in_slices(rows, bq, r_q, r_c, idx.numel(), block)

        variant = _kernel_variant(rows.dtype, self.dim)
        if variant is not None:
            return _score_kernel(variant, rows, vm, bq, r_q, r_c, idx)  # in lanes of its own
        return run_scoring(score, rows.dtype)  # at the thread count measured fastest on this CPU

    def subset(self, indices: object) -> CandidateStore:
        """New store with copies of the given candidates, in the given order."""
        idx = _check_indices(indices, self._n, "subset")
        return self._with_data(self._data[:, : self._n].index_select(1, idx))

    # -- editing ------------------------------------------------------------------------------------------

    def append(self, c: Tensor) -> None:
        """Add candidates c [M, R_c, D]; amortised O(M) thanks to spare capacity."""
        c = _check_candidates(c)
        if c.shape[1] != self.num_vectors or c.shape[2] != self.dim:
            raise ValueError(
                f"append: candidates have shape [M, R_c={c.shape[1]}, D={c.shape[2]}], "
                f"this store holds R_c={self.num_vectors}, D={self.dim}"
            )
        m = c.shape[0]
        if m == 0:
            return
        need = self._n + m
        if need > self.capacity or self._shared:
            new_cap = max(need, int(self.capacity * _GROWTH) + 64)
            data = torch.empty(self.num_vectors, new_cap, self.dim, dtype=_STORE_DTYPE)
            data[:, : self._n] = self._data[:, : self._n]
            self._data = data
            self._shared = False
        self._data[:, self._n : need] = c.detach().to(device="cpu", dtype=_STORE_DTYPE).transpose(0, 1)
        self._n = need

    def remove(self, indices: object) -> None:
        """Drop the candidates at the given indices; the rest keep their relative order."""
        idx = _check_indices(indices, self._n, "remove")
        mask = torch.ones(self._n, dtype=torch.bool)
        mask[idx] = False
        self._keep_rows(mask)

    def keep(self, mask: object) -> None:
        """Keep only the candidates where mask (1-D bool, one entry per candidate) is True."""
        m = mask.detach().cpu() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
        if m.dtype != torch.bool or m.ndim != 1 or m.numel() != self._n:
            raise ValueError(
                f"keep: mask must be a 1-D bool tensor with one entry per candidate ({self._n}), "
                f"got dtype {m.dtype} shape {tuple(m.shape)}"
            )
        self._keep_rows(m)

    def _keep_rows(self, mask: Tensor) -> None:
        # Always a fresh buffer: compacting in place would write into a shared (memory-mapped) array.
        self._data = self._data[:, : self._n][:, mask].contiguous()
        self._n = self._data.shape[1]
        self._shared = False

    def _with_data(self, data: Tensor) -> CandidateStore:
        store = CandidateStore.__new__(CandidateStore)
        store._data = data.contiguous()
        store._n = data.shape[1]
        store._shared = False
        return store
