"""MaxSim's thread count (model/scoring_threads.py): chosen per CPU, applied per call without changing any
thread's torch thread count; the scores do not change. No timing here: see bench/maxsim.py --threads."""

import threading

import pytest
import torch

import model.scoring as scoring
import model.scoring_threads as scoring_threads
from model.scoring import CandidateStore, maxsim
from tests.helpers import unit

BUDGETS = [(1, 1), (2, 4), (3, 5), (4, 8)]

# Built without OpenMP, torch's thread count is process-wide and the library leaves it alone.
pytestmark = pytest.mark.skipif(not scoring_threads._per_thread_setting(), reason="torch without OpenMP")


@pytest.fixture(autouse=True)
def torch_paths(monkeypatch):
    """These tests are about torch's scoring paths and their threads: the fused kernel stays out
    (tests/model/test_maxsim_kernel.py checks its lanes)."""
    import model.maxsim_kernel as maxsim_kernel

    monkeypatch.setattr(maxsim_kernel, "load", lambda: None)


def _thread_count_of_a_new_thread() -> int:
    """What a thread that has not run torch yet starts with: torch's process-wide default."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.fixture
def two_threads(monkeypatch):
    """The caller at 2 torch threads, and one-thread workers started afresh by the test."""
    monkeypatch.setattr(scoring_threads, "_workers", scoring_threads._OneThreadWorkers())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def record_threads(monkeypatch) -> list[tuple[int, int]]:
    """Each time the scoring core runs: torch's thread count there, and the one a new thread would get."""
    seen: list[tuple[int, int]] = []

    def spying_on(core):
        def spy(*args, **kwargs):
            seen.append((torch.get_num_threads(), _thread_count_of_a_new_thread()))
            return core(*args, **kwargs)
        return spy

    for name in ("_score_vector_major", "_score_fp32_blocks"):  # the bf16 and the fp32 cores
        monkeypatch.setattr(scoring, name, spying_on(getattr(scoring, name)))
    return seen


def test_the_choice_follows_the_cpu_and_never_raises_the_count(monkeypatch, two_threads):
    monkeypatch.setattr(scoring_threads, "cpu_has_native_bf16", lambda: True)
    assert scoring_threads.scoring_thread_count(torch.bfloat16) == 1
    assert scoring_threads.scoring_thread_count(torch.float32) == 2  # precise path: not measured, kept
    monkeypatch.setattr(scoring_threads, "_FORCE", 0)
    assert scoring_threads.scoring_thread_count(torch.bfloat16) == 2
    monkeypatch.setattr(scoring_threads, "_FORCE", None)
    monkeypatch.setattr(scoring_threads, "cpu_has_native_bf16", lambda: False)
    assert scoring_threads.scoring_thread_count(torch.bfloat16) == 2
    torch.set_num_threads(1)
    assert scoring_threads.scoring_thread_count(torch.bfloat16) == 1


@pytest.mark.parametrize("budget", BUDGETS)
def test_one_thread_scoring_gives_the_same_scores_and_leaves_the_thread_count(
    monkeypatch, two_threads, record_threads, budget
):
    q, c = unit(3, 4, 16, seed=1), unit(700, 8, 16, seed=2)
    store = CandidateStore(c)
    idx = torch.arange(699, -1, -2)
    calls = {
        "store": lambda: store.maxsim(q, budget),
        "functional": lambda: maxsim(q, c, budget),
        "indices": lambda: store.maxsim(q, budget, indices=idx),
    }
    for name, call in calls.items():
        want = call()  # this CPU's own choice
        monkeypatch.setattr(scoring_threads, "_FORCE", 1)
        record_threads.clear()
        got = call()
        monkeypatch.setattr(scoring_threads, "_FORCE", None)
        # Scored at one thread, while a thread starting meanwhile would still get torch's default.
        assert record_threads and set(record_threads) == {(1, 2)}, name
        # Same ops, another thread split of the GEMMs: equal up to one bf16 rounding per query vector.
        torch.testing.assert_close(got, want, rtol=0, atol=4e-3 * budget[0], msg=name)
        assert torch.get_num_threads() == 2, name
        assert _thread_count_of_a_new_thread() == 2, name


def test_one_thread_scoring_leaves_other_threads_at_their_count(monkeypatch, two_threads):
    """Scoring at one thread in several threads at once: each gets its scores back and its count, and a
    thread doing other torch work meanwhile keeps its own count throughout."""
    monkeypatch.setattr(scoring_threads, "_FORCE", 1)
    stores = [CandidateStore(unit(600, 6, 16, seed=10 + i)) for i in range(3)]
    qs = [unit(2, 4, 16, seed=20 + i) for i in range(3)]
    want = [stores[i].maxsim(qs[i], (4, 6)) for i in range(3)]
    got: dict[int, torch.Tensor] = {}
    after: dict[int, int] = {}
    stop = threading.Event()
    bystander: list[int] = []

    def score(i: int) -> None:
        torch.set_num_threads(2)
        for _ in range(20):
            got[i] = stores[i].maxsim(qs[i], (4, 6))
        after[i] = torch.get_num_threads()

    def watch() -> None:
        torch.set_num_threads(2)
        while not stop.is_set():
            torch.ones(64).sum()
            bystander.append(torch.get_num_threads())

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=score, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    watcher.join()
    for i in range(3):
        torch.testing.assert_close(got[i], want[i], rtol=0, atol=4e-3 * 4)
    assert after == {0: 2, 1: 2, 2: 2}
    assert bystander and set(bystander) == {2}
    assert torch.get_num_threads() == 2


def test_lanes_run_on_one_thread_workers_in_order_and_raise_in_the_caller(two_threads):
    seen = []

    def job(i):
        def run():
            seen.append(torch.get_num_threads())
            # Work a lane starts runs in that lane, not on another worker (which could all be busy).
            assert scoring_threads.run_lanes([lambda: i * 10]) == [i * 10]
            return i, torch.is_grad_enabled()
        return run

    with torch.no_grad():
        assert scoring_threads.run_lanes([job(i) for i in range(5)]) == [(i, False) for i in range(5)]
    assert seen == [1] * 5 and torch.get_num_threads() == 2

    def fails():
        raise KeyError("lane 1")

    with pytest.raises(KeyError, match="lane 1"):
        scoring_threads.run_lanes([lambda: 0, fails, lambda: 2])
    torch.set_num_threads(1)  # a one-thread caller runs its lanes itself
    assert scoring_threads.run_lanes([threading.current_thread, threading.current_thread]) == \
        [threading.current_thread()] * 2


def test_fp32_lanes_split_the_candidates_without_changing_the_scores(monkeypatch, two_threads):
    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: False)
    q, c = unit(2, 8, 16, seed=11), unit(1200, 9, 16, seed=12)  # 16 rows: the fp32 path, candidates first
    store = CandidateStore(c)
    idx = torch.arange(1199, -1, -1)
    want = torch.einsum("bqd,ncd->bnqc", q.double(), c.bfloat16().double()).amax(-1).sum(-1)
    assert scoring_threads.lane_count() == 2
    for r_q in (4, 8):  # 8 rows: rows first; 16: candidates first
        two = store.maxsim(q, (r_q, 9))
        torch.testing.assert_close(two.double(), torch.einsum(
            "bqd,ncd->bnqc", q[:, :r_q].double(), c.bfloat16().double()).amax(-1).sum(-1), rtol=0, atol=1e-5)
    two = store.maxsim(q, (8, 9), indices=idx)
    monkeypatch.setattr(scoring_threads, "_FORCE", 1)
    assert scoring_threads.lane_count() == 1
    one = store.maxsim(q, (8, 9), indices=idx)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)
    torch.testing.assert_close(two.double(), want[:, idx], rtol=0, atol=1e-5)
