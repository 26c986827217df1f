"""MaxSim scoring: maxsim, maxsim_dense, CandidateStore and explain against a plain-Python reference."""

import numpy as np
import pytest
import torch

from model.scoring import CandidateStore, explain, maxsim, maxsim_dense, near_top
from tests.helpers import unit

BUDGETS = [(1, 1), (2, 4), (4, 8), (3, 5), (5, 9)]


def _reference(q: torch.Tensor, c: torch.Tensor, r_q: int, r_c: int) -> torch.Tensor:
    """MaxSim with Python loops and Python floats (double precision): the definition, nothing clever."""
    ql, cl = q.tolist(), c.tolist()
    out = []
    for query in ql:
        row = []
        for cand in cl:
            total = 0.0
            for qv in query[:r_q]:
                total += max(sum(a * b for a, b in zip(qv, cv, strict=True)) for cv in cand[:r_c])
            row.append(total)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def _assert_scores_close(got: torch.Tensor, want: torch.Tensor, r_q: int) -> None:
    # bf16 inputs and bf16 GEMM outputs: ~2^-9 relative per similarity, summed over r_q terms.
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=4e-3 * r_q)


def pytest_generate_tests(metafunc):
    # Every test runs on both scoring paths, the fused C kernel and torch's GEMMs, except those marked
    # torch_paths, which check torch's blocking and dtype choices.
    if "scoring_path" in metafunc.fixturenames:
        torch_only = metafunc.definition.get_closest_marker("torch_paths") is not None
        metafunc.parametrize("scoring_path", ["torch"] if torch_only else ["kernel", "torch"], indirect=True)


@pytest.fixture(autouse=True)
def scoring_path(request, monkeypatch) -> str:
    """"kernel": the fused kernel as loaded here (skipped where it cannot build or run); "torch": without it."""
    import model.maxsim_kernel as maxsim_kernel

    path = getattr(request, "param", "torch")
    if path == "kernel":
        if maxsim_kernel.load() is None:
            pytest.skip("the fused MaxSim kernel does not build or run here")
    else:
        monkeypatch.setattr(maxsim_kernel, "load", lambda: None)
    return path


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return unit(3, 5, 16, seed=1), unit(11, 9, 16, seed=2)


@pytest.mark.parametrize("budget", BUDGETS)
def test_maxsim_matches_python_reference(data, budget):
    q, c = data
    got = maxsim(q, c, budget)
    assert got.shape == (3, 11)
    _assert_scores_close(got, _reference(q, c, *budget), budget[0])


def test_full_budget_is_default(data):
    q, c = data
    assert torch.equal(maxsim(q, c), maxsim(q, c, (5, 9)))
    _assert_scores_close(maxsim(q, c), _reference(q, c, 5, 9), 5)


def test_maxsim_accepts_fp32_fp64_and_bf16_inputs(data):
    q, c = data
    want = maxsim(q, c, (4, 8))
    for dtype in (torch.float64, torch.bfloat16):
        torch.testing.assert_close(maxsim(q.to(dtype), c.to(dtype), (4, 8)), want, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("budget", BUDGETS)
def test_budget_equals_explicit_prefix_slices(data, budget):
    q, c = data
    r_q, r_c = budget
    assert torch.equal(maxsim(q, c, budget), maxsim(q[:, :r_q].contiguous(), c[:, :r_c].contiguous()))


def _assert_same_scores(got: torch.Tensor, want: torch.Tensor, r_q: int) -> None:
    # Same maths through a different blocking: GEMM accumulation order may differ, so allow a bf16 ulp
    # (2^-8 of a similarity <= 1) per query vector.
    torch.testing.assert_close(got, want, rtol=0, atol=4e-3 * r_q)


# _BLOCK_ELEMENTS values for 2 queries x 3 rows = 6 query rows and n candidates: whole set with all
# vectors in one GEMM (default), groups of 2 and of 3 vectors (last group shorter), and chunks of 1024
# candidates with one GEMM per vector (including a short last chunk).
@pytest.mark.parametrize("n", [300, 2500])
@pytest.mark.parametrize("blocking", ["groups of 2", "groups of 3", "chunks"])
def test_scores_do_not_depend_on_blocking(monkeypatch, n, blocking):
    import model.scoring as scoring

    q, c = unit(2, 4, 8, seed=3), unit(n, 6, 8, seed=4)
    idx = torch.arange(n - 1, -1, -1)
    whole = maxsim(q, c, (3, 5))
    _assert_scores_close(whole[:, :30], _reference(q, c[:30], 3, 5), 3)
    store = CandidateStore(c)
    elements = {"groups of 2": 6 * n * 2, "groups of 3": 6 * n * 3, "chunks": 8}[blocking]
    monkeypatch.setattr(scoring, "_BLOCK_ELEMENTS", elements)
    monkeypatch.setattr(scoring, "_GATHER_ELEMENTS", 1)  # functional/indices paths: slices of 256
    _assert_same_scores(maxsim(q, c, (3, 5)), whole, 3)
    _assert_same_scores(store.maxsim(q, (3, 5)), whole, 3)
    _assert_same_scores(store.maxsim(q, (3, 5), indices=idx), whole[:, idx], 3)


def test_empty_candidate_set_gives_empty_scores(data):
    q, c = data
    assert maxsim(q, c[:0]).shape == (3, 0)
    store = CandidateStore(dim=16, num_vectors=9)
    assert len(store) == 0
    assert store.maxsim(q, (2, 4)).shape == (3, 0)


def test_maxsim_dense_matches_python_reference_and_carries_gradients():
    q, c = unit(2, 3, 8, seed=1).requires_grad_(), unit(4, 5, 8, seed=2)
    scores = maxsim_dense(q, c)
    torch.testing.assert_close(scores, _reference(q.detach(), c, 3, 5).float(), atol=1e-5, rtol=1e-5)
    scores.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


# --- CandidateStore ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, *BUDGETS])
def test_store_equals_functional_maxsim(data, budget):
    q, c = data
    store = CandidateStore(c)
    assert (len(store), store.num_vectors, store.dim) == (11, 9, 16)
    assert torch.equal(store.maxsim(q, budget), maxsim(q, c, budget))


def test_store_layout_is_vector_major_bf16(data):
    _, c = data
    vm = CandidateStore(c).vector_major()
    assert vm.dtype == torch.bfloat16 and vm.shape == (9, 11, 16)
    assert torch.equal(vm[3], c[:, 3].to(torch.bfloat16))
    assert vm[:4].is_contiguous()


def test_append_then_score_equals_building_at_once(data):
    q, c = data
    store = CandidateStore(dim=16, num_vectors=9)
    for s, e in [(0, 1), (1, 4), (4, 4), (4, 11)]:
        store.append(c[s:e])
    assert len(store) == 11
    assert store.capacity > len(store)  # spare room: scored one vector at a time, not in groups
    _assert_same_scores(store.maxsim(q, (4, 8)), CandidateStore(c).maxsim(q, (4, 8)), 4)
    assert torch.equal(store.vector_major(), CandidateStore(c).vector_major())


def test_append_growth_is_amortised():
    store = CandidateStore(dim=4, num_vectors=2)
    one = unit(1, 2, 4, seed=5)
    reallocations, last_capacity = 0, store.capacity
    for _ in range(1000):
        store.append(one)
        if store.capacity != last_capacity:
            reallocations, last_capacity = reallocations + 1, store.capacity
    assert len(store) == 1000
    assert reallocations <= 15  # geometric growth, not one reallocation per append


def test_remove_and_keep_drop_rows(data):
    q, c = data
    store = CandidateStore(c)
    store.remove([0, 7, 3])
    kept = [i for i in range(11) if i not in (0, 3, 7)]
    assert len(store) == 8
    assert torch.equal(store.maxsim(q, (2, 4)), maxsim(q, c[kept], (2, 4)))

    mask = torch.tensor([True, False] * 4)
    store.keep(mask)
    assert torch.equal(store.maxsim(q, (2, 4)), maxsim(q, c[kept][mask], (2, 4)))
    store.append(c[:2])
    _assert_same_scores(store.maxsim(q), maxsim(q, torch.cat([c[kept][mask], c[:2]])), 5)


def test_subset_and_indices_score_selected_candidates_in_order(data):
    q, c = data
    store = CandidateStore(c)
    idx = [10, 2, 2, 5]
    want = maxsim(q, c[idx], (3, 5))
    assert torch.equal(store.maxsim(q, (3, 5), indices=idx), want)
    assert torch.equal(store.maxsim(q, (3, 5), indices=torch.tensor(idx)), want)
    sub = store.subset(np.array(idx))
    assert len(sub) == 4
    assert torch.equal(sub.maxsim(q, (3, 5)), want)
    assert store.maxsim(q, indices=[]).shape == (3, 0)


@pytest.mark.parametrize("budget", BUDGETS)
def test_precise_scores_are_fp32_maxsim_of_the_stored_vectors(data, budget):
    q, c = data
    store = CandidateStore(c)
    stored = c.bfloat16().float()  # what the store holds; the query stays fp32
    want = _reference(q, stored, *budget)
    torch.testing.assert_close(store.maxsim(q, budget, precise=True).double(), want, rtol=0, atol=1e-5)
    idx = [10, 2, 5]
    torch.testing.assert_close(store.maxsim(q, budget, indices=idx, precise=True).double(), want[:, idx],
                               rtol=0, atol=1e-5)


@pytest.mark.torch_paths
@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_fast_path_scores_in_fp32_where_bf16_is_emulated_and_enough_rows(monkeypatch, native_bf16):
    import model.scoring as scoring

    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: native_bf16)
    assert scoring._compute_dtype(1, precise=True) == torch.float32
    few, many = scoring._FP32_MIN_ROWS - 1, scoring._FP32_MIN_ROWS
    assert scoring._compute_dtype(few, precise=False) == torch.bfloat16
    assert scoring._compute_dtype(many, precise=False) == (torch.bfloat16 if native_bf16 else torch.float32)
    # The fp32 choice gives the precise scores; the bf16 one rounds them.
    q, c = unit(1, many, 16, seed=6), unit(50, 9, 16, seed=7)
    store = CandidateStore(c)
    exact = torch.equal(store.maxsim(q, (many, 9)), store.maxsim(q, (many, 9), precise=True))
    assert exact == (not native_bf16)


@pytest.mark.torch_paths
@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("features", [0b01, 0b11])
def test_with_the_kernel_the_fast_path_is_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16, features):
    import model.maxsim_kernel as maxsim_kernel
    import model.scoring as scoring

    class Stub:  # a kernel that runs the f32 variant (AVX2), and the bf16 one too when features say so
        def __init__(self, features: int):
            self.features = features

        def takes(self, variant: int, dim: int) -> bool:
            return maxsim_kernel.Kernel.takes(self, variant, dim)

    monkeypatch.setattr(maxsim_kernel, "load", lambda: Stub(features))
    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: native_bf16)
    bf16_kernel = native_bf16 and features & 0b10
    for rows in (1, scoring._FP32_MIN_ROWS - 1, 64):
        assert scoring._compute_dtype(rows, precise=True) == torch.float32
        want = torch.bfloat16 if bf16_kernel else torch.float32
        if native_bf16 and not bf16_kernel:  # no bf16 variant: torch's bf16 GEMMs, as without the kernel
            want = torch.bfloat16
        assert scoring._compute_dtype(rows, precise=False) == want
        assert scoring.fast_path_is_precise(rows) == (want == torch.float32)
        # Candidates are scored where they lie unless torch's bf16 GEMMs score them (they gather first).
        assert scoring.scores_in_place(rows, 384) == (want == torch.float32 or bool(bf16_kernel))
        assert scoring.scores_in_place(rows, 384, precise=True)


# The fp32 core's blocking: candidates per block (from its element bound) and vectors per GEMM, both with a
# shorter last block/group, and both GEMM orientations; each gives the fp32 MaxSim of the stored vectors.
@pytest.mark.torch_paths
@pytest.mark.parametrize("group", [1, 2, 3, 8])
@pytest.mark.parametrize("elements", [1, 16 * 3 * 100, 1 << 20])
@pytest.mark.parametrize("candidates_first_from", [1, 1 << 20])
def test_fp32_scores_do_not_depend_on_blocking(monkeypatch, group, elements, candidates_first_from):
    import model.scoring as scoring

    monkeypatch.setattr(scoring, "_FP32_GROUP", group)
    monkeypatch.setattr(scoring, "_FP32_BLOCK_ELEMENTS", elements)
    monkeypatch.setattr(scoring, "_FP32_CANDIDATES_FIRST_ROWS", candidates_first_from)
    q, c = unit(2, 4, 16, seed=8), unit(300, 7, 16, seed=9)
    want = _reference(q, c.bfloat16().float(), 3, 7)
    store = CandidateStore(c)
    torch.testing.assert_close(store.maxsim(q, (3, 7), precise=True).double(), want, rtol=0, atol=1e-5)
    idx = torch.arange(299, -1, -3)
    torch.testing.assert_close(store.maxsim(q, (3, 7), indices=idx, precise=True).double(), want[:, idx],
                               rtol=0, atol=1e-5)


@pytest.mark.torch_paths
def test_precise_scores_order_near_ties_that_the_fast_path_rounds_together(monkeypatch):
    import model.scoring as scoring

    # Candidates that differ by far less than bf16 resolves: the fast path ties some, the precise path not.
    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: True)  # the bf16 fast path on any CPU
    base = unit(1, 4, 64, seed=3)[0]
    g = torch.Generator().manual_seed(4)
    c = torch.stack([base + 1e-3 * torch.randn(4, 64, generator=g) for _ in range(40)])
    c = c / c.norm(dim=-1, keepdim=True)
    q = (base + 0.3 * unit(4, 64, seed=5)).unsqueeze(0)
    q = q / q.norm(dim=-1, keepdim=True)
    store = CandidateStore(c)
    fast, precise = store.maxsim(q)[0], store.maxsim(q, precise=True)[0]
    assert fast.unique().numel() < 40  # rounding merges distinct scores
    assert precise.unique().numel() == 40
    want = _reference(q, c.bfloat16().float(), 4, 4)[0]
    assert torch.equal(precise.argsort(descending=True), want.argsort(descending=True))


def test_near_top_keeps_every_score_within_the_rounding_bound_of_the_kth():
    scores = torch.tensor([5.0, 9.0, 8.98, 1.0, 8.9, 8.7, 9.5])
    # k = 2: the 2nd best is 9.0; with r_q = 4 the bound is 4 / 128 = 0.03125, so 8.98 stays, 8.9 does not.
    assert near_top(scores, 2, 4).tolist() == [6, 1, 2]
    assert near_top(scores, 2, 64).tolist() == [6, 1, 2, 4, 5]  # bound 0.5
    assert near_top(scores, 2, 64, limit=3).tolist() == [6, 1, 2]  # never more than max(k, limit)
    assert near_top(scores, 10, 1).tolist() == [6, 1, 2, 4, 5, 0, 3]  # k >= N: everything
    with pytest.raises(ValueError, match="1-D"):
        near_top(scores[None], 2, 4)


@pytest.mark.parametrize("n", [2_000, 20_000])
def test_near_top_of_many_scores_is_the_full_stable_sorts(n):
    """Over many items near_top takes the best by topk, not a full sort: same positions in the same order,
    ties (bf16 scores repeat a lot) by position, including ties across the limit."""
    g = torch.Generator().manual_seed(n)
    scores = (torch.rand(n, generator=g) * 4).bfloat16().float()  # few distinct values: long runs of ties
    for k, r_q, limit in [(10, 1, 256), (24, 16, 256), (5, 64, 50), (300, 4, 256)]:
        want = torch.argsort(scores, descending=True, stable=True)[: max(k, limit)]
        kth = scores[want[k - 1]]
        want = want[scores[want] >= kth - r_q / 128.0]
        assert torch.equal(near_top(scores, k, r_q, limit=limit), want), (k, r_q, limit)
    # NaN scores (never made by scoring, but not to be lost on): the same answer as the full sort's.
    for nans in (scores.clone().index_fill_(0, torch.arange(0, n, 7), float("nan")), torch.full((n,), float("nan"))):
        want = torch.argsort(nans, descending=True, stable=True)[:256]
        kth = nans[want[9]]
        assert torch.equal(near_top(nans, 10, 1), want[nans[want] >= kth - 1 / 128.0])


def test_first_vectors_and_candidate(data):
    _, c = data
    store = CandidateStore(c)
    first = store.first_vectors()
    assert first.dtype == torch.float32 and first.shape == (11, 16)
    torch.testing.assert_close(first, c[:, 0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(store.candidate(4), c[4], rtol=1e-2, atol=1e-2)


def test_from_vector_major_shares_memmap_and_never_writes_it(tmp_path, data):
    q, c = data
    bits = c.to(torch.bfloat16).transpose(0, 1).contiguous().view(torch.uint16).numpy()
    path = tmp_path / "vectors.u16"
    bits.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=bits.shape)

    store = CandidateStore.from_vector_major(mm)
    assert torch.equal(store.maxsim(q, (4, 8)), maxsim(q, c, (4, 8)))
    assert store.vector_major().data_ptr() == mm.ctypes.data  # shared, not copied

    store.append(c[:1])
    store.remove([0])
    assert len(store) == 11
    assert np.array_equal(np.fromfile(path, dtype=np.uint16).reshape(bits.shape), bits)

    from_tensor = CandidateStore.from_vector_major(torch.from_numpy(bits).view(torch.bfloat16))
    assert torch.equal(from_tensor.maxsim(q), maxsim(q, c))
    from_float = CandidateStore.from_vector_major(c.transpose(0, 1).numpy())
    assert torch.equal(from_float.maxsim(q), maxsim(q, c))


# --- explain ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, (1, 1), (3, 5), (5, 9)])
def test_explain_breaks_down_the_score(data, budget):
    q, c = data
    out = explain(q[1], c[6], budget)
    r_q, r_c = budget or (5, 9)
    assert out["sim"].shape == (r_q, r_c) and out["sim"].dtype == torch.float32
    assert out["argmax"].dtype == torch.long and out["argmax"].shape == (r_q,)
    assert out["contributions"].shape == (r_q,)

    ref_sim = torch.tensor(
        [
            [sum(a * b for a, b in zip(qv, cv, strict=True)) for cv in c[6, :r_c].tolist()]
            for qv in q[1, :r_q].tolist()
        ]
    )
    torch.testing.assert_close(out["sim"], ref_sim.float(), rtol=1e-5, atol=1e-5)
    assert out["argmax"].tolist() == ref_sim.argmax(dim=1).tolist()
    assert torch.equal(out["contributions"], out["sim"][torch.arange(r_q), out["argmax"]])
    assert out["score"] == pytest.approx(float(out["contributions"].sum()), abs=1e-5)
    assert out["score"] == pytest.approx(float(maxsim(q[1:2], c[6:7], budget)), rel=1e-2, abs=4e-3 * r_q)


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda q, c: maxsim(q, c, (1, 10)),
            "budget r_c=10 is out of range: candidates have 9 vectors, allowed 1..9",
        ),
        (
            lambda q, c: maxsim(q, c, (0, 1)),
            "budget r_q=0 is out of range: queries have 5 vectors, allowed 1..5",
        ),
        (lambda q, c: maxsim(q, c, (6, 1)), "r_q=6 is out of range"),
        (lambda q, c: maxsim(q, c, (1, 0)), "r_c=0 is out of range"),
        (lambda q, c: maxsim(q, c, (1,)), "budget must be None or a pair of ints"),
        (lambda q, c: maxsim(q, c, (1.0, 2)), "budget must be None or a pair of ints"),
        (lambda q, c: maxsim(q[:0], c), "empty query batch"),
        (lambda q, c: maxsim(q[:, :0], c), "0 vectors per query"),
        (lambda q, c: maxsim(q[0], c), "q must have shape [Bq, R_q, D]"),
        (lambda q, c: maxsim(q, c[0]), "c must have shape [N, R_c, D]"),
        (lambda q, c: maxsim(q, c[:, :0]), "0 vectors per candidate"),
        (lambda q, c: maxsim(q, c[..., :8]), "dimension mismatch: queries have D=16, candidates have D=8"),
        (lambda q, c: maxsim(q.numpy(), c), "q must be a torch.Tensor"),
        (lambda q, c: maxsim(q.long(), c), "floating-point"),
        (lambda q, c: CandidateStore(c).maxsim(q, (1, 10)), "candidates have 9 vectors, allowed 1..9"),
        (lambda q, c: CandidateStore(c).maxsim(q[..., :8]), "dimension mismatch"),
        (lambda q, c: CandidateStore(c).maxsim(q, indices=[11]), "index 11 is out of range"),
        (lambda q, c: CandidateStore(c).maxsim(q, indices=[-1]), "index -1 is out of range"),
        (lambda q, c: CandidateStore(c).append(c[:, :4]), "append: candidates have shape"),
        (lambda q, c: CandidateStore(c).remove([0.5]), "indices must be a 1-D sequence of ints"),
        (lambda q, c: CandidateStore(c).keep([True] * 3), "keep: mask must be a 1-D bool tensor"),
        (lambda q, c: CandidateStore(c).candidate(11), "index 11 is out of range"),
        (lambda q, c: CandidateStore(), "needs candidates c, or both dim= and num_vectors="),
        (lambda q, c: CandidateStore(dim=0, num_vectors=4), "dim must be a positive int"),
        (lambda q, c: CandidateStore.from_vector_major(c[0]), "must have shape [R_c, N, D]"),
        (lambda q, c: CandidateStore.from_vector_major(np.zeros((2, 3, 4), np.int32)), "uint16"),
        (lambda q, c: explain(q, c[0]), "explain: q must be one query of shape [R_q, D]"),
        (lambda q, c: explain(q[0], c[0], (6, 1)), "r_q=6 is out of range"),
        (lambda q, c: explain(q[0], c[0, :, :8]), "dimension mismatch"),
    ],
)
def test_bad_input_raises_clear_value_error(data, call, message):
    q, c = data
    with pytest.raises(ValueError) as err:
        call(q, c)
    assert message in str(err.value)
