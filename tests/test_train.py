"""MMR loss and the training loop, end to end on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from model import MetaEmbed, MetaEmbedConfig
from model.losses import maxsim_dense, mmr_loss
from model.train import load_rows, main

GROUPS = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_maxsim_dense_matches_loops():
    q, c = _unit(2, 3, 8, seed=1), _unit(4, 5, 8, seed=2)
    expected = torch.tensor([[sum(max(float(q[b, i] @ c[n, j]) for j in range(5)) for i in range(3))
                              for n in range(4)] for b in range(2)])
    torch.testing.assert_close(maxsim_dense(q, c), expected, atol=1e-5, rtol=1e-5)


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


def test_train_cli_end_to_end(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _toy_rows()))
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--batch-size", "2", "--lora-r", "4", "--embed-dim", "16",
            "--no-progress", "--save-every", "2", "--seed", "3", "--device", "cpu"]
    main(args + ["--steps", "2"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2
    main(args + ["--steps", "4", "--resume"])
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


def test_average_states_is_the_elementwise_mean_in_the_first_states_dtypes():
    from model.soup import average_states

    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.0], dtype=torch.bfloat16)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["b"].dtype == torch.bfloat16 and avg["b"].item() == 0.5
    with pytest.raises(ValueError, match="different tensors"):
        average_states([a, {"w": a["w"]}])
    with pytest.raises(ValueError, match="shape"):
        average_states([a, {"w": torch.zeros(3), "b": a["b"]}])
    with pytest.raises(ValueError, match="at least one"):
        average_states([])


def test_train_mini_saves_the_average_of_its_runs_and_reuses_finished_ones(tmp_path, monkeypatch):
    """Runs already finished (a `done` marker) are reloaded, not retrained; the saved checkpoint is their
    mean and the runs' folders are gone afterwards."""
    from model import checkpoint, train_mini

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_mini, "train", no_training)
    torch.manual_seed(0)
    model = MetaEmbed.from_config(train_mini.mini_config(), device="cpu", dtype=torch.float32, seed=0)
    base = model.trained_state_dict()
    out = tmp_path / "mini"
    for i, shift in enumerate((1.0, 3.0)):
        run = out / f".ingredient-{i}"
        checkpoint.save_weights({k: v + shift for k, v in base.items()}, run)
        (run / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": shift}) + "\n")
        (run / "done").write_text("finished\n")
    train_mini.main(["--out", str(out), "--ingredients", "2"])
    saved = checkpoint.load_weights(out)
    assert set(saved) == set(base)
    for k in base:
        torch.testing.assert_close(saved[k], base[k] + 2.0)
    assert sorted(p.name for p in out.iterdir()) == ["metaembed.safetensors", "metaembed_config.json",
                                                     "train_log.jsonl"]
    runs = [json.loads(line)["run"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert runs == [0, 1]
    loaded = MetaEmbed.from_pretrained(out, device="cpu", merge_lora=False)
    torch.testing.assert_close(loaded.query_meta.detach(), base["query_meta"] + 2.0)


def test_span_distillation_teaches_meta_states_their_span_means(tmp_path):
    """With granular meta tokens and no LoRA, the span-feature term alone (no MMR) lowers itself: the meta
    states move towards the mean base token state of their spans."""
    from model.train import SpanTeacher, TrainArgs, _step_loss, init_projection_pca, train

    rows = [{k: v for k, v in r.items() if k != "negative"} for r in _toy_rows()]
    cfg = MetaEmbedConfig(lora_r=None, num_query_tokens=4, num_candidate_tokens=8, groups=[(1, 1), (2, 4), (4, 8)],
                          embed_dim=32, embed_bias=True, meta_attention="spans")
    torch.manual_seed(0)
    model = MetaEmbed.from_config(cfg, device="cpu", seed=1)
    init_projection_pca(model, [r["positive"] for r in rows])
    teacher = SpanTeacher(cfg, torch.device("cpu"), [r["positive"] for r in rows])
    args = TrainArgs(out=str(tmp_path), steps=15, batch_size=4, new_lr=3e-2, warmup=1, progress=False,
                     span_distill=1.0, mmr=0.0)
    with torch.no_grad():
        _, before = _step_loss(model.eval(), rows, cfg, args=args, spans=teacher)
    train(model, rows, args)
    with torch.no_grad():
        _, after = _step_loss(model.eval(), rows, cfg, args=args, spans=teacher)
    assert after["spans"] < 0.8 * before["spans"]
    # Only the new parts were trained: the backbone has no LoRA and the checkpoint holds meta + projection.
    assert set(model.trained_state_dict()) == {"query_meta", "candidate_meta", "proj.weight", "proj.bias"}


def test_pca_projection_centres_the_token_states():
    from model.train import init_projection_pca

    cfg = MetaEmbedConfig(lora_r=None, embed_dim=16, embed_bias=True)
    model = MetaEmbed.from_config(cfg, device="cpu")
    texts = ["the cat sat on the mat", "a red sports car on a race track", "how to install packages with apt"]
    init_projection_pca(model, texts)
    w = model.proj.weight
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-4, rtol=0)  # orthonormal rows
    enc = model.backbone.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model.backbone.model(**enc).last_hidden_state[enc["attention_mask"].bool()]
        projected = model.proj(h)
    assert projected.mean(0).abs().max() < 1e-3  # centred
    with pytest.raises(ValueError, match="embed_bias"):
        init_projection_pca(MetaEmbed.from_config(MetaEmbedConfig(lora_r=None, embed_dim=16), device="cpu"), texts)
