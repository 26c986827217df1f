"""MMR loss and the training loop, end to end on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from model import MetaEmbed, MetaEmbedConfig
from model.losses import mmr_loss
from model.scoring import maxsim_dense
from model.train import load_rows, main

GROUPS = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mmr_loss_is_sum_of_group_infonce():
    q, pos, neg = _unit(4, 16, 8, seed=3), _unit(4, 64, 8, seed=4), _unit(4, 64, 8, seed=5)
    total, parts = mmr_loss(q, pos, neg, groups=GROUPS, temperature=0.03)
    cands = torch.cat([pos, neg])
    manual = 0.0
    for r_q, r_c in GROUPS:
        logits = maxsim_dense(q[:, :r_q], cands[:, :r_c]) / 0.03
        manual += sum(-torch.log_softmax(logits[b], 0)[b] for b in range(4))/4
        assert parts[(r_q, r_c)] == pytest.approx(float(F.cross_entropy(logits, torch.arange(4))), rel=1e-5)
    assert float(total) == pytest.approx(float(manual), rel=1e-5)
    # Weights scale each group's term.
    weighted, _ = mmr_loss(q, pos, neg, groups=GROUPS, weights=[0, 0, 0, 0, 2.0])
    assert float(weighted) == pytest.approx(2 * parts[(16, 64)], rel=1e-5)


def test_mmr_loss_decreases_on_toy_task():
    """Free query/candidate vectors trained with the MMR loss learn to pair up."""
    torch.manual_seed(0)
    q = torch.nn.Parameter(torch.randn(8, 16, 32))
    c = torch.nn.Parameter(torch.randn(8, 64, 32))
    opt = torch.optim.Adam([q, c], lr=0.05)
    losses = []
    for _ in range(30):
        loss, _ = mmr_loss(F.normalize(q, dim=-1), F.normalize(c, dim=-1), groups=GROUPS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_mmr_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="exceeds"):
        mmr_loss(_unit(2, 4, 8), _unit(2, 8, 8), groups=[(8, 8)])
    with pytest.raises(ValueError, match="same B"):
        mmr_loss(_unit(2, 4, 8), _unit(3, 8, 8), groups=[(1, 1)])


def _toy_rows():
    return [
        {"query": "a dog", "positive": "golden retriever, dog, animal. colours: yellow",
         "negative": "tabby cat, feline, animal. colours: gray"},
        {"query": "red car", "positive": "sports car, car, vehicle. colours: red",
         "negative": "pickup truck, vehicle. colours: blue"},
        {"query": "beach", "positive": "seashore, coast, sand. colours: blue, yellow",
         "negative": "alp, mountain, snow. colours: white"},
        {"query": "cat", "positive": "tabby cat, feline, animal", "negative": "golden retriever, dog, animal"},
    ]


def test_training_lowers_the_loss_on_its_batch(tmp_path):
    from model.train import TrainArgs, _step_loss, train

    rows = _toy_rows()
    cfg = MetaEmbedConfig(lora_r=4, num_query_tokens=4, num_candidate_tokens=8,
                          groups=[(1, 1), (2, 4), (4, 8)], embed_dim=32)
    model = MetaEmbed.from_config(cfg, device="cpu", seed=1)
    with torch.no_grad():
        model.eval()
        before, _ = _step_loss(model, rows, cfg)
    train(model, rows, TrainArgs(out=str(tmp_path), steps=12, batch_size=4, lr=3e-3, warmup=1, progress=False))
    with torch.no_grad():
        after, _ = _step_loss(model, rows, cfg)
    assert float(after) < 0.7 * float(before)


def test_train_cli_rejects_too_few_meta_tokens(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _toy_rows()))
    # The default groups go up to (16, 64): 2 and 4 meta tokens cannot train them.
    with pytest.raises(ValueError, match="out of range"):
        main(["--data", str(data), "--out", str(tmp_path / "run"), "--num-query-tokens", "2",
              "--num-candidate-tokens", "4", "--steps", "1", "--no-progress"])


def test_train_cli_end_to_end(tmp_path, monkeypatch):
    import model.train as train_module

    real_train, checkpointing = train_module.train, []
    monkeypatch.setattr(train_module, "train",
                        lambda m, rows, a: checkpointing.append(a.gradient_checkpointing) or real_train(m, rows, a))
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _toy_rows()))
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--batch-size", "2", "--lora-r", "4", "--embed-dim", "16",
            "--no-progress", "--save-every", "2", "--seed", "3", "--device", "cpu"]
    main(args + ["--steps", "2"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2
    # The resumed run with the text backbone's layers checkpointed (recomputed in the backward pass), its
    # weights asked for in fp32 as a fresh run's are (on a GPU the default would be bf16).
    real_load, dtypes = MetaEmbed.from_pretrained.__func__, []
    monkeypatch.setattr(MetaEmbed, "from_pretrained", classmethod(
        lambda cls, *a, **k: dtypes.append(k.get("dtype")) or real_load(cls, *a, **k)))
    main(args + ["--steps", "4", "--resume", "--gradient-checkpointing"])
    monkeypatch.undo()
    assert dtypes == [torch.float32]
    assert checkpointing == [False, True]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-1] == 4 and log[-1]["step"] > 2
    model = MetaEmbed.from_pretrained(out, device="cpu")
    assert model.encode_queries(["a dog"]).shape == (1, 16, 16)


def test_load_rows_reports_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n{"query": "only"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_rows(path)
    path.write_text('{"query": "a", "positive": "b"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        load_rows(path)
    path.write_text('{"query": "a", "positive": "b", "distill": 0.5}\n{"query": "a", "positive": "b", "distill": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: 'distill'"):
        load_rows(path)
    path.write_text('{"query": "a", "positive": "b", "distill": 0.5}\n{"query": "a", "positive": "b", "contrastive": -1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: 'contrastive'"):
        load_rows(path)
    path.write_text('{"query": "a", "positive": "b", "distill": 0.5, "contrastive": 0}\n')
    assert load_rows(path)[0] | {"query": "a"} == {"query": "a", "positive": "b", "distill": 0.5, "contrastive": 0.0}


def test_load_rows_resolves_image_paths(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "cat.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "cat", "positive": "cat.png",
                                "negative": {"image": "cat.png", "text": "a caption"}}) + "\n")
    row = load_rows(path)[0]
    assert row["positive"] == {"image": str(tmp_path / "cat.png"), "text": None}
    assert row["negative"]["text"] == "a caption"


def test_ignored_false_negatives_leave_the_softmax():
    q, pos = _unit(3, 2, 8, seed=6), _unit(3, 4, 8, seed=7)
    ignore = torch.tensor([[False, True, False], [False, False, False], [False, False, False]])
    _, parts = mmr_loss(q, pos, groups=[(2, 4)], ignore=ignore)
    logits = maxsim_dense(q, pos) / 0.03
    row0 = -torch.log_softmax(logits[0, [0, 2]], 0)[0]
    rest = [-torch.log_softmax(logits[b], 0)[b] for b in (1, 2)]
    assert parts[(2, 4)] == pytest.approx(float((row0 + sum(rest)) / 3), rel=1e-5)
    # A query's own positive is never ignored, even if the mask says so.
    _, same = mmr_loss(q, pos, groups=[(2, 4)], ignore=torch.eye(3, dtype=torch.bool))
    _, plain = mmr_loss(q, pos, groups=[(2, 4)])
    assert same == plain


def test_false_negative_mask_from_tags():
    from model.train import false_negatives

    rows = [{"query": "dog", "positive": "a", "negative": "b", "query_tags": ["dog"], "positive_tags": ["dog"]},
            {"query": "cat", "positive": "c", "negative": "d", "query_tags": ["cat"], "positive_tags": ["dog", "cat"],
             "negative_tags": ["dog"]}]
    mask = false_negatives(rows, with_negatives=True)
    assert mask.tolist() == [[True, True, False, True], [False, True, False, False]]
    assert false_negatives([{"query": "x", "positive": "y"}], with_negatives=False) is None


def test_distillation_term_is_zero_when_student_matches_teacher():
    q, pos, neg = _unit(4, 2, 8, seed=8), _unit(4, 4, 8, seed=9), _unit(4, 4, 8, seed=10)
    student = maxsim_dense(q, torch.cat([pos, neg])) / 0.03
    plain, _ = mmr_loss(q, pos, neg, groups=[(2, 4)])
    same, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=student)
    assert float(same) == pytest.approx(float(plain), abs=1e-5)
    other, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=torch.zeros_like(student))
    assert float(other) > float(plain) + 1e-3  # a uniform teacher disagrees with a peaked student


def test_per_row_distillation_weights():
    q, pos, neg = _unit(4, 2, 8, seed=11), _unit(4, 4, 8, seed=12), _unit(4, 4, 8, seed=13)
    teacher = torch.randn(4, 8, generator=torch.Generator().manual_seed(14))
    plain, _ = mmr_loss(q, pos, neg, groups=[(2, 4)])
    scalar, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=teacher, distill_weight=0.5)
    rows, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=teacher, distill_weight=torch.full((4,), 0.5))
    assert float(rows) == pytest.approx(float(scalar), abs=1e-5)
    off, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=teacher, distill_weight=torch.zeros(4))
    assert float(off) == pytest.approx(float(plain), abs=1e-5)
    # Only the first query distilled: between nothing and everything at the same weight.
    one, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], teacher=teacher, distill_weight=torch.tensor([2.0, 0, 0, 0]))
    assert float(plain) < float(one)


def test_per_row_contrastive_weights():
    q, pos, neg = _unit(4, 2, 8, seed=15), _unit(4, 4, 8, seed=16), _unit(4, 4, 8, seed=17)
    logits = maxsim_dense(q, torch.cat([pos, neg])) / 0.03
    ce = F.cross_entropy(logits, torch.arange(4), reduction="none")
    ones, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], contrastive_weight=torch.ones(4))
    plain, _ = mmr_loss(q, pos, neg, groups=[(2, 4)])
    assert float(ones) == pytest.approx(float(plain), rel=1e-5)
    # Row 0 taught by the teacher only: its InfoNCE term is gone, the batch mean still divides by 4.
    w = torch.tensor([0.0, 1, 1, 1])
    some, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], contrastive_weight=w)
    assert float(some) == pytest.approx(float(ce[1:].sum() / 4), rel=1e-5)
    teacher = torch.randn(4, 8, generator=torch.Generator().manual_seed(18))
    only_kl, _ = mmr_loss(q, pos, neg, groups=[(2, 4)], contrastive_weight=torch.zeros(4), teacher=teacher,
                          distill_weight=torch.tensor([1.0, 0, 0, 0]))
    kl = F.kl_div(torch.log_softmax(logits[0], -1), torch.log_softmax(teacher[0], -1), log_target=True,
                  reduction="sum")
    assert float(only_kl) == pytest.approx(float(kl / 4), rel=1e-4)
    with pytest.raises(ValueError, match="contrastive_weight"):
        mmr_loss(q, pos, neg, groups=[(2, 4)], contrastive_weight=torch.ones(3))


def test_mini_recipe_rebuilds_the_shipped_checkpoint_bit_for_bit(tmp_path):
    """The one seeded command reproduces the bundled MetaEmbed-Mini exactly (the shipped readout is at its
    start, `--steps 0`): same tensors, same config, the same files and so the same checkpoint id."""
    from model import checkpoint
    from model.checkpoint import DEFAULT_CHECKPOINT
    from model.config import CONFIG_NAME
    from model.recipes.mini import train as recipe

    out = tmp_path / "mini"
    recipe.main(["--out", str(out)])
    shipped, rebuilt = checkpoint.load_weights(DEFAULT_CHECKPOINT), checkpoint.load_weights(out)
    assert set(rebuilt) == set(shipped)
    for k in shipped:
        assert torch.equal(rebuilt[k], shipped[k]), k
    assert json.loads((out / CONFIG_NAME).read_text()) == json.loads((DEFAULT_CHECKPOINT / CONFIG_NAME).read_text())
    assert checkpoint.checkpoint_id_of_folder(out) == checkpoint.checkpoint_id_of_folder(DEFAULT_CHECKPOINT)


def test_mini_recipe_trains_the_readout_on_generated_pairs(tmp_path, monkeypatch):
    from model.recipes.mini import train as recipe

    monkeypatch.setattr(recipe, "build_pairs", lambda n, seed: _toy_rows())
    out = tmp_path / "mini"
    recipe.main(["--out", str(out), "--steps", "3", "--batch-size", "4"])
    model = MetaEmbed.from_pretrained(out, device="cpu")
    assert model.readout.query.weight.abs().sum() > 0
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()][-1] == 3


def test_cached_readout_training_lowers_the_mmr_loss(tmp_path):
    """Granular model, frozen backbone: training the readout and projection on cached backbone states lowers
    the MMR loss of the real model (measured through the full forward pass, not the cache), and leaves the
    meta tokens and the backbone as they were."""
    from model.train import _step_loss
    from model.train_readout import ReadoutArgs, train_readout

    rows = _toy_rows()
    cfg = MetaEmbedConfig(lora_r=None, num_query_tokens=4, num_candidate_tokens=8, groups=[(1, 1), (2, 4), (4, 8)],
                          embed_dim=32, embed_bias=True, meta_attention="spans")
    model = MetaEmbed.from_config(cfg, device="cpu", seed=1)
    meta_before = model.candidate_meta.detach().clone()
    with torch.no_grad():
        before, _ = _step_loss(model.eval(), rows, cfg)
    train_readout(model, rows, ReadoutArgs(steps=40, batch_size=4, lr=1e-2, progress=False), out=tmp_path)
    with torch.no_grad():
        after, _ = _step_loss(model.eval(), rows, cfg)
    assert after < 0.7 * before
    assert torch.equal(model.candidate_meta.detach(), meta_before)
    assert model.readout.query.weight.abs().sum() > 0  # the readout moved off its uniform start
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40


def test_cached_readout_training_needs_the_granular_frozen_layout():
    from model.train_readout import ReadoutArgs, train_readout

    full = MetaEmbed.from_config(MetaEmbedConfig(lora_r=None, num_query_tokens=4, num_candidate_tokens=8,
                                                 groups=[(1, 1), (4, 8)]), device="cpu")
    with pytest.raises(ValueError, match="granular"):
        train_readout(full, _toy_rows(), ReadoutArgs(steps=1, progress=False))
