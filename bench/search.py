"""Speed of the index: exact re-scoring, two-stage search at a million items, indexing throughput.

    python bench/search.py exact [--n 10000 ...]        exact MaxSim over a memory-mapped index, each preset,
                                                        with its time per unit of items x r_c x D
    python bench/search.py kinds [--n 10000]            searching everything, the photos (a tenth) or the
                                                        documents alone (`kinds=`, the app's Show choice)
    python bench/search.py large [--n 1000000]          synthetic collection: first stage + re-rank (cold and
                                                        warm page cache), recall@10 against exact search
    python bench/search.py indexing [--n 64]            ingest+encode+commit vs the encoder alone
    python bench/search.py devset [--depths 10 20 50]   the dev collection with the bundled model: recall@10
                                                        of the forced two-stage search against exact search
    python bench/search.py switch --cache DIR [--n 10000] real vectors of the bundled model (dev + held-out
                                                        collections, replicated with noise up to --n items):
                                                        recall@10 of the two-stage path against exact MaxSim
                                                        per preset and depth, and latency of both paths

`--dim` sets the synthetic vectors' dimension (default 128; the bundled model's is 384); `--emulated-bf16`
classes the CPU as one without native bf16 (where the fused kernel loads, its AVX2 fp32 variant then scores,
as on an AVX2-only CPU), for the planner's prices (app/store/planner.py). `--threads 1` pins torch to one
thread (steadier on a shared machine); `large --keep DIR` builds the
synthetic index (16 GiB at a million items) once into DIR and reuses it, with its exact ground truth;
without it the index goes to a temp folder that is deleted at the end.

Results go to docs/benchmarks.md ("Index and search"). Not a test: numbers depend on the machine and on
what else runs on it.

Synthetic vectors: an item has a topic vector z (one of 1,000 topic centres plus item noise); its first
vector is z plus a little noise (the (1,1) summary), the other vectors mix z with item-specific "aspects".
A query for a target item has a first vector near the target's z and further vectors near some of its
aspects. So the first vector correlates with the rest as MetaEmbed's nested training intends (mean cosine
first vs others is printed), and the first stage can only find what the summary carries: that is what
recall@10 against exact search measures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import index as index_module  # noqa: E402
from app.store.first_stage import probes  # noqa: E402
from app.store.index import Index  # noqa: E402
from app.store.segments import SEGMENT_DIR  # noqa: E402
from model.scoring import near_top  # noqa: E402

PRESETS = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
R_Q, R_C, D = 16, 64, 128
TOPICS = 1000


@dataclass
class Meta:
    source: str
    content_hash: str
    kind: str = "image"
    title: str = "synthetic.jpg"
    page: int | None = None
    passage: int | None = None
    char_span: tuple[int, int] | None = None
    size_bytes: int = 0
    text: str | None = None
    thumbnail: bytes = b""
    words: list = field(default_factory=list)


def topic_centres(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(TOPICS, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


def synthetic_items(n: int, seed: int, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vectors [n, R_c, D] bf16, z [n, D], aspects [n, R_c, D]) for n items."""
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, TOPICS, (n,), generator=g)
    z = F.normalize(centres[topic] + 0.7 * F.normalize(torch.randn(n, D, generator=g), dim=-1), dim=-1)
    aspects = F.normalize(torch.randn(n, R_C, D, generator=g), dim=-1)
    vecs = 0.6 * z[:, None, :] + 0.8 * aspects
    vecs[:, 0] = z + 0.3 * aspects[:, 0]
    return F.normalize(vecs, dim=-1).to(torch.bfloat16), z, aspects


def synthetic_query(z: torch.Tensor, aspects: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[R_q, D]: first vector near the target's summary, the others near some of its aspects."""
    noise = F.normalize(torch.randn(R_Q, D, generator=g), dim=-1)
    picks = torch.randint(1, R_C, (R_Q,), generator=g)
    q = 0.5 * z + 0.7 * aspects[picks] + 0.5 * noise
    q[0] = z + 0.6 * noise[0]
    return F.normalize(q, dim=-1)


def build(directory: Path, n: int, chunk: int, seed: int = 0, targets: int = 0) -> tuple[Index, list, float]:
    """Fill an index with n synthetic items in chunks; returns (index, [(z, aspects)] of targets, seconds)."""
    centres = topic_centres(seed)
    index = Index.create(directory, "synthetic", R_C, D)
    rng = np.random.default_rng(seed)
    target_ids = set(rng.choice(n, size=targets, replace=False).tolist()) if targets else set()
    kept = []
    start = time.perf_counter()
    for at in range(0, n, chunk):
        m = min(chunk, n - at)
        vecs, z, aspects = synthetic_items(m, seed + 1 + at, centres)
        for i in sorted(t - at for t in target_ids if at <= t < at + m):
            kept.append((z[i].clone(), aspects[i].clone()))
        metas = [Meta(f"/synthetic/{at + i}.jpg", hashlib.sha256(f"{seed}:{at + i}".encode()).hexdigest())
                 for i in range(m)]
        index.add(metas, vecs)
        del vecs, z, aspects
        print(f"  added {at + m:,} items ({time.perf_counter() - start:.0f} s)", flush=True)
    return index, kept, time.perf_counter() - start


def evict(index: Index) -> None:
    """Drop this index's segment files from the page cache (only these files: other work keeps its cache)."""
    for path in (index.directory / SEGMENT_DIR).glob("seg-*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, out


def bench_exact(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-exact-", dir=args.tmp))
    try:
        for n in args.n:
            index, kept, secs = build(root / f"n{n}", n, chunk=min(n, 8192), targets=4)
            print(f"exact over {n:,} memory-mapped items ({index.info()['segments']} segments), "
                  f"median of {args.repeat} queries:")
            g = torch.Generator().manual_seed(1)
            q = synthetic_query(*kept[0], g)
            index.search(q, (16, 64), k=10, exact=True)  # warm the page cache
            for budget in PRESETS:
                ms, _ = timed(lambda ix=index, q=q, b=budget: ix.search(q, b, k=10, exact=True), args.repeat)
                print(f"  budget {budget}: {ms:.1f} ms ({ms * 1e6 / (n * budget[1] * D):.3f} ns per unit)")
            ms, _ = timed(lambda ix=index, q=q: ix.search(q, (16, 64), k=10, exact=False), args.repeat)
            print(f"  two-stage at (16, 64) for comparison: {ms:.1f} ms")
            index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_kinds(args: argparse.Namespace) -> None:
    """Searching one kind against searching everything: n synthetic items, every tenth a photo."""
    n = args.n[0]
    root = Path(tempfile.mkdtemp(prefix="bench-kinds-", dir=args.tmp))
    try:
        index = Index.create(root / "idx", "synthetic", R_C, D)
        centres = topic_centres(0)
        for at in range(0, n, 2048):
            m = min(2048, n - at)
            vecs, _z, _aspects = synthetic_items(m, 1 + at, centres)
            index.add([Meta(f"/synthetic/{at + i}", hashlib.sha256(f"kinds:{at + i}".encode()).hexdigest(),
                            kind="image" if (at + i) % 10 == 0 else "pdf_page") for i in range(m)], vecs)
        _vecs, z, aspects = synthetic_items(1, n + 1, centres)
        q = synthetic_query(z[0], aspects[0], torch.Generator().manual_seed(1))
        shares = [("everything", None), (f"photos ({len(range(0, n, 10)):,})", {"image"}),
                  (f"documents ({n - len(range(0, n, 10)):,})", {"pdf_page"})]
        print(f"{n:,} items of {R_C} x {D}, k = 24, median of {args.repeat} rounds (ms, path):")
        for budget in PRESETS[2:]:
            for _name, kinds in shares:
                index.search(q, budget, k=24, kinds=kinds)  # builds the first stage once, warms the cache
            # The shares take turns, each round in another order: timed in blocks, whichever ran later in a
            # budget's block looked up to a quarter slower (session 31).
            times: list[list[float]] = [[] for _ in shares]
            for r in range(args.repeat):
                for s in ((r + j) % len(shares) for j in range(len(shares))):
                    t = time.perf_counter()
                    index.search(q, budget, k=24, kinds=shares[s][1])
                    times[s].append(time.perf_counter() - t)
            cells = [f"{name} {statistics.median(ts) * 1000:.1f} "
                     f"({'exact' if index.exact_for(budget[1], kinds=kinds) else 'two-stage'})"
                     for (name, kinds), ts in zip(shares, times, strict=True)]
            print(f"  {budget}: " + " | ".join(cells))
        index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_large(args: argparse.Namespace) -> None:
    n = args.n[0]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-large-", dir=args.tmp))
    try:
        if (root / "targets.pt").is_file():  # built by an earlier run with --keep
            index, kept = Index.open(root / "idx"), torch.load(root / "targets.pt")
            n = len(index)
        else:
            index, kept, secs = build(root / "idx", n, chunk=args.chunk, targets=args.queries)
            torch.save(kept, root / "targets.pt")
            print(f"built {n:,} items in {secs:.0f} s")
        info = index.info()
        print(f"{n:,} items: {info['segments']} segments, {info['vector_bytes'] / n:,.0f} B/item vectors, "
              f"{info['metadata_bytes'] / n:,.0f} B/item metadata")
        seg = index.view().segments[0]
        sample = torch.from_numpy(np.ascontiguousarray(seg.bits[:, :2000].view(np.int16))).view(torch.bfloat16).float()
        cos = (sample[0:1] * sample[1:]).sum(-1).mean()
        print(f"mean cosine first vector vs the others: {cos:.3f}")

        t = time.perf_counter()
        stage = index.first_stage()
        print(f"first stage built in {time.perf_counter() - t:.1f} s ({stage.size:,} vectors, "
              f"nlist {stage.index.nlist}, nprobe {probes(stage.index.nlist, stage.size)}); "
              f"saved {info['first_stage_bytes'] or index.info()['first_stage_bytes']:,} bytes")
        index.close()
        t = time.perf_counter()
        index = Index.open(root / "idx")
        index.first_stage()
        print(f"reopen + load first stage: {time.perf_counter() - t:.1f} s")

        g = torch.Generator().manual_seed(7)
        queries = [synthetic_query(z, a, g) for z, a in kept]
        for depth in args.depths:
            # Cold: this index's files dropped from the page cache first, so the re-rank reads the disk
            # (as after a reboot, or when the vectors do not fit in RAM). Warm: the same queries again.
            index.close()  # unmap first: pages mapped by a live process are not dropped
            evict(index)
            index = Index.open(root / "idx")
            index.first_stage()
            cold = [timed(lambda q=q, d=depth, ix=index: ix.search(q, (16, 64), k=10, exact=False, depth=d), 1)[0]
                    for q in queries]
            cpu_start = time.process_time()
            warm = [timed(lambda q=q, d=depth, ix=index: ix.search(q, (16, 64), k=10, exact=False, depth=d), 1)[0]
                    for q in queries]
            warm_cpu = (time.process_time() - cpu_start) / len(queries) * 1000
            fs = [timed(lambda q=q, d=depth, ix=index: ix.first_stage().search(q[0].numpy(), d), 1)[0] for q in queries]
            print(f"depth {depth}: two-stage (16,64) over {len(queries)} queries: cold median "
                  f"{statistics.median(cold):.1f} ms (p90 {np.percentile(cold, 90):.1f}), warm median "
                  f"{statistics.median(warm):.1f} ms (p90 {np.percentile(warm, 90):.1f}, CPU {warm_cpu:.1f} ms "
                  f"per query); first stage alone "
                  f"{statistics.median(fs):.1f} ms")

        # Exact ground truth for all queries in one pass over the data (every query scored per segment).
        truth_file = root / "truth.pt"
        t = time.perf_counter()
        qb = torch.stack(queries)
        view = index.view()
        best: list[list[tuple[float, int]]] = [[] for _ in queries]
        for segment in [] if truth_file.is_file() else view.segments:
            store = segment.store()
            scores = store.maxsim(qb, (16, 64))
            for qi in range(len(queries)):  # ranked in fp32 like Index.search's final step
                pos = near_top(scores[qi], 10, 16)
                precise = store.maxsim(qb[qi:qi + 1], (16, 64), indices=pos, precise=True)[0]
                best[qi] += [(float(s), int(segment.slot_rowids[int(i)])) for s, i in zip(precise, pos)]
        truth = [{r for _, r in sorted(b, reverse=True)[:10]} for b in best]
        if truth_file.is_file():
            truth = torch.load(truth_file)
        elif args.keep:
            torch.save(truth, truth_file)
        print(f"exact ground truth for {len(queries)} queries: {time.perf_counter() - t:.0f} s "
              f"({(time.perf_counter() - t) / len(queries) * 1000:,.0f} ms per query)")
        for depth in args.depths:
            recalls = [len({r for r, _ in index.search(q, (16, 64), k=10, exact=False, depth=depth)} & tr) / 10
                       for q, tr in zip(queries, truth)]
            print(f"depth {depth}: recall@10 vs exact {np.mean(recalls):.3f}")
        index.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def bench_indexing(args: argparse.Namespace) -> None:
    from app.indexing import encoder_input, index_paths
    from app.ingest import ingest
    from model import MetaEmbed, MetaEmbedConfig

    n = args.n[0]
    root = Path(tempfile.mkdtemp(prefix="bench-indexing-", dir=args.tmp))
    try:
        words = ("harbour lantern orchard granite meadow violin glacier pepper saddle copper tunnel falcon "
                 "velvet canyon walnut ember quartz willow thunder marble lagoon cedar prism nectar").split()
        folder = root / "notes"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            text = " ".join(rng.choice(words, size=100))
            (folder / f"note-{i:04d}.txt").write_text(f"Note {i}. {text}.\n")
        model = MetaEmbed.from_config(MetaEmbedConfig(front_end="visual-tokenizer"), device="cpu")
        model.encode_candidates(["warm up"])
        items = ingest([folder], ocr=None).items
        inputs = [encoder_input(it) for it in items]
        t = time.perf_counter()
        model.encode_candidates(inputs, batch_size=8)
        enc = time.perf_counter() - t
        index = Index.create(root / "idx", "bench", R_C, D)
        t = time.perf_counter()
        run = index_paths(model, index, [folder], ocr=None, batch_size=8)
        full = time.perf_counter() - t
        info = index.info()
        print(f"{n} text passages (~100 words): encoder alone {n / enc:.1f} items/s, "
              f"ingest+encode+commit {len(run.indexed) / full:.1f} items/s ({full / enc:.2f}x the encoder's time); "
              f"disk per item: {info['vector_bytes'] / n:,.0f} B vectors + {info['metadata_bytes'] / n:,.0f} B metadata")
        index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_devset(args: argparse.Namespace) -> None:
    import json

    from app.indexing import index_paths
    from model import MetaEmbed
    from model.checkpoint import checkpoint_id

    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "devset"
    queries = [q["query"] for q in json.loads((data / "queries.json").read_text())]
    model = MetaEmbed.from_pretrained(device="cpu")
    root = Path(tempfile.mkdtemp(prefix="bench-devset-", dir=args.tmp))
    try:
        index = Index.create(root / "idx", checkpoint_id(model), model.config.num_candidate_tokens,
                             model.dim)
        index_paths(model, index, [data / "photos", data / "documents"])
        qv = model.encode_queries(queries)
        budget = model.config.presets[-1]
        exact = [[r for r, _ in index.search(q, budget, 10, exact=True)] for q in qv]
        print(f"dev collection: {len(index)} items, {len(queries)} queries, budget {budget}")
        print("| first-stage depth | recall@10 vs exact |")
        print("|---|---|")
        for depth in args.depths:
            hits = [len(set(e) & {r for r, _ in index.search(q, budget, 10, exact=False, depth=depth)})
                    / max(1, len(e)) for q, e in zip(qv, exact, strict=True)]
            print(f"| {depth} | {statistics.mean(hits):.3f} |")
        index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def real_collection(model, cache: Path | None) -> tuple[torch.Tensor, list]:
    """([N, R_c, D] bf16 candidate vectors, eval queries) of the dev and held-out collections.

    The vectors are read from `cache` when bench/weak_match.py (or this bench) left them there for this
    checkpoint, else indexed from tests/data (minutes) and, with `cache`, saved for the next run."""
    from app.evaluation import QUERIES_NAME, load_queries
    from bench.weak_match import indexed_collection

    data = Path(__file__).resolve().parent.parent / "tests" / "data"
    vectors, queries = [], []
    for folder in (data / "devset", data / "heldout"):
        vectors.append(indexed_collection(model, folder, cache)["vectors"])
        queries += load_queries(folder / QUERIES_NAME)
    return torch.cat(vectors), queries


def replicate(vectors: torch.Tensor, n: int, noise: float, seed: int = 0) -> torch.Tensor:
    """`vectors` followed by noisy copies of them (cycled) up to n items: each copy vector is the original
    plus a random vector of norm `noise`, renormalised (cosine to the original ~1 / sqrt(1 + noise^2))."""
    extra = n - len(vectors)
    if extra <= 0:
        return vectors[:n]
    g = torch.Generator().manual_seed(seed)
    parts = [vectors]
    for at in range(0, extra, 1024):
        src = vectors[torch.arange(at, min(extra, at + 1024)) % len(vectors)].float()
        parts.append(F.normalize(src + noise * F.normalize(torch.randn(src.shape, generator=g), dim=-1),
                                 dim=-1).to(torch.bfloat16))
    return torch.cat(parts)


def fp32_truth(vectors: torch.Tensor, queries: torch.Tensor, presets: list, k: int = 10) -> dict:
    """Per preset, each query's exact top-k positions by fp32 MaxSim over all items (one pass: every
    preset is a prefix of the full query x candidate similarities)."""
    r_q, r_c = max(b[0] for b in presets), max(b[1] for b in presets)
    rows = queries[:, :r_q].reshape(-1, queries.shape[2]).float()
    scores = {b: [] for b in presets}
    for s in range(0, len(vectors), 128):
        c = vectors[s:s + 128, :r_c].float()
        sim = (c.reshape(-1, c.shape[2]) @ rows.T).view(len(c), r_c, len(queries), r_q)
        for bq, bc in presets:
            scores[(bq, bc)].append(sim[:, :bc, :, :bq].amax(dim=1).sum(dim=-1).T)
    return {b: torch.cat(v, dim=1).topk(k, dim=1).indices for b, v in scores.items()}


def bench_switch(args: argparse.Namespace) -> None:
    from model import MetaEmbed
    from model.checkpoint import checkpoint_id

    model = MetaEmbed.from_pretrained(device="cpu")
    presets = [tuple(b) for b in model.config.presets]
    base, queries = real_collection(model, Path(args.cache) if args.cache else None)
    n = args.n[0] or len(base)
    vectors = replicate(base, n, args.noise)
    rng = np.random.default_rng(0)
    picked = sorted(rng.choice(len(queries), size=min(args.queries, len(queries)), replace=False).tolist())
    qv = model.encode_queries([queries[i].text for i in picked])
    cos = (vectors[len(base):].float() * vectors[torch.arange(n - len(base)) % len(base)].float()).sum(-1)
    print(f"{len(base):,} real items (dev + held-out, {tuple(base.shape[1:])} bf16) -> {n:,} items"
          + (f" with noisy copies (noise {args.noise}: mean cosine copy vs original {cos.mean():.3f})"
             if n > len(base) else "")
          + f"; {len(picked)} of the {len(queries)} eval queries, encoded by {checkpoint_id(model)}")
    root = Path(tempfile.mkdtemp(prefix="bench-switch-", dir=args.tmp))
    try:
        index = Index.create(root / "idx", checkpoint_id(model), vectors.shape[1], vectors.shape[2])
        for at in range(0, n, 4096):
            metas = [Meta(f"/real/{i}.jpg", hashlib.sha256(f"switch:{i}".encode()).hexdigest())
                     for i in range(at, min(n, at + 4096))]
            index.add(metas, vectors[at:at + 4096])
        rowids = torch.from_numpy(index.view().rowids)
        t = time.perf_counter()
        truth = {b: rowids[top] for b, top in fp32_truth(vectors, qv, presets).items()}
        print(f"fp32 exact top-10 of {len(picked)} queries x {len(presets)} presets: "
              f"{time.perf_counter() - t:.0f} s; first stage built in {timed(index.first_stage, 1)[0]:.0f} ms")
        switch_recall(index, qv, truth, args.depths)
        switch_latency(index, qv[:args.latency_queries], presets, args.repeat)
        index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def switch_recall(index: Index, qv: torch.Tensor, truth: dict, depths: list[int]) -> None:
    print(f"recall@10 of the two-stage path against fp32 exact MaxSim, load average {loadavg()}:")
    print("| depth | " + " | ".join(str(b) for b in truth) + " |")
    print("| --- |" + " --- |" * len(truth))
    for depth in depths:
        cells = []
        for budget, top in truth.items():
            hits = [len({r for r, _ in index.search(q, budget, 10, exact=False, depth=depth)}
                        & set(t.tolist())) / 10 for q, t in zip(qv, top)]
            cells.append(f"{statistics.mean(hits):.3f} (min {min(hits):.1f})")
        print(f"| {depth:,} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average after: {loadavg()}")


def switch_latency(index: Index, qv: torch.Tensor, presets: list, repeat: int) -> None:
    """Exact and two-stage (depth FIRST_STAGE_DEPTH) alternated query by query, so both see the same load."""
    print(f"latency over {index.view().count:,} items, median of {repeat} rounds x {len(qv)} queries, torch "
          f"threads {torch.get_num_threads()}, load average before {loadavg()}:")
    print("| budget | exact | two-stage | exact / two-stage | ns per item-vector, exact | switch picks |")
    print("| --- | --- | --- | --- | --- | --- |")
    count = index.view().count
    for budget in presets:
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeat):
            for q in qv:
                for exact in (True, False):
                    times[exact].append(timed(lambda q=q, b=budget, e=exact: index.search(q, b, 10, exact=e), 1)[0])
        ex, two = statistics.median(times[True]), statistics.median(times[False])
        picks = "exact" if index_module.uses_exact(count, budget[1], index.dim) else "two-stage"
        print(f"| {budget} | {ex:.1f} ms | {two:.1f} ms | {ex / two:.1f}x | {ex * 1e6 / (count * budget[1]):,.0f} "
              f"| {picks} |", flush=True)
    print(f"load average after: {loadavg()}")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    global D
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["exact", "large", "indexing", "devset", "switch", "kinds"])
    parser.add_argument("--dim", type=int, default=D, help="exact, large, kinds: the synthetic vectors' dimension")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="class the CPU as one without native bf16 (the kernel's AVX2 fp32 variant scores)")
    parser.add_argument("--n", type=int, nargs="+", default=None)
    parser.add_argument("--chunk", type=int, default=65536, help="items per add (large)")
    parser.add_argument("--queries", type=int, default=None, help="large: 30, switch: 300")
    parser.add_argument("--depths", type=int, nargs="+", default=[index_module.FIRST_STAGE_DEPTH])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--keep", default=None, help="large: build the index here once and reuse it")
    parser.add_argument("--tmp", default=None, help="folder for the temporary index (default: system temp)")
    parser.add_argument("--cache", default=None, help="switch: the collections' vectors (bench/weak_match.py --cache)")
    parser.add_argument("--noise", type=float, default=0.2, help="switch: norm of the noise added to copies")
    parser.add_argument("--latency-queries", type=int, default=4, help="switch: queries timed per preset")
    args = parser.parse_args()
    D = args.dim
    if args.emulated_bf16:
        import model.scoring
        import model.scoring_threads
        from app.store import planner

        for module in (model.scoring, model.scoring_threads, planner):
            module.cpu_has_native_bf16 = lambda: False
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average before: {os.getloadavg()[0]:.1f} "
          f"(other processes share the {os.cpu_count()} cores)")
    if args.n is None:
        args.n = {"exact": [10_000], "large": [1_000_000], "indexing": [64], "devset": [0],
                  "switch": [10_000], "kinds": [10_000]}[args.what]
    if args.queries is None:
        args.queries = 300 if args.what == "switch" else 30
    if args.what == "switch" and args.depths == [index_module.FIRST_STAGE_DEPTH]:
        args.depths = [500, 1_000, 2_000]
    {"exact": bench_exact, "large": bench_large, "indexing": bench_indexing, "devset": bench_devset,
     "switch": bench_switch, "kinds": bench_kinds}[args.what](args)


if __name__ == "__main__":
    main()
