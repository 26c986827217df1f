"""Speed of MaxSim scoring: CandidateStore.maxsim against naive einsum and fast-maxsim, at every preset budget.

    .venv/bin/python bench/maxsim.py [--n 100000] [--dim 128] [--repeats 7] [--batches 1 8] [--threads]
        [--variants]

Candidates are random L2-normalised [N, 64, 128] vectors, queries [Bq, 16, 128]. For each budget the script
times our store (vector-major bf16, one GEMM per candidate vector folded by a running max) and, in the same
run, the naive reference: fp32 `torch.einsum` over the slice c[:, :r_c] of an [N, 64, D] array, max over r_c
and sum over r_q (for Bq > 1, one query at a time so its [N, r_q, r_c] intermediate stays affordable).
When the optional `fast-maxsim` package is installed (mixedbread's Rust CPU MaxSim, fp32; not a project
dependency: `pip install fast-maxsim`), it is timed too, one query per call (its API), on a contiguous fp32
[N, r_c, D] array made before timing. Repeats alternate the contenders so background load hits them alike;
the median of the repeats is reported after one warm-up. --threads also times the fused kernel on one
lane (model/maxsim_kernel.c; the library's default where it builds), and torch's paths without it: each of
the two forced (bf16 GEMMs; fp32 blocks, model/scoring.py) and at 1 thread and torch's default thread count
(on the fp32 path: that many one-thread lanes), beside what the library chooses on this CPU
(model/scoring_threads.py); --variants the bf16 path's block sizes and the other formulations that were
tried (see docs/benchmarks.md).
Prints markdown tables ready to paste, with the load average beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model.maxsim_kernel as maxsim_kernel  # noqa: E402
import model.scoring as scoring  # noqa: E402
import model.scoring_threads as scoring_threads  # noqa: E402
from model.config import DEFAULT_GROUPS  # noqa: E402
from model.device import cpu_name  # noqa: E402
from model.scoring import CandidateStore  # noqa: E402

# Targets for one query on the 2-core reference machine (see docs/benchmarks.md).
MIN_SPEEDUP, MIN_SPEEDUP_FULL, MIN_RATE_FULL = 2.0, 1.5, 300_000
MIN_VS_FAST_MAXSIM = 2.0  # issue 18: ours >= 2x fast-maxsim at every preset


def load_fast_maxsim() -> object | None:
    """The fast_maxsim module, or None (with a note) when it is not installed."""
    try:
        import fast_maxsim
    except ImportError:
        print("(fast-maxsim is not installed: its columns are left out; `pip install fast-maxsim` adds them)\n")
        return None
    return fast_maxsim


def fast_maxsim_fn(fm: object, q: torch.Tensor, c32: torch.Tensor, r_q: int, r_c: int) -> Callable[[], object]:
    """fast-maxsim over the budget, one query per call; its inputs are made here, outside the timing."""
    docs = np.ascontiguousarray(c32[:, :r_c].numpy())
    queries = [np.ascontiguousarray(one[:r_q].numpy()) for one in q]
    return lambda: np.stack([fm.maxsim_scores(one, docs) for one in queries])


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def make_candidates(n: int, rc: int, d: int, seed: int) -> torch.Tensor:
    """[N, R_c, D] fp32 unit vectors, normalised in slices to keep the peak memory at one copy."""
    g = torch.Generator().manual_seed(seed)
    c = torch.empty(n, rc, d)
    step = 8192
    for s in range(0, n, step):
        part = c[s : s + step]
        part.normal_(generator=g)
        part.div_(part.norm(dim=-1, keepdim=True))
    return c


def vector_major_bf16(c: torch.Tensor) -> torch.Tensor:
    vm = torch.empty(c.shape[1], c.shape[0], c.shape[2], dtype=torch.bfloat16)
    step = 8192
    for s in range(0, c.shape[0], step):
        vm[:, s : s + step] = c[s : s + step].transpose(0, 1)
    return vm


def naive(q: torch.Tensor, c32: torch.Tensor, r_q: int, r_c: int) -> torch.Tensor:
    rows = []
    for one in q:
        sim = torch.einsum("qd,nrd->nqr", one[:r_q], c32[:, :r_c])
        rows.append(sim.amax(dim=2).sum(dim=1))
    return torch.stack(rows)


def time_pair(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each fn; one warm-up each, then repeats interleaved across fns."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


# --- alternative formulations (--variants) ----------------------------------------------------------------


def alt_one_gemm(rows: torch.Tensor, blocks: torch.Tensor, r_q: int, r_c: int) -> torch.Tensor:
    """One GEMM per chunk against a contiguous [r_c*chunk, D] block, then amax over the r_c axis.

    blocks: chunk-major [N/chunk, r_c, chunk, D] copy, so each chunk's block is contiguous.
    """
    nchunks, _, chunk, d = blocks.shape
    out = torch.empty(nchunks, chunk)
    for i in range(nchunks):
        sim = (rows @ blocks[i].view(-1, d).T).view(r_q, r_c, chunk)
        out[i] = sim.amax(dim=1).sum(dim=0, dtype=torch.float32)
    return out.view(1, -1)


def alt_bmm(rows: torch.Tensor, vm: torch.Tensor, r_q: int, r_c: int, chunk: int) -> torch.Tensor:
    """Batched GEMM over the r_c vectors of a chunk, then amax over the batch axis."""
    n = vm.shape[1]
    out = torch.empty(1, n)
    rows_t = rows.T.unsqueeze(0).expand(r_c, -1, -1)
    for s in range(0, n, chunk):
        sim = torch.bmm(vm[:r_c, s : s + chunk], rows_t)  # [r_c, chunk, r_q]
        out[0, s : s + chunk] = sim.amax(dim=0).sum(dim=1, dtype=torch.float32)
    return out


def alt_transposed(rows: torch.Tensor, vmt: torch.Tensor, r_q: int, r_c: int, chunk: int) -> torch.Tensor:
    """Running max like ours, but over a pre-transposed [R_c, D, N] layout (plain NN GEMMs)."""
    n = vmt.shape[2]
    out = torch.empty(1, n)
    for s in range(0, n, chunk):
        run = rows @ vmt[0, :, s : s + chunk]
        for j in range(1, r_c):
            torch.maximum(run, rows @ vmt[j, :, s : s + chunk], out=run)
        out[0, s : s + chunk] = run.sum(dim=0, dtype=torch.float32)
    return out


def alt_per_vector(rows: torch.Tensor, vm: torch.Tensor, r_q: int, r_c: int) -> torch.Tensor:
    """One GEMM per candidate vector over the whole set, folded by an elementwise running max (ours
    without grouping vectors into one GEMM: twice the ops)."""
    run = rows @ vm[0].T
    for j in range(1, r_c):
        torch.maximum(run, rows @ vm[j].T, out=run)
    return run.sum(dim=0, dtype=torch.float32)[None]


def variant_fns(q: torch.Tensor, vm: torch.Tensor, r_q: int, r_c: int, sizes: list[int], chunk: int) -> list:
    """Callables for one budget: ours at each block size, then the alternatives (same order as names)."""
    n, d = vm.shape[1], vm.shape[2]
    rows = q[0, :r_q].to(torch.bfloat16)
    store = CandidateStore.from_vector_major(vm[:r_c])
    blocks = vm[:r_c, : n - n % chunk].reshape(r_c, -1, chunk, d).transpose(0, 1).contiguous()
    vmt = vm[:r_c].transpose(1, 2).contiguous()
    vm32 = vm[:r_c].float()

    def ours(size: int) -> object:
        # The bf16 GEMMs (the path these block sizes belong to), even where the library would score in fp32.
        scoring._BLOCK_ELEMENTS, min_rows, scoring._FP32_MIN_ROWS = size, scoring._FP32_MIN_ROWS, 1 << 30
        try:
            return store.maxsim(q[:1], (r_q, r_c))
        finally:
            scoring._FP32_MIN_ROWS = min_rows

    return [lambda size=size: ours(size) for size in sizes] + [
        lambda: alt_per_vector(rows, vm, r_q, r_c),
        lambda: alt_one_gemm(rows, blocks, r_q, r_c),
        lambda: alt_bmm(rows, vm, r_q, r_c, chunk),
        lambda: alt_transposed(rows, vmt, r_q, r_c, n),
        lambda: scoring._score_vector_major(q[0, :r_q].float(), vm32, 1, r_q, r_c),
    ]


def run_variants(q: torch.Tensor, vm: torch.Tensor, repeats: int) -> None:
    n = vm.shape[1]
    chunk = 4096
    budgets = [(8, 16), (16, 64)]
    default = scoring._BLOCK_ELEMENTS
    sizes = [default >> 2, default, default << 2]
    names = [
        f"ours, buffers of {s >> 20}M elements" + (" (default)" if s == default else "") for s in sizes
    ] + [
        "one GEMM per vector + running max, whole set",
        f"one GEMM per chunk-major [r_c*{chunk}, D] block + amax",
        f"bmm over the r_c vectors + amax, chunks of {chunk}",
        "one GEMM per vector, pre-transposed [R_c, D, N] layout",
        "ours on an fp32 store",
    ]
    scored = [n] * len(sizes) + [n, n - n % chunk, n, n, n]
    results: dict[str, list[str]] = {name: [] for name in names}
    try:
        for r_q, r_c in budgets:
            fns = variant_fns(q, vm, r_q, r_c, sizes, chunk)
            want = fns[1]()
            for name, fn, count in zip(names, fns, scored, strict=True):
                if not torch.allclose(fn(), want[:, :count], rtol=1e-2, atol=1e-2):
                    raise SystemExit(f"variant {name!r} disagrees with CandidateStore.maxsim at {(r_q, r_c)}")
            secs = time_pair(fns, repeats)
            for name, sec, count in zip(names, secs, scored, strict=True):
                results[name].append(f"{count / sec:,.0f}")
    finally:
        scoring._BLOCK_ELEMENTS = default
    print(f"\nFormulations, one query, candidates/s (median), load average now {os.getloadavg()[0]:.2f}:\n")
    print("| formulation | " + " | ".join(f"({a}, {b})" for a, b in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    for name in names:
        print(f"| {name} | " + " | ".join(results[name]) + " |")


def main_table(
    args: argparse.Namespace, store: CandidateStore, c32: torch.Tensor, qs: torch.Tensor, fm: object | None,
    budgets: list[tuple[int, int]],
) -> list[str]:
    """Ours (library defaults), naive and fast-maxsim at every batch and budget; returns missed targets."""
    head = "| batch | budget (r_q, r_c) | ours (ms) | ours candidates/s | naive (ms) | naive candidates/s | speedup |"
    print(head + (" fast-maxsim (ms) | ours vs fast-maxsim | load |" if fm else " load |"))
    print("|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if fm else "") + "---|")
    misses = []
    for bq in args.batches:
        q = qs[:bq]
        for r_q, r_c in budgets:
            ours = store.maxsim(q, (r_q, r_c))
            ref = naive(q, c32, r_q, r_c)
            err = float(((ours - ref).abs() / ref.abs().clamp_min(1.0)).max())
            if err > 1e-2:
                raise SystemExit(f"scores disagree with the naive reference at {(r_q, r_c)}: {err:.3g}")
            fns = [lambda q=q, b=(r_q, r_c): store.maxsim(q, b), lambda q=q, a=r_q, b=r_c: naive(q, c32, a, b)]
            if fm:
                fns.append(fast_maxsim_fn(fm, q, c32, r_q, r_c))
                err = float((torch.from_numpy(fns[-1]()) - ref).abs().max())
                if err > 1e-3 * r_q:
                    raise SystemExit(f"fast-maxsim disagrees with the naive reference at {(r_q, r_c)}: {err:.3g}")
            secs = time_pair(fns, args.repeats if bq == 1 else args.batch_repeats)
            del fns
            t_ours, t_naive = secs[0], secs[1]
            # Per query: batch b scores b*N query-candidate pairs.
            rate, rate_naive = bq * args.n / t_ours, bq * args.n / t_naive
            speedup = t_naive / t_ours
            row = (
                f"| {bq} | ({r_q}, {r_c}) | {t_ours * 1e3:.1f} | {rate:,.0f} | {t_naive * 1e3:.1f} | "
                f"{rate_naive:,.0f} | {speedup:.2f}x |"
            )
            if fm:
                row += f" {secs[2] * 1e3:.1f} | {secs[2] / t_ours:.2f}x |"
            print(row + f" {os.getloadavg()[0]:.2f} |", flush=True)
            if bq == 1:
                full = (r_q, r_c) == (args.rq, args.rc)
                need = MIN_SPEEDUP_FULL if full else MIN_SPEEDUP
                if speedup < need:
                    misses.append(f"({r_q}, {r_c}): speedup {speedup:.2f}x < {need}x")
                if full and rate < MIN_RATE_FULL:
                    misses.append(f"({r_q}, {r_c}): {rate:,.0f} candidates/s < {MIN_RATE_FULL:,}")
                if fm and secs[2] / t_ours < MIN_VS_FAST_MAXSIM:
                    misses.append(f"({r_q}, {r_c}): {secs[2] / t_ours:.2f}x fast-maxsim < {MIN_VS_FAST_MAXSIM}x")
    return misses


def threads_table(
    args: argparse.Namespace, store: CandidateStore, c32: torch.Tensor, qs: torch.Tensor, fm: object | None,
    budgets: list[tuple[int, int]],
) -> None:
    """One query: the library's choice against each path forced (bf16 GEMMs, fp32 blocks: see
    model/scoring.py) and against torch at 1 and at its default thread count, and fast-maxsim; all
    alternating in one loop."""
    default = torch.get_num_threads()
    q = qs[:1]

    kernel = maxsim_kernel.load()

    def forced(budget: tuple[int, int], threads: int | None = None, path: str | None = None,
               fused: bool = False) -> object:
        """Torch's paths (fused=False: the kernel left out), or the kernel; path and threads forced."""
        scoring_threads._FORCE = threads  # 1: one thread (one lane); 0: the caller's count
        native, min_rows, load = scoring.cpu_has_native_bf16, scoring._FP32_MIN_ROWS, maxsim_kernel.load
        if not fused:
            maxsim_kernel.load = lambda: None
        if path == "bf16":
            scoring._FP32_MIN_ROWS = 1 << 30
        elif path == "fp32":
            scoring.cpu_has_native_bf16, scoring._FP32_MIN_ROWS = (lambda: False), 1
        try:
            return store.maxsim(q, budget)
        finally:
            scoring_threads._FORCE = None
            scoring.cpu_has_native_bf16, scoring._FP32_MIN_ROWS = native, min_rows
            maxsim_kernel.load = load

    both = kernel is not None and kernel.features & 0b11 == 0b11
    names = ["library"] + (["kernel, 1 lane"] if kernel else []) + (["kernel f32 (AVX2)"] if both else [])
    names += ["torch: bf16 GEMMs", "torch: fp32 blocks", "torch 1 thread", f"torch {default} threads"]
    names += ["fast-maxsim"] if fm else []
    print(f"\nPath and threading, one query, ms (median of {args.repeats}); the library's path at each budget"
          f" in brackets; load average before {loadavg()}:\n")
    print("| budget (r_q, r_c) | " + " | ".join(names) + " |" + (" fast-maxsim / library |" if fm else "")
          + " load |")
    print("|---|" + "---:|" * len(names) + ("---:|" if fm else "") + "---|")
    for r_q, r_c in budgets:
        b = (r_q, r_c)
        fns = [lambda b=b: store.maxsim(q, b)]
        fns += [lambda b=b: forced(b, threads=1, fused=True)] if kernel else []
        fns += [lambda b=b: forced(b, path="fp32", fused=True)] if both else []  # what an AVX2-only CPU runs
        fns += [lambda b=b: forced(b, path="bf16"), lambda b=b: forced(b, path="fp32"),
                lambda b=b: forced(b, threads=1), lambda b=b: forced(b, threads=0)]
        want = fns[0]()
        for fn in fns[1:]:
            torch.testing.assert_close(fn(), want, rtol=0, atol=4e-3 * r_q)
        if fm:
            fns.append(fast_maxsim_fn(fm, q, c32, r_q, r_c))
        secs = time_pair(fns, args.repeats)
        del fns
        path = "fp32" if scoring.fast_path_is_precise(r_q) else "bf16"
        path = f"kernel {path}" if kernel else path
        row = f"| {b} [{path}] | " + " | ".join(f"{t * 1e3:.1f}" for t in secs) + " |"
        if fm:
            row += f" {secs[-1] / secs[0]:.2f}x |"
        print(row + f" {os.getloadavg()[0]:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of candidates")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rq", type=int, default=16)
    ap.add_argument("--rc", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="query batch sizes")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--batch-repeats", type=int, default=3, help="repeats for batches > 1 (the naive loop is slow there)"
    )
    ap.add_argument("--threads", action="store_true", help="also time scoring at fixed torch thread counts")
    ap.add_argument("--variants", action="store_true", help="also time the alternative formulations")
    args = ap.parse_args()

    load_before = loadavg()
    c32 = make_candidates(args.n, args.rc, args.dim, seed=0)
    store = CandidateStore.from_vector_major(vector_major_bf16(c32))
    qs = torch.randn(max(args.batches), args.rq, args.dim, generator=torch.Generator().manual_seed(1))
    qs = qs / qs.norm(dim=-1, keepdim=True)
    budgets = [b for b in DEFAULT_GROUPS if b[0] <= args.rq and b[1] <= args.rc]

    print(f"# MaxSim speed, {datetime.date.today().isoformat()}")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}); "
        f"N={args.n:,}, D={args.dim}, R_q={args.rq}, R_c={args.rc}; median of {args.repeats} after 1 warm-up"
    )
    kernel = maxsim_kernel.load()
    print("fused kernel: " + (f"{kernel.path.name}, variants " + ", ".join(
        name for v, name in ((maxsim_kernel.F32, "f32"), (maxsim_kernel.BF16, "bf16")) if kernel.features & (1 << v))
        if kernel else "not built here: torch's paths"))
    print(f"load average (1 / 5 / 15 min) before: {load_before}\n")
    fm = load_fast_maxsim()
    misses = main_table(args, store, c32, qs, fm, budgets)
    print("\n(batch b: candidates/s counts b x N query-candidate pairs per second; load: 1-minute load average)")
    print(f"\nload average after: {loadavg()}")
    print("targets (batch 1): " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
    if args.threads:
        threads_table(args, store, c32, qs, fm, budgets)
    if args.variants:
        del c32
        run_variants(qs, store.vector_major(), args.repeats)


if __name__ == "__main__":
    main()
