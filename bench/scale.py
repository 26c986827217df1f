"""The stores at scale: the embedded index, qdrant-edge and qdrant-client's local mode on the same vectors.

    python bench/scale.py [--vectors FILE.pt] [--queries-json FILE] [--n-embedded 100000] [--n-edge 100000]
                          [--n-local 10000] [--noise 0.03] [--stores embedded qdrant-edge qdrant-local]

Real-model vectors, encoded once: by default the sample collection (assets/examples) through the app's
ingest and the bundled MetaEmbed-Mini, queried by the app's example queries and some generic ones; or a
cache of candidate vectors (`--vectors FILE.pt`, a dict with "vectors" [B, R_c, D] and optionally
"queries" [Q, R_q, D]; without queries they are encoded from the texts of `--queries-json`, a queries.json
of the devset format, or the default texts). The collection is replicated up to the largest N: item i is a
copy of base item i mod B, with Gaussian noise of std `--noise` per coordinate on every vector
(re-normalised) for i >= B, written once to a bf16 memory-mapped file in chunks; every store ingests the
first N items of it (each store has its own N: qdrant-client's local mode keeps every field in RAM as
numpy and ingests through Python lists, so it gets a smaller N by default).

Per store, in a process of its own (so its memory is freed after it and its peak is its own): ingest
time (the add calls), the time to get ready to search (the embedded index's faiss first stage, qdrant-edge's
flush + optimize: HNSW on `first`), bytes on disk per item, private memory (RssAnon: pages mapped from the
store's files are page cache, not counted) after ingest and at peak, and per preset recall@10 against exact
MaxSim over all its N items (torch, fp32 on the bf16-rounded vectors) with p50/p95 latency per query, for
its default search path (and, where that is exact, the two-stage path forced). The load average is printed
beside every timing: the machine is shared.

qdrant-edge (pip `qdrant-edge-py`, Qdrant's Rust engine in-process, beta) is bench-only and optional
(bench/scale_stores.py): it mirrors QdrantStore's data model (`first` dense + HNSW, one MAX_SIM multi-vector
field per preset r_c with originals on disk and int8 in RAM, prefetch 1000 on `first` then MaxSim, no
search parameters, as QdrantStore sends a server), measured also with the MaxSim stage re-scored by the
originals; it is skipped with a note when it is not installed. Its write-ahead log is disabled (edge 0.9
keeps the whole log after a flush, which would double its disk use); it is flushed before it is measured.

Output: markdown tables for docs/benchmarks.md ("Stores at scale"). Not a test: numbers depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale_stores import BenchStore, K, edge_missing, open_bench_store  # noqa: E402
from model.device import cpu_name as device_cpu_name  # noqa: E402

PRESETS = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
STORES = ["embedded", "qdrant-edge", "qdrant-local"]
GENERIC_QUERIES = ["a photo of a dog", "people on a beach", "a city street at night", "snow on the mountains",
                   "a bowl of soup", "an old building", "a bicycle", "a bird on a branch", "a page of text",
                   "a table of numbers", "how to configure the network", "a chart", "the sea", "a red car",
                   "children playing", "a forest path", "a bridge over a river", "a cup of coffee",
                   "installation instructions", "a sunset over water", "flowers in a garden", "a train station",
                   "a cat sleeping", "a map"]


def load() -> str:
    """The load average over 1, 5 and 15 minutes (the machine is shared: printed beside every timing)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def load1() -> str:
    return f"{os.getloadavg()[0]:.1f}"


# ---- the vectors --------------------------------------------------------------------------------------


@dataclass
class Base:
    vectors: torch.Tensor  # bf16 [B, R_c, D]
    queries: torch.Tensor  # float32 [Q, R_q, D]
    label: str


def query_texts(path: str | None, count: int) -> list[str]:
    if path is None:
        from app.ui.search_tab import EXAMPLE_QUERIES

        texts = list(dict.fromkeys(EXAMPLE_QUERIES + GENERIC_QUERIES))
    else:
        from app.evaluation import load_queries

        texts = list(dict.fromkeys(q.text for q in load_queries(Path(path))))
    step = max(1, len(texts) // count)
    return texts[::step][:count]


def load_base(args: argparse.Namespace) -> Base:
    """The real-model candidate vectors (encoded here, or a cache) and the query vectors."""
    model = None
    if args.vectors:
        data = torch.load(args.vectors, weights_only=False)
        vectors, queries = data["vectors"].to(torch.bfloat16), data.get("queries")
        label = f"{Path(args.vectors).name} ({len(vectors):,} items)"
    else:
        from app.indexing import encoder_input
        from app.ingest import ingest

        model = load_model()
        folder = ROOT / "assets" / "examples"
        items = ingest([folder], ocr=None).items
        t = time.perf_counter()
        vectors = model.encode_candidates([encoder_input(it) for it in items], batch_size=8).to(torch.bfloat16)
        print(f"encoded {len(items)} items of {folder.relative_to(ROOT)} in {time.perf_counter() - t:.0f} s "
              f"(load {load()})", flush=True)
        queries, label = None, f"assets/examples ({len(items)} items: photos, PDF pages, text passages)"
    if queries is None:
        model = model or load_model()
        texts = query_texts(args.queries_json, args.queries)
        queries = model.encode_queries(texts)
        label += f"; {len(texts)} queries from {args.queries_json or 'the app examples + generic texts'}"
    else:
        label += f"; {len(queries)} queries from the file"
    return Base(vectors, queries.float()[: args.queries], label)


def load_model() -> Any:
    from model import MetaEmbed
    from model.checkpoint import checkpoint_id, resolve

    model = MetaEmbed.from_pretrained(resolve(None), device="cpu")
    print(f"model: {checkpoint_id(model)} (the bundled MetaEmbed-Mini)", flush=True)
    return model


def replicate(base: torch.Tensor, n: int, noise: float, path: Path, chunk: int, seed: int = 0) -> np.ndarray:
    """[n, R_c, D] bf16 bits (uint16) in a memory-mapped .npy: item i is base item i mod B, noised for i >= B."""
    b, r_c, dim = base.shape
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, r_c, dim))
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk))
        v = base[idx % b].float()
        noisy = idx >= b
        v[noisy] = F.normalize(v[noisy] + noise * torch.randn(v[noisy].shape, generator=g), dim=-1)
        out[start : start + len(idx)] = v.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    out.flush()
    return out


def bf16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(bits).view(np.int16)).view(torch.bfloat16)  # a writable copy


def exact_scores(data: np.ndarray, n: int, queries: torch.Tensor, chunk: int = 1000) -> dict[tuple, torch.Tensor]:
    """Exact MaxSim of every query against the first n items at every preset: {preset: [Q, n]} (fp32)."""
    q, r_q, dim = queries.shape
    flat = queries.reshape(-1, dim)
    out = {p: torch.empty(q, n) for p in PRESETS}
    for start in range(0, n, chunk):
        c = bf16(data[start : min(n, start + chunk)]).float()
        sim = (c.reshape(-1, dim) @ flat.T).view(len(c), c.shape[1], q, r_q)
        for pq, pc in PRESETS:
            out[(pq, pc)][:, start : start + len(c)] = sim[:, :pc, :, :pq].amax(1).sum(-1).T
    return out


def truth(scores: dict[tuple, torch.Tensor], n: int) -> dict[tuple, list[set[int]]]:
    return {p: [set(row.tolist()) for row in s[:, :n].topk(min(K, n), dim=1).indices] for p, s in scores.items()}


def copy_stats(base: torch.Tensor, noise: float) -> str:
    v = base[:500].float()
    copy = F.normalize(v + noise * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    first = base[:, 0].float()
    sims = first @ first.T
    sims.fill_diagonal_(-2)
    return (f"a copy's vectors have cosine {(copy * v).sum(-1).mean():.2f} with the original's; an item's first "
            f"vector has median cosine {sims.max(1).values.median():.2f} with its nearest other base item's")


# ---- one store's run ----------------------------------------------------------------------------------


@dataclass
class Job:
    kind: str
    directory: Path
    data: Path  # the replicated vectors (.npy, bf16 bits)
    n: int
    queries: torch.Tensor
    truth: dict[tuple, list[set[int]]]
    chunk: int
    log: bool = True
    result: dict = field(default_factory=dict)


def anon_mib() -> float:
    """This process's private resident memory (RssAnon): file pages mapped from disk are not counted, since
    the kernel can drop them (ru_maxrss counts them, so memory-mapped stores would look as big as their files)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory(threading.Thread):
    """Samples anon_mib() every 50 ms until stopped; `peak` is the largest sample."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._stop_event = anon_mib(), threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak = max(self.peak, anon_mib())

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, anon_mib())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ingest(job: Job, store: BenchStore, data: np.ndarray) -> float:
    spent, step, shown = 0.0, job.chunk if job.kind != "qdrant-edge" else min(job.chunk, 250), 0
    for start in range(0, job.n, step):
        vectors = bf16(data[start : min(job.n, start + step)])
        t = time.perf_counter()
        store.add(start, vectors)
        spent += time.perf_counter() - t
        done = start + len(vectors)
        if job.log and (done - shown >= job.n / 10 or done == job.n):
            shown = done
            print(f"  {job.kind}: {done:,}/{job.n:,} items in {spent:.0f} s (load {load()})", flush=True)
    return spent


def time_queries(job: Job, store: BenchStore, budget: tuple[int, int], opts: dict) -> tuple[list, list]:
    for q in job.queries[:2]:  # warm up
        store.search(q, budget, opts)
    times, found = [], []
    for q in job.queries:
        t = time.perf_counter()
        ids = store.search(q, budget, opts)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids)
    return times, [store.positions(ids) for ids in found]


def run_store(job: Job) -> dict:
    """Ingest, get ready, measure disk and every preset's searches: one store's results."""
    data = np.load(job.data, mmap_mode="r")
    store = open_bench_store(job.kind, job.directory, data.shape[1], data.shape[2])
    res: dict[str, Any] = {"store": job.kind, "n": job.n, "rows": []}
    memory = PeakMemory()
    try:
        res["ingest_s"], res["ingest_load"] = ingest(job, store, data), load()
        t = time.perf_counter()
        store.ready()
        res["ready_s"], res["ready_load"] = time.perf_counter() - t, load()
        res["rss_mib"], res["disk_bytes"] = anon_mib(), dir_bytes(job.directory)
        store.prepare(job.n)
        for budget in PRESETS:
            for path, opts in store.variants(budget):
                times, found = time_queries(job, store, budget, opts)
                recall = np.mean([len(set(f) & t) / len(t) for f, t in zip(found, job.truth[budget])])
                res["rows"].append({"budget": budget, "path": path, "recall": float(recall),
                                    "p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
                                    "load": load1()})
                if job.log:
                    r = res["rows"][-1]
                    print(f"  {job.kind} {budget} {path}: recall@10 {r['recall']:.3f}, p50 {r['p50']:.1f} ms, "
                          f"p95 {r['p95']:.1f} ms (load {load()})", flush=True)
    finally:
        store.close()
        res["peak_rss_mib"] = memory.stop()
    return res


def _child(job: Job, conn: Any) -> None:
    try:
        conn.send(run_store(job))
    except BaseException as e:  # reported in the table, the other stores still run
        conn.send({"store": job.kind, "n": job.n, "error": f"{type(e).__name__}: {e}"})
        raise


def run_isolated(job: Job) -> dict:
    """run_store in a spawned process: its memory is freed after it and its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"store": job.kind, "n": job.n, "error": "its process died"}
    proc.join()
    if proc.exitcode and "error" not in result:
        result["error"] = f"exit code {proc.exitcode}"
    elif proc.exitcode and proc.exitcode < 0:
        result["error"] += f" (signal {-proc.exitcode}: out of memory?)"
    return result


# ---- output -------------------------------------------------------------------------------------------


def cpu_name() -> str:
    return f"{device_cpu_name()}, {os.cpu_count()} cores"


def header(base: Base, ns: dict[str, int], args: argparse.Namespace, notes: list[str], started: str) -> list[str]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"Run {started}; CPU: {cpu_name()}, {mem:.0f} GiB RAM; torch threads {torch.get_num_threads()}; "
             f"load average at the end {load()} (1/5/15 min).",
             f"Vectors: {base.label}; {tuple(base.vectors.shape[1:])} per item, replicated to "
             f"{max(ns.values()):,} with Gaussian noise std {args.noise} per coordinate "
             f"({copy_stats(base.vectors, args.noise)}).",
             "N per store: " + ", ".join(f"{k} {v:,}" for k, v in ns.items()) + "."]
    return lines + notes


def ingest_table(results: list[dict]) -> list[str]:
    out = ["| store | N | ingest | items/s | ready to search | disk per item | memory after ingest | peak memory |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r and "ingest_s" not in r:
            out.append(f"| {r['store']} | {r['n']:,} | failed: {r['error']} | | | | | |")
            continue
        out.append(f"| {r['store']} | {r['n']:,} | {r['ingest_s']:.1f} s (load {r['ingest_load']}) | "
                   f"{r['n'] / r['ingest_s']:,.0f} | {r['ready_s']:.1f} s (load {r['ready_load']}) | "
                   f"{r['disk_bytes'] / r['n'] / 1024:,.1f} KiB | {r['rss_mib'] / 1024:.2f} GiB | "
                   f"{r['peak_rss_mib'] / 1024:.2f} GiB |")
    return out


def search_table(results: list[dict]) -> list[str]:
    out = ["| store | N | preset | path | recall@10 vs exact | p50 | p95 | load |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r.get("rows", []):
            out.append(f"| {r['store']} | {r['n']:,} | {row['budget']} | {row['path']} | {row['recall']:.3f} | "
                       f"{row['p50']:.1f} ms | {row['p95']:.1f} ms | {row['load']} |")
    return out


# ---- main ---------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", help="a .pt with 'vectors' [B, R_c, D] (and optionally 'queries' [Q, R_q, D])")
    p.add_argument("--queries-json", help="query texts: a queries.json of the devset format")
    p.add_argument("--queries", type=int, default=40, help="at most this many queries")
    p.add_argument("--stores", nargs="+", choices=STORES, default=STORES)
    p.add_argument("--n-embedded", type=int, default=100_000)
    p.add_argument("--n-edge", type=int, default=100_000)
    p.add_argument("--n-local", type=int, default=10_000,
                   help="qdrant-client local mode: every field in RAM as numpy, ingested through Python lists")
    p.add_argument("--noise", type=float, default=0.03, help="std per coordinate of a copy's noise")
    p.add_argument("--chunk", type=int, default=1000, help="items per add")
    p.add_argument("--tmp", help="folder for the replicated vectors and the stores (default: system temp)")
    p.add_argument("--in-process", action="store_true", help="run the stores in this process (no isolation)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> list[dict]:
    args = parse(argv)
    notes: list[str] = []
    stores = list(dict.fromkeys(args.stores))
    if "qdrant-edge" in stores and (why := edge_missing()):
        print(why)
        notes.append(why + ".")
        stores.remove("qdrant-edge")
    ns = {s: {"embedded": args.n_embedded, "qdrant-edge": args.n_edge, "qdrant-local": args.n_local}[s]
          for s in stores}
    if "qdrant-local" in ns:
        notes.append(f"qdrant-local is run at {ns['qdrant-local']:,} items: local mode keeps every field "
                     "(1+4+8+16+64 = 93 vectors per item) in RAM as float32 numpy and ingests through Python "
                     "lists, so it would not fit or finish at the others' N here.")
    started = f"{time.strftime('%Y-%m-%d %H:%M')} (load average {load()})"
    print(f"started {started}; torch threads {torch.get_num_threads()}", flush=True)
    base = load_base(args)
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    try:
        n_max = max(ns.values())
        t = time.perf_counter()
        data = replicate(base.vectors, n_max, args.noise, root / "vectors.npy", args.chunk)
        print(f"replicated {len(base.vectors):,} -> {n_max:,} items in {time.perf_counter() - t:.0f} s "
              f"(load {load()})", flush=True)
        t = time.perf_counter()
        scores = exact_scores(data, n_max, base.queries)
        notes.append(f"Exact ground truth (torch, fp32) for {len(base.queries)} queries x 5 presets over "
                     f"{n_max:,} items: {time.perf_counter() - t:.0f} s (load {load()}).")
        del data
        results = []
        for kind in stores:
            job = Job(kind, root / kind, root / "vectors.npy", ns[kind], base.queries, truth(scores, ns[kind]),
                      args.chunk)
            print(f"{kind}: {job.n:,} items (load {load()})", flush=True)
            results.append(run_store(job) if args.in_process else run_isolated(job))
            shutil.rmtree(job.directory, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = header(base, ns, args, notes, started) + [""] + ingest_table(results) + [""] + search_table(results)
    emit("\n".join(report))
    return results


if __name__ == "__main__":
    main()
