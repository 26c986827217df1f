"""How many torch threads MaxSim scoring runs on: chosen per CPU from measurements, applied per call.

Scoring is a chain of GEMMs, maxima and sums, and torch runs each op as one parallel region over all its
intra-op threads. Which thread count is fastest depends on how long each op takes, and that depends above
all on whether the CPU multiplies bf16 natively:
- With native bf16 GEMMs (AVX512-bf16 / AMX: `model.device.cpu_has_native_bf16`, the one check the encoder
  and the store's planner use too) the ops are short, and each parallel region spends its time waiting for
  the other thread. Issue 18, on the project's 2-core AVX512-bf16 EPYC (N = 20,000 x 64 x 128, load ~2.4):
  at 1 thread `CandidateStore.maxsim` was 2.0-27x faster than fast-maxsim at every preset; at torch's
  default 2 threads it fell to 0.4x at (4, 8) and 0.7x at (8, 16), and (16, 64) took 148 ms instead of 84.
  There, bf16 scoring runs at 1 thread.
- Without them (bf16 emulated, e.g. an AVX2-only CPU) the ops are long. On the 2-core AVX2 EPYC in
  docs/benchmarks.md ("MaxSim scoring", bench/maxsim.py --threads; N = 20,000 and 100,000, D = 128 and 384)
  2 threads were 1.5-2.0x faster than 1 at every preset when idle, and ahead or level in five bench runs
  under load (one scratch run at load 3.3-5 had 1 thread ahead). There, scoring keeps the caller's count.
The choice never raises the count: a caller at `torch.set_num_threads(1)` stays at one thread.
The fused kernel (model/maxsim_kernel.py, wherever it builds) and torch's fp32 path (model/scoring.py,
where bf16 is emulated, and the precise path) split their candidates into independent ranges instead, one
per thread of the caller, each scored on a one-thread worker (`run_lanes`): no op waits for a second
thread, which under load stalled short GEMMs for a scheduler tick. The choice below is for torch's GEMMs.

How it is applied: torch.set_num_threads is per OS thread in torch's OpenMP builds, but it also sets the
count that every thread which has not run torch yet starts with. Lowering it around a call would hand one
thread, for life, to any thread (a web server's new request thread, say) that first runs torch during that
call. So one-thread scoring runs on worker threads that were set to one thread once, when they started
(the default for new threads is put back at once): callers hand the call over and wait (~50 us), several
callers run side by side on as many workers as their own thread count, and nobody's count changes.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from functools import cache
from typing import TypeVar

import torch

from .device import cpu_has_native_bf16

__all__ = ["lane_count", "run_lanes", "run_scoring", "scoring_thread_count"]

T = TypeVar("T")

# Force the thread count (None: the choice above; 1: one thread; 0: the caller's count). bench/maxsim.py
# sets it to time both beside the library's choice; tests set it to reach the one-thread path on any CPU.
_FORCE: int | None = None


@cache
def _per_thread_setting() -> bool:
    """Whether torch's thread count is per OS thread (its OpenMP backend; the native pool is process-wide
    and cannot change once work has started, so nothing is changed there)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def scoring_thread_count(dtype: torch.dtype = torch.bfloat16) -> int:
    """torch threads for MaxSim scoring in `dtype` from the calling thread (see the module docstring).

    For fp32 (the precise path, and the fast path where bf16 is emulated) the caller's count is kept: that
    scoring splits itself into one-thread lanes (`lane_count`, `run_lanes`), so the count only sizes them.
    """
    have = torch.get_num_threads()
    if not _per_thread_setting():
        return have
    if _FORCE is not None:
        return min(have, _FORCE or have)
    return 1 if dtype == torch.bfloat16 and cpu_has_native_bf16() else have


def _in_new_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


class _OneThreadWorkers:
    """Daemon threads running torch at one intra-op thread each, fed by one job queue."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.size = 0
        self.lock = threading.Lock()

    def ensure(self, count: int) -> None:
        """Start workers until there are `count`; the default count of new threads ends as it was."""
        with self.lock:
            new = count - self.size
            if new <= 0:
                return
            default = _in_new_thread(torch.get_num_threads)
            ready = threading.Barrier(new + 1)
            for _ in range(new):
                threading.Thread(target=self._work, args=(ready,), name="maxsim-1-thread", daemon=True).start()
            ready.wait()
            # Put the default back from a throwaway thread, so that no running thread's own count changes.
            _in_new_thread(lambda: torch.set_num_threads(default))
            self.size = count

    def _work(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # torch's first-use set-up of this thread, before the count is set
        torch.set_num_threads(1)
        _on_worker.flag = True
        ready.wait()
        while True:
            self.jobs.get()()


_workers = _OneThreadWorkers()
_on_worker = threading.local()  # flag set on the workers: work they start runs there, not on other workers


def _reset_after_fork() -> None:
    global _workers
    _workers = _OneThreadWorkers()  # a forked child has none of the parent's worker threads


os.register_at_fork(after_in_child=_reset_after_fork)


def run_scoring(fn: Callable[[], T], dtype: torch.dtype = torch.bfloat16) -> T:
    """fn() at `scoring_thread_count(dtype)` torch threads: here, or on a one-thread worker.

    fn's exception, if any, is raised here; fn runs with the caller's grad mode (thread-local in torch).
    A one-thread choice is a lane of its own (`run_lanes`); work that fn starts there stays on its worker.
    """
    if scoring_thread_count(dtype) >= torch.get_num_threads():
        return fn()
    return run_lanes([fn])[0]


def lane_count() -> int:
    """How many one-thread lanes split a scoring call made from this thread (the fp32 path's parallelism):
    the caller's torch thread count, or 1 where that count is process-wide (see `_per_thread_setting`)."""
    have = torch.get_num_threads()
    if not _per_thread_setting():
        return 1
    if _FORCE is not None:
        return min(have, _FORCE or have)
    return have


def run_lanes(jobs: list[Callable[[], T]]) -> list[T]:
    """Run each job on its own one-thread worker, side by side, and return their results in order.

    For work that splits into independent parts (the fp32 path's candidate ranges): the parts never wait
    for each other op by op, as one op's two torch threads do, which on a shared machine stalled a short
    GEMM for a whole scheduler tick (~16 ms) whenever the other core was busy (docs/benchmarks.md).
    Jobs run in the caller instead, one after another, when it is at one thread already, is itself a
    worker, or torch's thread count is process-wide (no per-thread setting to give a worker).
    """
    if torch.get_num_threads() == 1 or getattr(_on_worker, "flag", False) or not _per_thread_setting():
        return [job() for job in jobs]
    _workers.ensure(max(len(jobs), torch.get_num_threads()))
    grad = torch.is_grad_enabled()
    results: list[list[T]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    left = threading.Semaphore(0)

    def wrap(i: int, job: Callable[[], T]) -> Callable[[], None]:
        def run() -> None:
            try:
                with torch.set_grad_enabled(grad):
                    results[i].append(job())
            except BaseException as err:  # noqa: BLE001 - raised in the caller below
                errors.append(err)
            finally:
                left.release()
        return run

    for i, job in enumerate(jobs):
        _workers.jobs.put(wrap(i, job))
    for _ in jobs:
        left.acquire()
    if errors:
        raise errors[0]
    return [r[0] for r in results]
