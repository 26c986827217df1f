"""app.store.planner: the exact/two-stage switch counts items x r_c x D and the CPU's bf16 class. No timings
here: the costs behind its constants are measured by bench/search.py switch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.store import index as index_module
from app.store import planner
from app.store.index import Index
from app.store.planner import exact_work_budget, uses_exact
from tests.helpers import fake_items


def test_the_switch_counts_the_vectors_dimension():
    for native in (True, False):
        budget = exact_work_budget(native)
        count = 2 * budget // (64 * 384)  # 128-d vectors fit, 384-d ones are three times the work
        assert uses_exact(count, 64, 128, native_bf16=native)
        assert not uses_exact(count, 64, 384, native_bf16=native)
    # On a CPU with native bf16 the switch stays where 640,000 128-d item-vectors put it.
    assert exact_work_budget(True) == 640_000 * 128
    assert uses_exact(10_000, 64, 128, native_bf16=True) and not uses_exact(10_001, 64, 128, native_bf16=True)


def test_emulated_bf16_switches_earlier_and_presets_split_as_measured():
    assert exact_work_budget(False, fp32_kernel=False) < exact_work_budget(True) / 4
    assert exact_work_budget(False, fp32_kernel=False) < exact_work_budget(False, fp32_kernel=True)
    assert exact_work_budget(False, fp32_kernel=True) < exact_work_budget(True)
    # 10,000 items of MetaEmbed-Mini (64 x 384): on a CPU without native bf16 torch's paths keep only the two
    # smallest presets exact, the fused kernel's fp32 variant also (4, 8); with native bf16 everything up to
    # (8, 16).
    def split(**cpu):
        return [uses_exact(10_000, r_c, 384, **cpu) for r_c in (1, 4, 8, 16, 64)]

    assert split(native_bf16=False, fp32_kernel=False) == [True, True, False, False, False]
    assert split(native_bf16=False, fp32_kernel=True) == [True, True, True, False, False]
    assert split(native_bf16=True) == [True, True, True, True, False]


def test_the_kernel_price_follows_whether_its_fp32_variant_loads(monkeypatch):
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: False)
    for loads in (True, False):
        monkeypatch.setattr(planner, "fp32_kernel_scores", lambda dim=8, loads=loads: loads)
        assert exact_work_budget() == exact_work_budget(False, fp32_kernel=loads)
        assert uses_exact(10_000, 8, 384) == loads


def test_collections_within_the_depth_are_always_exact():
    # The first stage would hand every item to the re-rank: the same work plus an IVF to build.
    torch_paths = {"native_bf16": False, "fp32_kernel": False}
    assert uses_exact(1_000, 64, 384, **torch_paths)
    assert not uses_exact(1_001, 64, 384, **torch_paths)
    assert not uses_exact(2_000, 64, 384, depth=1_999, **torch_paths)
    assert uses_exact(2_000, 64, 384, depth=2_000, **torch_paths)


def test_the_cpu_class_comes_from_the_bf16_capability(monkeypatch):
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: True)
    assert exact_work_budget() == exact_work_budget(True) and uses_exact(10_000, 16, 384)
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: False)
    assert exact_work_budget() == exact_work_budget(False) and not uses_exact(10_000, 16, 384)


def test_index_search_takes_the_path_the_planner_picks(tmp_path, monkeypatch):
    index = Index.create(tmp_path / "idx", "ck", 8, 16)
    vectors = F.normalize(torch.randn(120, 8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    index.add(fake_items(120), vectors)
    calls = []
    search = index_module.FirstStage.search
    monkeypatch.setattr(index_module.FirstStage, "search", lambda self, *a: calls.append(a) or search(self, *a))
    monkeypatch.setattr(planner, "exact_work_budget", lambda *cpu: 120 * 4 * 16)
    query = vectors[3]
    for r_c, two_stage in ((4, False), (8, True)):
        calls.clear()
        exact = index.search(query, (4, r_c), k=5, exact=True)
        assert index.search(query, (4, r_c), k=5, depth=119) == exact  # 119 of 120: the same top 5 here
        assert bool(calls) == two_stage
    calls.clear()
    index.search(query, (4, 8), k=5)  # the default depth (1,000) covers all 120 items: exact
    assert not calls
    index.close()

