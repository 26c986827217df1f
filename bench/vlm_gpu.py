"""Vision-language MetaEmbed at real size on a GPU: encoding throughput, peak memory and MMR training steps.

    PYTHONUNBUFFERED=1 python bench/vlm_gpu.py --out vlm.json          # real sizes, needs CUDA (~5-6 min, H200)
    nice -n 19 .venv/bin/python bench/vlm_gpu.py --tiny --out /tmp/vlm-tiny.json   # same code path, tiny, CPU

Nothing is downloaded: each backbone is built from its published config (Qwen2.5-VL-3B-Instruct,
SmolVLM-256M-Instruct) with random weights, directly on the device in bf16, with a word-level tokenizer
that has the family's special tokens and the family's real image processor settings (Qwen: 28 px merged
patches, SmolVLM: upscale to 2048 px, 512 px tiles + a global view; the PIL processors, as the project's
torchvision-free install gets them). The backbone then goes through the project's own adapters
(`QwenVLBackbone`, `Idefics3Backbone`), MetaEmbed (16 query / 64 candidate meta tokens, 128-d projection,
LoRA r=32 on the language model) and `model.train.train` (MMR loss over the paper's five groups), as
`python -m model.train --gradient-checkpointing` would run it on a GPU: fp32 weights under bf16 autocast, the
backbone's layers checkpointed (`TrainArgs.gradient_checkpointing`).

Per model: images/s (`encode_candidates`, 448x448 photos, CPU preprocessing included and also given
separately, with the image processor spread over --threads threads: the library's `ParallelImageProcessor`; the stock serial
processor's ms per photo is reported beside it), the vision tower's share of one batch's forward pass and its
`scaled_dot_product_attention` calls, queries/s (`encode_queries`), peak GPU memory of each phase, and the time
of each training step (query text + positive photo + hard-negative photo per row). Qwen's photos are encoded
twice, first with transformers' stock vision attention (one sdpa call per window) and then with the adapter's
grouped one (one call per window size, `model/backbones/qwen_vision_attention.py`, the default). Training runs
--steps steps (at most --train-minutes), and the second step's GPU memory is traced through the step
(`StepMemory`: after each vision-tower and language-model forward pass, the backward pass, the optimizer
step). For the models in --input-grad-models, --input-grad-steps more steps then run the way the previous
bench did, with transformers' input-grad hooks kept, which put the frozen vision tower under autograd.
Random weights give the same FLOPs and memory as trained ones, but the numbers say nothing about quality.
Each model and each phase runs in its own try/except, and the JSON (also printed) is rewritten after every
phase, so a failure or a timeout still reports the rest. `--models`, `--phases`, `--steps` and
`--train-minutes` cut a run down to fit a short GPU lease.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torch.optim.optimizer import (  # noqa: E402
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from model.backbones.image_threads import ParallelImageProcessor  # noqa: E402
from model.config import MetaEmbedConfig  # noqa: E402
from model.metaembed import MetaEmbed  # noqa: E402
from model.train import TrainArgs, train  # noqa: E402

WORDS = ("a photo of the red blue green white black small big old new cat dog house tree car boat bird "
         "flower mountain river street night beach snow city on in with and near under at what is where "
         "user assistant User Assistant : system").split()
QWEN_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
                "<|vision_end|>", "<|video_pad|>"]
IDEFICS_SPECIAL = (["<pad>", "<unk>", "<|begin_of_text|>", "<|im_start|>", "<end_of_utterance>",
                    "<fake_token_around_image>", "<image>", "<global-img>"]
                   + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
# SmolVLM's chat template, in its essentials (the test suite's).
IDEFICS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def word_tokenizer(special: list[str], **tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", **tokens)


def random_init(cls, config, device: torch.device, dtype: torch.dtype):
    """`cls` (a transformers base model, no LM head) with random weights, built on `device` in `dtype`."""
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def build_qwen(tiny: bool, device: torch.device, dtype: torch.dtype):
    """Qwen2.5-VL-3B-Instruct's config (tiny: 2 decoder layers, 2 vision blocks, small widths)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from model.backbones.qwen2_vl import QwenVLBackbone

    tokenizer = word_tokenizer(QWEN_SPECIAL, eos_token="<|im_end|>")
    ids = tokenizer.get_vocab()
    if tiny:
        text = dict(vocab_size=len(ids), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3])
        vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[1])
    else:
        text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24])
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                      fullatt_block_indexes=[7, 15, 23, 31])
    section = text.pop("mrope_section")
    text.update(rms_norm_eps=1e-6, max_position_embeddings=128000, pad_token_id=0,
                eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|im_start|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section})
    vision.update(hidden_act="silu", patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  tokens_per_second=2, in_channels=3)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    model = random_init(Qwen2_5_VLModel, config, device, dtype)
    # The Qwen2.5-VL processor's pixel budget (min 4 merged patches, max 12.8 MP); the adapter caps it further.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    return QwenVLBackbone(model, tokenizer, image_processor, family="qwen2.5-vl")


def build_idefics3(tiny: bool, device: torch.device, dtype: torch.dtype):
    """SmolVLM-256M-Instruct's config (Idefics3; tiny: 2 decoder layers, 1 vision layer, 64 px tiles)."""
    from transformers import Idefics3Config, Idefics3Model, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from model.backbones.idefics3 import Idefics3Backbone

    tokenizer = word_tokenizer(IDEFICS_SPECIAL, bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>")
    ids = tokenizer.get_vocab()
    if tiny:
        text = dict(vocab_size=len(ids), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                      image_size=64, patch_size=16)
        scale = 2
    else:
        text = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=512, patch_size=16)
        scale = 4
    text.update(model_type="llama", rms_norm_eps=1e-5, max_position_embeddings=8192, rope_theta=100000.0,
                pad_token_id=0, eos_token_id=ids["<end_of_utterance>"], bos_token_id=ids["<|begin_of_text|>"])
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=scale, image_token_id=ids["<image>"],
                            pad_token_id=0)
    model = random_init(Idefics3Model, config, device, dtype)
    tile = vision["image_size"]
    # SmolVLM's preprocessor_config: images resized to a 2048 px long side (4 tiles of 512), Lanczos, tiled.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
                                                resample=Image.Resampling.LANCZOS, image_mean=[0.5] * 3,
                                                image_std=[0.5] * 3)
    seq_len = (tile // vision["patch_size"]) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=IDEFICS_TEMPLATE)
    return Idefics3Backbone(model, processor, family="idefics3")


SPECS = {
    "qwen2.5-vl-3b": ("qwen2.5-vl", build_qwen),
    "smolvlm-256m": ("idefics3", build_idefics3),
}


def picture(size: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        w, h = rng.randrange(size // 16, size // 3), rng.randrange(size // 16, size // 3)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def query(seed: int) -> str:
    rng = random.Random(seed)
    content = [w for w in WORDS if w not in ("user", "assistant", "User", "Assistant", ":", "system")]
    return " ".join(rng.choice(content) for _ in range(rng.randrange(6, 15)))


class Clock:
    """Wall time of a block with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self):
        self.sync()
        t = time.perf_counter()
        try:
            yield self
        finally:
            self.sync()
            self.seconds = time.perf_counter() - t


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def gib(n: int | float) -> float:
    return round(n / 2**30, 2)


def peak(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    torch.cuda.synchronize(device)
    return {"peak_gib": gib(torch.cuda.max_memory_allocated(device)),
            "peak_reserved_gib": gib(torch.cuda.max_memory_reserved(device))}


def thread_images(backbone, threads: int) -> ParallelImageProcessor:
    """The backbone's own threaded image processor (model/backbones/image_threads.py), set to `threads`."""
    owner = backbone.processor if hasattr(backbone, "processor") else backbone
    owner.image_processor.threads = threads
    return owner.image_processor


class PrepareTimer:
    """Wraps `model.prepare` (tokenising + image processing, all on the CPU) to add up its seconds."""

    def __init__(self, model: MetaEmbed):
        self.inner = model.prepare
        self.seconds = 0.0
        model.prepare = self

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def encode_phase(model: MetaEmbed, items: list, side: str, batch_size: int, device: torch.device,
                 images: ParallelImageProcessor) -> dict:
    encode = model.encode_candidates if side == "candidate" else model.encode_queries
    prep = model.prepare if isinstance(model.prepare, PrepareTimer) else PrepareTimer(model)
    encode(items[:batch_size], batch_size=batch_size)  # warm-up: one full batch, untimed
    reset_peak(device)
    prep.seconds = 0.0
    clock = Clock(device)
    with clock():
        vecs = encode(items, batch_size=batch_size)
    res = {"n": len(items), "batch_size": batch_size, "seconds": round(clock.seconds, 3),
           "per_s": round(len(items) / clock.seconds, 1), "prepare_s": round(prep.seconds, 3),
           "per_s_without_prepare": round(len(items) / max(clock.seconds - prep.seconds, 1e-9), 1),
           "shape": list(vecs.shape), "finite": bool(torch.isfinite(vecs).all()), **peak(device)}
    sample = model.prepare(items[:1], side)
    res["tokens_per_item"] = int(sample["attention_mask"].sum())
    if side == "candidate":
        res.update(vision_breakdown(model, items[:batch_size], device))
    if side == "candidate":  # the stock single-threaded image processor, for comparison
        threads, images.threads = images.threads, 1
        n = min(len(items), 8)
        t = time.perf_counter()
        model.prepare(items[:n], side)
        res["prepare_ms_per_item_one_thread"] = round(1000 * (time.perf_counter() - t) / n, 1)
        images.threads = threads
    return res


@torch.inference_mode()
def vision_breakdown(model: MetaEmbed, items: list, device: torch.device) -> dict:
    """One batch again: the vision tower alone (and its attention calls) against the whole forward pass."""
    import torch.nn.functional as F

    batch = model.prepare(items, "candidate")
    clock = Clock(device)
    real_sdpa, calls = F.scaled_dot_product_attention, [0]

    def counting_sdpa(*a, **k):
        calls[0] += 1
        return real_sdpa(*a, **k)

    F.scaled_dot_product_attention = counting_sdpa
    try:
        with clock():
            model.backbone.image_features(batch, device)
    finally:
        F.scaled_dot_product_attention = real_sdpa
    vision = clock.seconds
    with clock():
        model.embed(batch, "candidate")
    n = len(items)
    return {"vision_ms_per_item": round(1000 * vision / n, 2), "forward_ms_per_item": round(1000 * clock.seconds / n, 2),
            "vision_sdpa_calls_per_batch": calls[0]}


class StepMemory:
    """GPU memory through one training step, read at each boundary: after every vision-tower forward pass, every
    language-model forward pass (the queries' first, then each chunk of photos: `model.train` embeds candidates
    16 at a time), before the optimizer step (the backward pass's peak) and after it. Each reading gives the
    memory still allocated and the peak since the previous reading (the peak counter is reset at each)."""

    def __init__(self, model: MetaEmbed, device: torch.device):
        self.device = device
        self.events: list[dict] = []
        self.active = False
        self.overall = 0  # peak bytes over the whole phase, across the resets
        backbone = model.backbone
        vision = getattr(backbone.model, "visual", None) or getattr(backbone.model, "vision_model", None)
        self.handles = [backbone.language_model.register_forward_hook(lambda *_: self.mark("language model forward")),
                        register_optimizer_step_pre_hook(lambda *_: self.mark("backward + grad clipping"))]
        if vision is not None:
            self.handles.append(vision.register_forward_hook(self._vision_done))
        self.photo_chunks = 0
        # Whether autograd records the frozen vision tower (it should not: nothing in it is trained).
        self.vision_requires_grad: bool | None = None

    def _vision_done(self, module, args, out) -> None:
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is not None and module.training and torch.is_grad_enabled():
            self.vision_requires_grad = bool(self.vision_requires_grad) or hidden.requires_grad
        self.mark("vision tower forward")

    def _read(self) -> dict:
        if self.device.type != "cuda":
            return {}
        torch.cuda.synchronize(self.device)
        peak_bytes = torch.cuda.max_memory_allocated(self.device)
        self.overall = max(self.overall, peak_bytes)
        torch.cuda.reset_peak_memory_stats(self.device)
        return {"allocated_gib": gib(torch.cuda.memory_allocated(self.device)), "peak_gib": gib(peak_bytes)}

    def start(self) -> None:
        self.events, self.active, self.photo_chunks = [], True, 0
        self.events.append({"at": "step start", **self._read()})

    def mark(self, what: str) -> None:
        if not self.active:
            return
        if what == "vision tower forward":
            self.photo_chunks += 1
        if what in ("vision tower forward", "language model forward"):
            what = f"photos {self.photo_chunks}: {what}" if self.photo_chunks else f"queries: {what}"
        self.events.append({"at": what, **self._read()})

    def stop(self) -> None:
        if self.active:
            self.mark("optimizer step")
            self.active = False

    def phase_peak(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        return gib(max(self.overall, torch.cuda.max_memory_allocated(self.device)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def input_grad_hooks_kept(backbone):
    """The previous bench's training setup, for comparison: gradient checkpointing with transformers' input-grad
    hooks left on (`Backbone.set_gradient_checkpointing` removes them), so the frozen vision tower's patch
    embedding requires grad and autograd records, keeps and back-propagates through the whole tower."""
    real = backbone.set_gradient_checkpointing

    def keeping_hooks(enabled: bool) -> int:
        n = real(enabled)
        if enabled:
            backbone.model.enable_input_require_grads()
        return n

    backbone.set_gradient_checkpointing = keeping_hooks
    try:
        yield
    finally:
        del backbone.set_gradient_checkpointing
        backbone.model.disable_input_require_grads()


def train_phase(model: MetaEmbed, images: list, queries: list, args, device: torch.device, steps: int,
                minutes: float | None) -> dict:
    """`steps` MMR training steps through `model.train.train` with TrainArgs.gradient_checkpointing; the second
    step's memory is traced by `StepMemory` (the first also allocates the optimizer state)."""
    folder = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    need = min(len(images), 2 * args.train_batch)
    for i in range(need):
        images[i].save(folder / f"img{i:04d}.png")
    rows = [{"query": queries[i % len(queries)], "positive": {"image": str(folder / f"img{i % need:04d}.png")},
             "negative": {"image": str(folder / f"img{(i + 1) % need:04d}.png")}} for i in range(need)]
    model.to(torch.float32)  # what `python -m model.train` trains: fp32 weights, bf16 autocast on a GPU
    hf = model.backbone.model
    prep = model.prepare if isinstance(model.prepare, PrepareTimer) else PrepareTimer(model)
    prep.seconds = 0.0
    clock = Clock(device)
    ends: list[float] = []
    checkpointed = [0, 0]  # checkpointed modules, input-grad hooks
    trace_after = 1 if steps > 1 else 0  # steps done before the traced one
    memory = StepMemory(model, device)

    def on_step(opt, *_):
        clock.sync()
        ends.append(time.perf_counter())
        if len(ends) == 1:  # what train() switched on, while it is on
            checkpointed[0] = sum(1 for m in hf.modules() if getattr(m, "gradient_checkpointing", False) is True)
            checkpointed[1] = len(getattr(hf, "_require_grads_hooks", None) or [])
        if len(ends) == trace_after + 1:
            memory.stop()
        elif len(ends) == trace_after:
            memory.start()

    # Under checkpointing each decoder layer's insides run twice per forward pass (again in the backward pass).
    calls = [0]
    counter = model.backbone.language_model.layers[0].mlp.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1))
    reset_peak(device)
    handle = register_optimizer_step_post_hook(on_step)
    try:
        if trace_after == 0:
            memory.start()
        clock.sync()
        start = time.perf_counter()
        train(model, rows, TrainArgs(out=str(folder / "run"), steps=steps, batch_size=args.train_batch, lr=1e-4,
                                     warmup=2, save_every=10**9, log_every=1, progress=False, max_minutes=minutes,
                                     gradient_checkpointing=True))
    finally:
        handle.remove()
        counter.remove()
        memory.remove()
        log = [json.loads(x) for x in (folder / "run" / "train_log.jsonl").read_text().splitlines()]
        shutil.rmtree(folder, ignore_errors=True)
    step_s = [b - a for a, b in zip([start] + ends[:-1], ends)]
    later = step_s[2:] or step_s[1:] or step_s
    losses = [r["loss"] for r in log]
    res = {"steps": len(step_s), "batch": f"{args.train_batch} x (query text, positive photo, negative photo)",
           "step_s": [round(x, 3) for x in step_s], "step_s_median": round(statistics.median(later), 3),
           "step_s_median_over": f"steps {len(step_s) - len(later) + 1}-{len(step_s)}",
           "prepare_s_per_step": round(prep.seconds / max(len(step_s), 1), 3),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
           "losses_finite": all(math.isfinite(x) for x in losses),
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "checkpointed_modules": checkpointed[0],
           "layer0_mlp_calls_per_step": round(calls[0] / max(len(step_s), 1), 1),
           "input_grad_hooks": checkpointed[1], "vision_tower_under_autograd": memory.vision_requires_grad}
    if device.type == "cuda":
        res.update(peak_gib=memory.phase_peak(), peak_reserved_gib=gib(torch.cuda.max_memory_reserved(device)))
    res["memory_step"] = trace_after + 1
    res["memory_trace"] = memory.events
    return res


def guarded(name: str, phase: str, res: dict, report, fn) -> None:
    """Run one phase into res[phase]; a failure is reported there and the run goes on."""
    try:
        res[phase] = fn()
        print(f"[{name}] {phase}: {json.dumps(res[phase])}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and go on with the next phase
        res[phase] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"[{name}] {phase} FAILED:\n{traceback.format_exc()}", flush=True)
    report(name, res)


def run_model(name: str, args, device: torch.device, dtype: torch.dtype, images: list, queries: list,
              report) -> dict:
    family, build = SPECS[name]
    res: dict = {"family": family}
    report(name, res)
    clock = Clock(device)
    reset_peak(device)
    torch.manual_seed(0)
    with clock():
        backbone = build(args.tiny, device, dtype)
        cfg = MetaEmbedConfig(backbone=family, backbone_id=f"random-init:{name}", lora_r=32, name=name)
        # What MetaEmbed.from_config does with a backbone it loaded itself.
        model = MetaEmbed(cfg, backbone)
        model._add_lora()
        model._place(device, dtype)
    res["build_s"] = round(clock.seconds, 2)
    res["params_m"] = round(sum(p.numel() for p in model.backbone.model.parameters()) / 1e6, 1)
    res["weights_gib"] = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    res["build"] = peak(device)
    grouped = getattr(backbone, "set_grouped_vision_attention", None)
    if grouped is not None:
        # On by default; False here means the installed transformers did not pass its checks (see the log).
        res["grouped_vision_attention"] = backbone.grouped_vision_attention
    images_proc = thread_images(model.backbone, args.threads)
    print(f"[{name}] built in {res['build_s']} s: {res['params_m']} M params", flush=True)
    report(name, res)
    if "images" in args.phases:
        if grouped is not None and res["grouped_vision_attention"]:
            # transformers' own per-window attention first, on the same photos, then the grouped one (the default).
            grouped(False)
            guarded(name, "images_stock_attention", res, report,
                    lambda: encode_phase(model, images, "candidate", args.image_batch, device, images_proc))
            grouped(True)
        guarded(name, "images", res, report,
                lambda: encode_phase(model, images, "candidate", args.image_batch, device, images_proc))
    if "queries" in args.phases:
        guarded(name, "queries", res, report,
                lambda: encode_phase(model, queries, "query", args.query_batch, device, images_proc))
    if "train" in args.phases:
        guarded(name, "train", res, report,
                lambda: train_phase(model, images, queries, args, device, args.steps, args.train_minutes))
    if "train" in args.phases and name in args.input_grad_models and args.input_grad_steps:
        def legacy() -> dict:
            with input_grad_hooks_kept(model.backbone):
                return train_phase(model, images, queries, args, device, args.input_grad_steps, None)

        guarded(name, "train_input_grad_hooks_kept", res, report, legacy)
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the JSON here too (rewritten after every phase)")
    p.add_argument("--tiny", action="store_true", help="tiny configs and few items: checks the path on a CPU")
    p.add_argument("--models", default=",".join(SPECS), help=f"comma-separated, from {list(SPECS)}")
    p.add_argument("--phases", default="images,queries,train", help="comma-separated: images, queries, train")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--images", type=int, default=None, help="default 256 (tiny: 6)")
    p.add_argument("--queries", type=int, default=None, help="default 256 (tiny: 6)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--image-batch", type=int, default=32, help="encode_candidates batch (its default)")
    p.add_argument("--query-batch", type=int, default=64, help="encode_queries batch (its default)")
    p.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1),
                   help="threads for the image processor (1: the stock serial call)")
    p.add_argument("--steps", type=int, default=None, help="training steps, default 6 (tiny: 3)")
    p.add_argument("--train-batch", type=int, default=None, help="rows per step, default 32 (tiny: 2)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="stop training after this long (the steps done so far are reported); default 1.25 "
                        "(tiny: none)")
    p.add_argument("--input-grad-steps", type=int, default=2,
                   help="then this many steps the previous bench's way, transformers' input-grad hooks kept "
                        "(the frozen vision tower under autograd), for the memory comparison; 0: skip")
    p.add_argument("--input-grad-models", default=",".join(SPECS),
                   help="comma-separated models that get the --input-grad-steps comparison")
    args = p.parse_args(argv)
    args.phases = set(args.phases.split(","))
    args.input_grad_models = set(args.input_grad_models.split(","))
    tiny = args.tiny
    args.images = args.images or (6 if tiny else 256)
    args.queries = args.queries or (6 if tiny else 256)
    args.steps = args.steps or (3 if tiny else 6)
    if args.train_minutes is None and not tiny:
        args.train_minutes = 1.25
    args.train_batch = args.train_batch or (2 if tiny else 32)
    if tiny:
        args.image_batch, args.query_batch = min(args.image_batch, 3), min(args.query_batch, 4)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16

    import peft
    import transformers

    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": tiny, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "dtype": "bf16 (encoding); fp32 weights + bf16 autocast (training)",
        "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()
                     if k not in ("out", "models", "device", "phases")},
        "models": {},
    }

    def report(name: str, res: dict) -> None:
        results["models"][name] = res
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2))

    t = time.perf_counter()
    images = [picture(args.image_size, i) for i in range(args.images)]
    queries = [query(i) for i in range(args.queries)]
    print(f"made {len(images)} photos, {len(queries)} queries in {time.perf_counter() - t:.1f} s on {device}",
          flush=True)
    for name in args.models.split(","):
        t = time.perf_counter()
        try:
            run_model(name, args, device, dtype, images, queries, report)
        except Exception as e:  # noqa: BLE001 - one model's failure must not hide the other's numbers
            results["models"].setdefault(name, {}).update(
                error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            print(f"[{name}] FAILED:\n{traceback.format_exc()}", flush=True)
        results["models"][name]["total_s"] = round(time.perf_counter() - t, 1)
        report(name, results["models"][name])
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
