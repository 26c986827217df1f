"""The fused MaxSim kernel (model/maxsim_kernel.c / .py): its scores against a float64 reference at every
shape its register blocks and tiles split differently, its lanes, and how it is built, cached and left out.
No timing here: see bench/maxsim.py."""

import os
import shutil
import stat
import time
import warnings
from pathlib import Path

import pytest
import torch

import model.maxsim_kernel as maxsim_kernel
import model.scoring_threads as scoring_threads
from model.scoring import CandidateStore, maxsim
from tests.helpers import unit


@pytest.fixture(scope="module")
def kernel() -> maxsim_kernel.Kernel:
    k = maxsim_kernel.load()
    if k is None:
        pytest.skip("the fused MaxSim kernel does not build or run here (no C compiler, or no AVX2)")
    return k


def _reference(rows: torch.Tensor, vm: torch.Tensor, r_q: int, r_c: int, idx: torch.Tensor | None) -> torch.Tensor:
    """float64 MaxSim of rows [Bq*r_q, D] (as the kernel reads them) against vm [>=r_c, n, D]."""
    cand = vm[:r_c].double() if idx is None else vm[:r_c, idx].double()
    sim = torch.einsum("rd,jnd->rnj", rows.double(), cand).amax(-1)  # [rows, n]
    return sim.view(-1, r_q, sim.shape[1]).sum(1)


VARIANTS = [maxsim_kernel.F32, maxsim_kernel.BF16]


# Rows 1-32 cover every lane split (1, 2, 4, 8 or 16 lanes per row, and several groups of rows); candidate
# counts below, at and across a register block (12) and a tile; dims that do and do not take every split.
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bq, r_q", [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 8), (2, 4), (1, 16), (3, 8),
                                     (2, 16)])
@pytest.mark.parametrize("d", [8, 24, 64, 96])  # 64 and 96: AMX tiles (32 dimensions each) where the CPU has them
def test_scores_equal_a_float64_reference(kernel, variant, bq, r_q, d):
    if not kernel.takes(variant, d):
        pytest.skip("this CPU does not run this variant")
    dtype = torch.float32 if variant == maxsim_kernel.F32 else torch.bfloat16
    rows = unit(bq * r_q, d, seed=r_q).to(dtype)
    for n, r_c in ((1, 1), (11, 3), (13, 5), (700, 7)):
        vm = unit(8, n, d, seed=n).bfloat16()
        out = torch.full((bq, n), float("nan"))
        kernel.score(variant, rows, vm, r_c, r_q, out)
        torch.testing.assert_close(out.double(), _reference(rows, vm, r_q, r_c, None), rtol=0, atol=2e-5 * r_q)
        idx = torch.arange(n - 1, -1, -2)  # a gather, in reverse
        part = torch.full((bq, idx.numel()), float("nan"))
        kernel.score(variant, rows, vm, r_c, r_q, part, idx)
        torch.testing.assert_close(part.double(), _reference(rows, vm, r_q, r_c, idx), rtol=0, atol=2e-5 * r_q)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiles_strided_stores_and_column_slices(kernel, variant):
    d = 16
    if not kernel.takes(variant, d):
        pytest.skip("this CPU does not run this variant")
    dtype = torch.float32 if variant == maxsim_kernel.F32 else torch.bfloat16
    store = CandidateStore(unit(3000, 6, d, seed=1))
    store.append(unit(10, 6, d, seed=2))  # spare capacity: each vector's rows are not back to back
    vm = store.vector_major()
    assert vm.stride(0) != vm.shape[1] * d
    rows = unit(16, d, seed=3).to(dtype)
    out = torch.zeros(2, 5000)
    # 2,510 candidates: more than one tile of every way of multiplying (2,400 / 2,368 on AMX / 504 fp32), with a
    # padded last block; written into a column slice of a wider output
    kernel.score(variant, rows, vm[:, 500:3010], 6, 8, out[:, 7:2517])
    torch.testing.assert_close(out[:, 7:2517].double(), _reference(rows, vm[:, 500:3010], 8, 6, None),
                               rtol=0, atol=2e-4)
    assert not out[:, :7].any() and not out[:, 2517:].any()  # nothing written outside its columns


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("r_q", [1, 2, 4, 16])
def test_a_query_scores_the_same_alone_and_in_a_batch(kernel, variant, r_q):
    d = 64  # AMX-sized where the CPU has it
    if not kernel.takes(variant, d):
        pytest.skip("this CPU does not run this variant")
    dtype = torch.float32 if variant == maxsim_kernel.F32 else torch.bfloat16
    rows = unit(5 * r_q, d, seed=r_q).to(dtype)
    vm = unit(8, 100, d, seed=9).bfloat16()
    batch = torch.empty(5, 100)
    kernel.score(variant, rows, vm, 8, r_q, batch)
    for b in range(5):
        alone = torch.empty(1, 100)
        kernel.score(variant, rows[b * r_q:(b + 1) * r_q].contiguous(), vm, 8, r_q, alone)
        assert torch.equal(alone[0], batch[b])  # bit for bit: the same sums in the same order


def test_amx_is_found_where_the_cpu_and_linux_offer_it(kernel):
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if not {"amx_tile", "amx_bf16", "avx512_bf16"} <= set(flags):
        pytest.skip("no AMX on this CPU")
    assert kernel.features & 0b100  # else the AMX tests above would pass on vdpbf16ps unnoticed


def test_score_refuses_a_layout_it_does_not_read(kernel):
    vm = unit(2, 5, 8, seed=1).bfloat16()
    out = torch.empty(1, 5)
    with pytest.raises(ValueError, match="layout"):
        kernel.score(maxsim_kernel.F32, unit(2, 8, seed=2).double(), vm, 2, 2, out)
    with pytest.raises(ValueError, match="layout"):
        kernel.score(maxsim_kernel.F32, unit(2, 8, seed=2), vm.float(), 2, 2, out)
    with pytest.raises(ValueError, match="layout"):
        kernel.score(maxsim_kernel.F32, unit(2, 8, seed=2), vm, 2, 2, out, torch.arange(5, dtype=torch.int32))
    rows = unit(2, 8, seed=2)
    for bad in (
        lambda: kernel.score(maxsim_kernel.F32, unit(2, 16, seed=2), vm, 2, 2, out),  # D differs
        lambda: kernel.score(maxsim_kernel.F32, rows, vm, 3, 2, out),  # r_c beyond the stored vectors
        lambda: kernel.score(maxsim_kernel.F32, rows, vm, 2, 3, out),  # r_q does not divide the rows
        lambda: kernel.score(maxsim_kernel.F32, rows, vm, 2, 2, torch.empty(1, 4)),  # output of another size
        lambda: kernel.score(maxsim_kernel.F32, rows, vm, 2, 2, torch.empty(1, 2), torch.tensor([0, 5])),  # idx
    ):
        with pytest.raises(ValueError, match="shapes"):
            bad()


def test_lanes_split_the_candidates_without_changing_the_scores(kernel, monkeypatch):
    if not scoring_threads._per_thread_setting():
        pytest.skip("torch without OpenMP: one lane")
    q, c = unit(2, 16, 32, seed=5), unit(5000, 8, 32, seed=6)
    store = CandidateStore(c)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(scoring_threads, "_FORCE", None)
        assert scoring_threads.lane_count() == 2
        two = store.maxsim(q, (16, 8))
        two_idx = store.maxsim(q, (16, 8), indices=torch.arange(4999, -1, -1))
        monkeypatch.setattr(scoring_threads, "_FORCE", 1)
        one = store.maxsim(q, (16, 8))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each candidate's sum is computed the same way whatever lane holds it
    assert torch.equal(two_idx, two.flip(1))


def test_store_and_functional_maxsim_use_it_and_match_torch(kernel, monkeypatch):
    q, c = unit(3, 16, 24, seed=7), unit(400, 9, 24, seed=8)
    with_kernel = (CandidateStore(c).maxsim(q, (8, 9), precise=True), maxsim(q, c, (16, 9)))
    calls = []
    score = maxsim_kernel.Kernel.score
    monkeypatch.setattr(maxsim_kernel.Kernel, "score", lambda self, *a, **k: calls.append(1) or score(self, *a, **k))
    CandidateStore(c).maxsim(q, (4, 8))
    assert calls  # the store's fast path goes through the kernel
    monkeypatch.setattr(maxsim_kernel, "load", lambda: None)
    without = (CandidateStore(c).maxsim(q, (8, 9), precise=True), maxsim(q, c, (16, 9)))
    torch.testing.assert_close(with_kernel[0], without[0], rtol=0, atol=1e-5)  # both fp32 of the stored
    torch.testing.assert_close(with_kernel[1], without[1], rtol=1e-2, atol=4e-3 * 16)  # bf16 rounding


# ---- building, caching, leaving it out ------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A loader that decides again, with its own cache folder."""
    monkeypatch.setenv("METAEMBED_KERNEL_DIR", str(tmp_path / "kernels"))
    maxsim_kernel._reset()
    yield tmp_path
    maxsim_kernel._reset()


def test_built_once_then_loaded_from_the_cache(kernel, fresh, monkeypatch):
    (fresh / "kernels").mkdir()
    stale, recent = fresh / "kernels" / "maxsim-0123456789abcdef.so", fresh / "kernels" / "maxsim-fedcba9876543210.so"
    stale.write_bytes(b"a build of another version, not loaded for two months")
    recent.write_bytes(b"a build another version loaded yesterday")
    os.utime(stale, (time.time() - 60 * 86400,) * 2)
    os.utime(recent, (time.time() - 86400,) * 2)
    first = maxsim_kernel.load()
    assert first is not None and first.path.parent == fresh / "kernels"
    # no temp file left behind; the stale build is gone, the one in use is kept
    assert sorted(p.name for p in (fresh / "kernels").iterdir()) == sorted([first.path.name, recent.name])
    maxsim_kernel._reset()
    monkeypatch.setattr(maxsim_kernel.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    again = maxsim_kernel.load()
    assert again is not None and again.path == first.path


def test_extra_compiler_flags_make_another_build(kernel, fresh, monkeypatch):
    default = maxsim_kernel.load()
    maxsim_kernel._reset()
    monkeypatch.setenv("METAEMBED_KERNEL_CFLAGS", "-DAMX_MIN_RQ=99")  # vdpbf16ps only, as without AMX
    flagged = maxsim_kernel.load()
    assert flagged is not None and flagged.path != default.path
    d, variant = 64, maxsim_kernel.BF16
    if not flagged.takes(variant, d):
        pytest.skip("this CPU does not run the bf16 variant")
    rows, vm = unit(16, d, seed=1).bfloat16(), unit(4, 50, d, seed=2).bfloat16()
    out = torch.empty(1, 50)
    flagged.score(variant, rows, vm, 4, 16, out)
    torch.testing.assert_close(out.double(), _reference(rows, vm, 16, 4, None), rtol=0, atol=4e-4)


def test_turned_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("METAEMBED_MAXSIM_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert maxsim_kernel.load() is None
    q, c = unit(1, 4, 8, seed=1), unit(30, 3, 8, seed=2)
    assert maxsim(q, c).shape == (1, 30)  # torch's paths score instead


def test_a_file_in_the_cache_that_is_not_the_kernel_is_a_warning(kernel, fresh, monkeypatch):
    class Foreign:  # a library that loads but has none of the kernel's functions
        pass

    # (Not a real foreign library: a second copy of a system one, loaded under another name, crashed the
    # interpreter at exit.)
    monkeypatch.setattr(maxsim_kernel.ctypes, "CDLL", lambda path: Foreign())
    with pytest.warns(RuntimeWarning, match="without the fused kernel"):
        assert maxsim_kernel.load() is None
    assert maxsim_kernel.load() is None  # decided once: no second warning, no exception


def test_no_home_builds_into_a_private_temp_folder(kernel, monkeypatch):
    monkeypatch.delenv("METAEMBED_KERNEL_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(maxsim_kernel.Path, "home", lambda: (_ for _ in ()).throw(RuntimeError("no home")))
    (folder, shared), (other, _) = maxsim_kernel._cache_dir(), maxsim_kernel._cache_dir()
    try:
        assert not shared and folder.name.startswith("metaembed-kernel-")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # nobody else can plant a library there
        assert other != folder  # a new one per process that needs it, never a fixed name
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


def test_cc_with_arguments_is_split_as_a_shell_would(fresh, monkeypatch):
    monkeypatch.setenv("CC", "env FOO=1 cc")
    assert maxsim_kernel._compiler()[1:] == ["FOO=1", "cc"] and maxsim_kernel._compiler()[0].endswith("env")


def test_no_compiler_is_a_warning_and_torch_scores(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert maxsim_kernel.load() is None
    q, c = unit(2, 4, 8, seed=3), unit(30, 3, 8, seed=4)
    want = torch.einsum("bqd,ncd->bnqc", q.double(), c.bfloat16().double()).amax(-1).sum(-1)
    torch.testing.assert_close(CandidateStore(c).maxsim(q, precise=True).double(), want, rtol=0, atol=1e-5)


def test_a_failing_compiler_is_named_with_its_message(fresh, monkeypatch):
    cc = fresh / "broken-cc"
    cc.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    with pytest.warns(RuntimeWarning, match="broken-cc failed on maxsim_kernel.c: error: this compiler is broken"):
        assert maxsim_kernel.load() is None
    assert not any((fresh / "kernels").iterdir())  # the failed build left nothing to load later
