"""How MaxSim scoring uses the CPU's threads: candidate ranges spread over one-thread worker lanes.

torch's own intra-op threading runs every op as one parallel region that waits for all of its threads.
Scoring is many short ops (a GEMM, a max, a sum per candidate vector), so when anything else runs on the
machine each op waits for a thread the OS has parked: on a busy 2-core machine torch's default 2 threads
scored slower than 1 thread, while with the cores to itself 2 threads win. Candidates are scored
independently, so scoring splits into pieces (ranges of candidates) that worker threads ("lanes") take one
at a time, each running torch at one thread: no op waits on another thread, a lane that the OS parks
leaves the remaining pieces to the others, and on an idle machine the lanes run side by side.

The choice is made here so that every caller (`CandidateStore.maxsim`, `maxsim`, the index's search) gets
it without touching torch's settings. Lanes never exceed the caller's torch.get_num_threads(), so
`torch.set_num_threads(1)` still means one thread; each candidate's score comes from the same ops whatever
the split (one GEMM per vector instead of several vectors per GEMM: equal up to a bf16 rounding).
Measurements behind it: docs/benchmarks.md, "MaxSim scoring" (bench/maxsim.py --threads).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import torch

__all__ = ["run_ranges"]

# Multiply-adds below which scoring stays in the calling thread (too little work to hand off), and the
# least each lane gets: see docs/benchmarks.md, "MaxSim scoring", for the measurement behind the value.
_MIN_LANE_MACS = 1 << 21
# Pieces per lane: small enough that a lane the OS parks holds back little of the work, large enough
# that the ops of one piece stay few.
_PIECES_PER_LANE = 4
# Run every range in the calling thread at its own torch thread count (the behaviour before lanes);
# bench/maxsim.py sets it to time that behaviour against the lanes.
_INLINE = False


class _Lanes:
    """Daemon worker threads, each running torch at one intra-op thread, fed by one job queue."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.size = 0
        self.lock = threading.Lock()

    def ensure(self, count: int) -> None:
        """Start workers until there are `count`."""
        with self.lock:
            new = count - self.size
            if new <= 0:
                return
            # torch.set_num_threads is per OS thread for OpenMP and MKL, but it also sets the default a
            # thread gets the first time it runs torch: workers set 1 for themselves, then the default is
            # put back to the calling thread's count once they all have.
            caller_threads = torch.get_num_threads()
            ready = threading.Barrier(new + 1)
            for _ in range(new):
                threading.Thread(target=self._work, args=(ready,), name="maxsim-lane", daemon=True).start()
            ready.wait()
            torch.set_num_threads(caller_threads)
            self.size = count

    def _work(self, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            self.jobs.get()()


_lanes = _Lanes()


def _reset_after_fork() -> None:
    global _lanes
    _lanes = _Lanes()  # a forked child has none of the parent's worker threads


os.register_at_fork(after_in_child=_reset_after_fork)


def lane_count(n: int, macs_per_item: int) -> int:
    """Lanes for n candidates of macs_per_item multiply-adds each; 0 means in the calling thread."""
    threads = torch.get_num_threads()
    work = n * macs_per_item
    if _INLINE or threads == 1 or work < _MIN_LANE_MACS:
        return 0  # told to, already one thread, or too little work to hand off
    return max(1, min(threads, work // _MIN_LANE_MACS))


def run_ranges(n: int, macs_per_item: int, fn: Callable[[int, int], None], max_piece: int | None = None) -> None:
    """Call fn(s, e) for ranges s..e that cover 0..n once each, spread over one-thread lanes.

    fn must write only its own range of the output (ranges may run at the same time in different
    threads). max_piece bounds a range's length (memory per call of fn). The first exception raised by fn
    is re-raised here after every lane has stopped.
    """
    if n <= 0:
        return
    lanes = lane_count(n, macs_per_item)
    piece = -(-n // max(1, lanes * _PIECES_PER_LANE))
    piece = max(piece, -(-_MIN_LANE_MACS // (_PIECES_PER_LANE * max(1, macs_per_item))))
    if max_piece is not None:
        piece = max(1, min(piece, max_piece))
    starts = list(range(0, n, piece))
    if lanes == 0:
        for s in starts:
            fn(s, min(n, s + piece))
        return
    lanes = min(lanes, len(starts))
    _lanes.ensure(lanes)
    taken = iter(starts)
    take_lock = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def lane() -> None:
        try:
            while not errors:
                with take_lock:
                    s = next(taken, None)
                if s is None:
                    return
                fn(s, min(n, s + piece))
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors.append(err)
        finally:
            done.release()

    for _ in range(lanes):
        _lanes.jobs.put(lane)
    for _ in range(lanes):
        done.acquire()
    if errors:
        raise errors[0]
