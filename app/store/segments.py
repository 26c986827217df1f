"""Vector segments: the files that hold an index's candidate vectors, and how queries are scored against them.

A segment (`segments/seg-N.npy`) holds the R_c candidate vectors of a batch of items, vector-major
[R_c, n, D], as uint16 bf16 bit patterns (NumPy has no bf16; torch views the same memory as bf16).
Vector-major keeps every budget's prefix contiguous: scoring at r_c reads `seg[:r_c]` only, and the first
vectors (`seg[0]`) that feed the first stage are one contiguous block. A segment is written once, atomically
(`model.files.atomic_path`), and never changed: merges and rewrites write a new file, so a reader's read-only
memory map of the old one stays valid until it lets go.

Which item sits in which slot of which segment is recorded by the index's SQLite (app.store.index); a
`View` pairs one consistent reading of that with the opened files and scores queries over it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.files import atomic_path
from model.scoring import CandidateStore, scores_in_place

SEGMENT_DIR = "segments"
_SEGMENT_FILE = re.compile(r"^seg-(\d+)\.npy$")
# Rows copied per step when a rewrite gathers live rows from old segments: bounds its memory.
_REWRITE_ROWS = 4096


def segment_file(seg_id: int) -> str:
    """File name (inside SEGMENT_DIR) of the segment with this id."""
    return f"seg-{seg_id}.npy"


# ------------------------------------------------------------------------------------------------- bf16


def to_bf16_bits(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float vectors -> their bf16 bit patterns as uint16 (round to nearest even, as torch does)."""
    t = torch.as_tensor(vectors)
    return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def bf16_view(bits: np.ndarray) -> torch.Tensor:
    """uint16 bf16 bit patterns (possibly memory-mapped) -> a bf16 tensor sharing their memory."""
    with warnings.catch_warnings():
        # Read-only memmaps are fine: nothing here writes through these tensors.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)


# ---------------------------------------------------------------------------------------------- files


def write_segment(path: Path, num_vectors: int, dim: int, blocks: Iterable[np.ndarray], rows: int) -> None:
    """Write a vector-major segment atomically from item-major blocks [b, R_c, D] (uint16)."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(num_vectors, rows, dim))
        at = 0
        for block in blocks:
            n = block.shape[0]
            out[:, at:at + n, :] = block.transpose(1, 0, 2)
            at += n
        if at != rows:
            raise AssertionError(f"segment writer got {at} rows, expected {rows}")
        out.flush()
        del out


def write_live(path: Path, num_vectors: int, dim: int, parts: Sequence[tuple[Path, np.ndarray]]) -> None:
    """Write one segment holding, in order, the given slots of existing segment files (a merge, or a
    rewrite that leaves removed items out)."""
    sources = [(open_segment(source), slots) for source, slots in parts]

    def blocks() -> Iterator[np.ndarray]:
        for bits, slots in sources:
            for start in range(0, len(slots), _REWRITE_ROWS):
                yield bits[:, slots[start:start + _REWRITE_ROWS], :].transpose(1, 0, 2)

    write_segment(path, num_vectors, dim, blocks(), sum(len(slots) for _source, slots in parts))


def open_segment(path: Path) -> np.ndarray:
    """A segment file memory-mapped read-only: [R_c, rows, D] uint16."""
    return np.load(path, mmap_mode="r")


def stored_bytes(folder: Path, files: Iterable[str]) -> int:
    """Disk size of these segment files; one that a concurrent writer just replaced counts 0."""
    total = 0
    for file in files:
        try:
            total += (folder / file).stat().st_size
        except FileNotFoundError:
            pass
    return total


def sweep_uncommitted(folder: Path, committed: set[str]) -> None:
    """Delete what a killed writer left in the segment folder: temp files and segments never committed."""
    for path in folder.iterdir():
        if path.name not in committed and (path.name.endswith(".tmp") or _SEGMENT_FILE.match(path.name)):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ views and scoring


@dataclass
class Segment:
    """One opened segment file and the live item (rowid) in each of its slots."""

    id: int
    bits: np.ndarray  # memory-mapped [R_c, rows, D] uint16
    # [rows] int64: rowid of the live item in each slot, -1 where it was removed
    slot_rowids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.slot_rowids = np.full(self.bits.shape[1], -1, dtype=np.int64)

    def store(self) -> CandidateStore:
        return CandidateStore.from_vector_major(self.bits)

    def vectors(self, slot: int) -> torch.Tensor:
        """The R_c candidate vectors in `slot`, bf16 [R_c, D] (a copy)."""
        return bf16_view(np.ascontiguousarray(self.bits[:, slot, :]))


@dataclass
class View:
    """What searching needs, loaded from SQLite + the segment files: one consistent snapshot."""

    segments: list[Segment]
    rowids: np.ndarray  # sorted rowids of live items
    seg_index: np.ndarray  # [len(rowids)] position of the item's segment in `segments`
    slots: np.ndarray  # [len(rowids)] slot of the item within its segment
    version: int
    dim: int

    @classmethod
    def build(cls, segments: list[Segment], items: np.ndarray, version: int, dim: int) -> View:
        """The view of `segments` holding `items` [n, 3] (rowid, segment id, slot) sorted by rowid; fills
        in each segment's slot_rowids."""
        position = {seg.id: i for i, seg in enumerate(segments)}
        seg_index = np.array([position[s] for s in items[:, 1]], dtype=np.int64) if len(items) else \
            np.zeros(0, dtype=np.int64)
        for i, seg in enumerate(segments):
            mask = seg_index == i
            seg.slot_rowids[items[mask, 2]] = items[mask, 0]
        return cls(segments, items[:, 0].copy(), seg_index, items[:, 2].copy(), version, dim)

    @property
    def count(self) -> int:
        return int(self.rowids.shape[0])

    def locate(self, rowids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, segment position, slot) for each rowid (removed ones are not found)."""
        if self.count == 0:
            nothing = np.zeros(len(rowids), dtype=np.int64)
            return nothing.astype(bool), nothing, nothing
        pos = np.minimum(np.searchsorted(self.rowids, rowids), self.count - 1)
        return self.rowids[pos] == rowids, self.seg_index[pos], self.slots[pos]

    def first_vectors(self, after: int) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, float32 first vectors) of the live items with rowid > after."""
        rowids, firsts = [], []
        for seg in self.segments:
            mask = seg.slot_rowids > after
            if mask.any():
                rowids.append(seg.slot_rowids[mask])
                firsts.append(bf16_view(np.ascontiguousarray(seg.bits[0][mask])).float().numpy())
        if not rowids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(rowids), np.concatenate(firsts)

    def score_all(self, qb: torch.Tensor, budget: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rowids, MaxSim scores) of every live item for one query qb [1, R_q, D] (the fast path's: bf16, or
        fp32 where `model.scoring.fast_path_is_precise`)."""
        parts_scores, parts_rowids = [], []
        for seg in self.segments:
            scores = seg.store().maxsim(qb, budget)[0]
            live = seg.slot_rowids >= 0
            parts_scores.append(scores[torch.from_numpy(live)])
            parts_rowids.append(torch.from_numpy(seg.slot_rowids[live]))
        return torch.cat(parts_rowids), torch.cat(parts_scores)

    @property
    def bytes(self) -> int:
        """Size of the segments' vectors (what a search may read)."""
        return sum(seg.bits.nbytes for seg in self.segments)

    def score_rows(self, qb: torch.Tensor, budget: tuple[int, int], candidates: np.ndarray,
                   precise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(rowids, MaxSim scores) of the given rowids (first-stage candidates or a shortlist) that are
        live (in fp32 when `precise`): scored in place, segment by segment, where the scorer reads candidates
        by index (`model.scoring.scores_in_place`: the fused kernel, or fp32 blocks) and the index fits the
        page cache; else their r_c prefixes are gathered, then scored at once."""
        found, seg_pos, slots = self.locate(candidates)
        candidates, seg_pos, slots = candidates[found], seg_pos[found], slots[found]
        if not len(candidates):
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        r_q, r_c = budget
        order = np.lexsort((slots, seg_pos))  # by segment, then slot: reads move forward through each file
        candidates, seg_pos, slots = candidates[order], seg_pos[order], slots[order]
        if scores_in_place(r_q, self.dim, precise) and self.bytes <= page_cache_bytes():
            # The scorer reads the candidates straight from the segment, so no gathered copy is made: with fp32
            # blocks 1.8x faster at (16, 64), 1,000 of 10,000 items, warm (34-38 against 65-68 ms, load 2.5);
            # with the kernel's bf16 variant 10-14 against 50 ms (bench/search.py exact --dim 384, 2026-12-02).
            # Not for an index too big to stay in the page cache: there the gather's threads keep many cold
            # reads in flight, which the scorer's lanes would not.
            scores = torch.empty(len(candidates))
            for pos in np.unique(seg_pos):
                where = np.flatnonzero(seg_pos == pos)
                store = CandidateStore.from_vector_major(self.segments[int(pos)].bits[:r_c])
                scores[where[0]:where[-1] + 1] = store.maxsim(
                    qb, (r_q, r_c), indices=torch.from_numpy(slots[where]), precise=precise)[0]
            return torch.from_numpy(candidates), scores
        gathered = torch.empty(r_c, len(candidates), self.dim, dtype=torch.bfloat16)
        jobs = []
        for pos in np.unique(seg_pos):
            where = np.flatnonzero(seg_pos == pos)
            bits = bf16_view(self.segments[int(pos)].bits)
            index = torch.from_numpy(slots[where])
            for j in range(0, r_c, _GATHER_VECTORS):
                j_end = min(r_c, j + _GATHER_VECTORS)
                jobs.append((bits[j:j_end], index, gathered[j:j_end, where[0]:where[-1] + 1]))
        _gather(jobs)
        # One store over all candidates: r_c GEMMs in total instead of r_c per segment.
        store = CandidateStore.from_vector_major(gathered)
        return torch.from_numpy(candidates), store.maxsim(qb, (r_q, r_c), precise=precise)[0]


def page_cache_bytes() -> int:
    """What an index may hold and still be expected to stay in the page cache: a quarter of the RAM."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


# Threads that gather re-rank candidates. Vector-major storage puts a candidate's r_c vectors in r_c
# places, so a re-rank of 1,000 items from a memory-mapped file that is not in the page cache is ~64,000
# small random reads: one thread would wait for them one at a time, several keep the disk busy.
GATHER_THREADS = 16
_GATHER_MIN_ROWS = 8192  # below this a pool costs more than it saves
_GATHER_VECTORS = 8  # vectors per gather job: 8 jobs per segment at r_c=64
_POOL: ThreadPoolExecutor | None = None  # started on the first gather big enough to need it


def _gather(jobs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """dst[:] = src.index_select(1, index) for each job; in a thread pool when there is much to read."""
    def run(job: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        src, index, dst = job
        dst.copy_(src.index_select(1, index))

    rows = sum(src.shape[0] * len(index) for src, index, _dst in jobs)
    if rows < _GATHER_MIN_ROWS or GATHER_THREADS <= 1 or len(jobs) == 1:
        for job in jobs:
            run(job)
        return
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="index-gather")
    list(_POOL.map(run, jobs))  # torch releases the GIL in index_select, so the page faults overlap
