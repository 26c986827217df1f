"""MaxSim's threading (model/scoring_threads.py): same scores as scoring in the calling thread, torch's
thread count left as it was, errors and concurrent callers handled. No timing here: see bench/maxsim.py."""

import threading

import pytest
import torch

import model.scoring_threads as scoring_threads
from model.scoring import CandidateStore, maxsim

BUDGETS = [(1, 1), (2, 4), (3, 5), (4, 8)]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def _thread_count_of_a_new_thread() -> int:
    """What a thread that has not run torch yet gets: torch's process-wide default."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.fixture
def lanes(monkeypatch):
    """Two fresh lanes, engaged for any amount of work, with the caller at 2 torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(scoring_threads, "_lanes", scoring_threads._Lanes())
    monkeypatch.setattr(scoring_threads, "_MIN_LANE_MACS", 1)
    monkeypatch.setattr(scoring_threads, "_PIECES_PER_LANE", 8)  # many small pieces per call
    yield
    torch.set_num_threads(before)


def _inline(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(scoring_threads, "_INLINE", True)
        return fn()


@pytest.mark.parametrize("budget", BUDGETS)
def test_lanes_give_the_scores_of_the_calling_thread_and_restore_the_thread_count(lanes, monkeypatch, budget):
    q, c = _unit(3, 4, 16, seed=1), _unit(700, 8, 16, seed=2)
    store = CandidateStore(c)
    idx = torch.arange(699, -1, -2)
    calls = {
        "store": lambda: store.maxsim(q, budget),
        "functional": lambda: maxsim(q, c, budget),
        "indices": lambda: store.maxsim(q, budget, indices=idx),
        "precise": lambda: store.maxsim(q, budget, precise=True),
    }
    for name, call in calls.items():
        want = _inline(monkeypatch, call)
        assert scoring_threads.lane_count(700, 3 * budget[0] * budget[1] * 16) == 2
        got = call()
        # One GEMM per vector in lanes, several vectors per GEMM in one piece: a bf16 ulp per query vector.
        torch.testing.assert_close(got, want, rtol=0, atol=4e-3 * budget[0], msg=name)
        assert torch.get_num_threads() == 2, name
        assert _thread_count_of_a_new_thread() == 2, name
    assert scoring_threads._lanes.size == 2


def test_one_thread_callers_and_small_work_stay_in_the_calling_thread(monkeypatch):
    monkeypatch.setattr(scoring_threads, "_lanes", scoring_threads._Lanes())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert scoring_threads.lane_count(100_000, 1 << 20) == 0
        torch.set_num_threads(2)
        assert scoring_threads.lane_count(10, 16) == 0
        assert scoring_threads.lane_count(100_000, 16 * 64 * 128) == 2
        CandidateStore(_unit(10, 2, 8, seed=3)).maxsim(_unit(1, 2, 8, seed=4))
        assert scoring_threads._lanes.size == 0
    finally:
        torch.set_num_threads(before)


def test_ranges_cover_every_candidate_once_and_errors_reach_the_caller(lanes):
    seen = torch.zeros(1000, dtype=torch.int64)
    longest = []

    def mark(s: int, e: int) -> None:
        longest.append(e - s)
        seen[s:e] += 1

    scoring_threads.run_ranges(1000, 1, mark, max_piece=7)
    assert torch.equal(seen, torch.ones(1000, dtype=torch.int64))
    assert max(longest) == 7

    def fail(s: int, e: int) -> None:
        if s >= 500:
            raise ValueError("piece failed")

    with pytest.raises(ValueError, match="piece failed"):
        scoring_threads.run_ranges(1000, 1, fail)
    scoring_threads.run_ranges(1000, 1, mark)  # the lanes still work after an error
    assert torch.equal(seen, torch.full((1000,), 2, dtype=torch.int64))


def test_concurrent_callers_get_their_own_scores(lanes, monkeypatch):
    stores = [CandidateStore(_unit(600, 6, 16, seed=10 + i)) for i in range(4)]
    qs = [_unit(2, 4, 16, seed=20 + i) for i in range(4)]
    want = [_inline(monkeypatch, lambda i=i: stores[i].maxsim(qs[i], (4, 6))) for i in range(4)]
    got: dict[int, torch.Tensor] = {}

    def call(i: int) -> None:
        for _ in range(5):
            got[i] = stores[i].maxsim(qs[i], (4, 6))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        torch.testing.assert_close(got[i], want[i], rtol=0, atol=4e-3 * 4)
    assert torch.get_num_threads() == 2
