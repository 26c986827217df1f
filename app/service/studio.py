"""What the Gradio app does, without Gradio: the loaded model, the collections, search and indexing.

`Studio` owns one `Engine` (a loaded MetaEmbed and the id of its checkpoint), the read-only sample
collection, and either one persistent local collection (desktop use) or a `SessionStore` of private
per-visitor collections (shared deployments). Every collection keeps one index per checkpoint under
`<root>/index/<checkpoint id>/`, so loading another model never mixes vectors of two models.

The UI layer (app/ui/) keeps a `QueryState` per browser session: the query's full R_q vectors, so that
moving the budget slider re-ranks from cached vectors without running the model again.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from app import ingest as ingest_mod
from app.humanize import describe_files, echoed, human_bytes
from app.indexing import encoder_input
from app.search import WHOLE_MATCH, Hit, QueryCache, check_budget, comparable_score, rank
from app.store.index import IndexedItem
from model import maxsim_kernel
from model.files import write_atomic

from . import uploads
from .collection import Collection
from .engine import Engine, load_engine
from .sessions import (
    UNLIMITED,
    SessionStore,
    UploadLimits,
)
from .thumbnails import page_top, text_card
from .uploads import Progress

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "assets" / "examples"
SAMPLE_EXTENSIONS = ingest_mod.IMAGE_EXTENSIONS | ingest_mod.PDF_EXTENSIONS  # not the licence notes next to them
MORE_LIKE_CHARS = 500  # of a page's or passage's text, as the query of "more like this"


SPACES_BUCKET = Path("/data")  # where a Hugging Face Space mounts its persistent storage bucket


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/metaembed-studio (usually ~/.local/share/metaembed-studio); on a Hugging Face Space
    with a storage bucket mounted at /data, /data/metaembed-studio (a Space's own disk is wiped on restart)."""
    if os.environ.get("SPACE_ID") and SPACES_BUCKET.is_dir() and os.access(SPACES_BUCKET, os.W_OK):
        return SPACES_BUCKET / "metaembed-studio"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "metaembed-studio"


def _no_progress(fraction: float, what: str) -> None:
    pass


# --------------------------------------------------------------------------------------------- queries


def query_content(text: str | None, image: Image.Image | None):
    """What the model encodes for a query: the image and its words together, or whichever is given."""
    if image is not None and text:
        return {"image": image, "text": text}
    return image if image is not None else text


@dataclass
class QueryState:
    """A query encoded once at full R_q: every budget re-ranks from these vectors."""

    checkpoint_id: str
    text: str | None
    image: Image.Image | None
    vectors: torch.Tensor  # [R_q, D] float32
    encode_ms: float = 0.0  # 0: the vectors came from the query cache (an earlier search encoded them)
    inspected: dict | None = field(default=None, repr=False)
    about: str | None = None  # what the query stands for, when it is not the user's own (more like this)
    # More like this: the result it stands for, as (collection key, path, page), left out of its own results
    # (it came first, at 1.00, which told the visitor nothing).
    source: tuple[str, str, int | None] | None = None

    @property
    def content(self):
        return query_content(self.text, self.image)

    @property
    def label(self) -> str:
        """How captions name the query, as Markdown: the visitor's words shortened and escaped (humanize.echoed),
        or what a "more like this" query stands for."""
        if self.about is not None:
            return echoed(self.about)
        words = f"“{echoed(self.text)}”" if self.text else ""
        if self.image is not None:
            return f"your image + {words}" if words else "your image"
        return words


# ----------------------------------------------------------------------------------------------- studio


class Studio:
    """The app's state: model, sample collection, and the user's collection(s)."""

    def __init__(self, engine: Engine, data_dir: str | os.PathLike, private_sessions: bool = False,
                 sample_dir: str | os.PathLike | None = SAMPLE_DIR, limits: UploadLimits | None = None,
                 session_ttl_s: float = 2 * 3600, allow_model_switch: bool | None = None,
                 thumb_root: str | os.PathLike | None = None, store: str | None = None):
        if store is not None and private_sessions:
            raise ValueError("--store keeps one shared collection in Qdrant; private sessions (one temporary "
                             "collection per visitor) keep theirs on this machine: use one or the other")
        self.engine = engine
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.private_sessions = private_sessions
        self.allow_model_switch = (not private_sessions) if allow_model_switch is None else allow_model_switch
        self.limits = limits or (UploadLimits() if private_sessions else UNLIMITED)
        # Gallery thumbnails are written once per item, in folders with random names (as unguessable as
        # Gradio's own cache paths); the UI registers `thumb_dir` as static so Gradio serves the files as
        # they are instead of checking and copying each one on every re-rank.
        if thumb_root is not None:
            Path(thumb_root).mkdir(parents=True, exist_ok=True)
        self.thumb_dir = Path(tempfile.mkdtemp(prefix="metaembed-thumbs-", dir=thumb_root))
        self.samples: Collection | None = None
        if sample_dir is not None and Path(sample_dir).is_dir():
            self.samples = Collection("samples", "Sample collection", self.data_dir / "samples", Path(sample_dir),
                                      read_only=True)
        self.sessions: SessionStore | None = (SessionStore(ttl_s=session_ttl_s, on_end=self._session_ended)
                                              if private_sessions else None)
        self._session_collections: dict[str, Collection] = {}
        self.local: Collection | None = None
        if not private_sessions:
            root = self.data_dir / "collection"
            self.local = Collection("yours", "Your collection", root, root / "files", store=store)
        self._inspect_cache: dict[tuple, dict] = {}
        self.queries = QueryCache()
        self._cache_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self.indexing_progress: tuple[float, str] | None = None  # set while files are indexed in the background

    # ---- collections -------------------------------------------------------------------------------
    def user_collection(self, session_key: str | None, create: bool = True) -> Collection | None:
        """The collection this visitor may change: the local one, or their private session's."""
        if self.sessions is None:
            return self.local
        if not session_key:
            return None
        session_key = self.sessions.resolve(session_key)
        if not create:
            session = self.sessions.peek(session_key)
            if session is None:
                return None
        session = self.sessions.get(session_key)
        with self._cache_lock:
            coll = self._session_collections.get(session.id)
            if coll is None:
                coll = Collection("yours", "Your private collection", session.folder, session.files_dir,
                                  limits=self.limits)
                self._session_collections[session.id] = coll
        return coll

    def bind_browser(self, tab: str | None, browser_key: str | None) -> str | None:
        """Private sessions: tie an open page to its browser's key (see SessionStore.bind); None otherwise."""
        if self.sessions is None or not tab:
            return None
        return self.sessions.bind(tab, browser_key)

    def end_session(self, session_key: str | None) -> None:
        """The visitor's page closed. A page tied to its browser's key keeps the collection for a reload or a
        later visit, until it idles out; an untied one (an API client) has its folder, index and thumbnails
        removed now."""
        if self.sessions is not None and session_key and not self.sessions.unbind(session_key):
            self.sessions.end(session_key)

    def _session_ended(self, session) -> None:
        with self._cache_lock:
            coll = self._session_collections.pop(session.id, None)
        if coll is not None:
            with coll.writing:
                coll.close()
            shutil.rmtree(self.thumb_dir / coll.token, ignore_errors=True)
            with self._cache_lock:
                for key in [k for k in self._inspect_cache if k[1] == coll.token]:
                    del self._inspect_cache[key]

    def collections(self, session_key: str | None, include_samples: bool = True) -> list[Collection]:
        out = []
        if include_samples and self.samples is not None:
            out.append(self.samples)
        user = self.user_collection(session_key, create=False)
        if user is not None:
            out.append(user)
        return out

    def find_collection(self, key: str, session_key: str | None) -> Collection:
        if key == "samples" and self.samples is not None:
            return self.samples
        user = self.user_collection(session_key, create=False)
        if key == "yours" and user is not None:
            return user
        raise KeyError(f"no collection {key!r} for this session")

    # ---- searching ---------------------------------------------------------------------------------
    def encode_query(self, text: str | None, image: Image.Image | None = None) -> QueryState:
        text = (text or "").strip() or None
        if text is None and image is None:
            raise ValueError("type a query or drop an image to search with")
        engine = self.engine
        ran = []  # whether the model ran: a query served from the cache has encode_ms 0 ("encoded earlier")

        def encode(items: list) -> torch.Tensor:
            ran.append(True)
            return engine.encode(items, "query")

        t0 = time.perf_counter()
        vectors = self.queries.vectors(query_content(text, image), engine.checkpoint_id, encode)
        # Not the time of the cache look-up itself: a few microseconds, which read "encoded once, in 0 ms".
        ms = (time.perf_counter() - t0) * 1000 if ran else 0.0
        return QueryState(engine.checkpoint_id, text, image, vectors, encode_ms=ms)

    def ensure_current(self, query: QueryState) -> QueryState:
        """Re-encode a cached query if the model changed since it was encoded."""
        if query.checkpoint_id == self.engine.checkpoint_id:
            return query
        return dataclasses.replace(self.encode_query(query.text, query.image), about=query.about,
                                   source=query.source)

    def more_like_this(self, coll_key: str, item_id: str, session_key: str | None) -> QueryState:
        """The query of "more like this result": a photo by its pixels, a PDF page or a passage by its text.

        A page's text comes from the index, as it was read at indexing time. Searching with the rendered page
        instead (as this did before) ran the visual tokenizer's OCR over a page full of text when encoding the
        query: 23 s in a tester's run, about a minute on the 2-core machine under load, against a second or
        less for the page's words; re-reading the PDF to render the page came on top. Only a page without any
        text (a scan OCR could not read) is searched by its picture.
        """
        _coll, item, _ = self.item(coll_key, item_id, session_key)
        source = (coll_key, item.path, item.page)  # the result as search counts results: a page, not a passage
        name = f"p. {item.page} · {item.title}" if item.page else item.title
        text = " ".join((item.text or "").split())[:MORE_LIKE_CHARS]
        if item.kind != "image" and text:
            return dataclasses.replace(self.encode_query(text, None), about=f"the text of {name}", source=source)
        image = self.load_source_item(item).image
        if image is None:
            raise ValueError(f"{name} has neither text nor a picture to search with")
        # Named as the text of a page is: "your image" read as if the visitor had dropped a photo of their own.
        about = f"the photo {name}" if item.kind == "image" else f"the picture of {name}"
        return dataclasses.replace(self.encode_query(None, image), about=about, source=source)

    def check_budget(self, r_q: int, r_c: int) -> tuple[int, int]:
        engine = self.engine
        return check_budget((r_q, r_c), engine.num_query_vectors, engine.num_candidate_vectors, engine.presets)

    def search(self, query: QueryState, session_key: str | None, r_q: int, r_c: int, k: int = 24,
               include_samples: bool = True, only: str | None = None) -> list[Hit]:
        """The k best results over the visitor's collections at budget (r_q, r_c) (app.search.rank), one per
        PDF page or text file, of `only` "photos" or "documents" when given; paths are shown relative to each
        collection's folder, never as server paths. A more-like-this query (`query.source`) leaves out the
        result it was made from, so its nearest neighbours are others (and `whole_match` judges those)."""
        budget = self.check_budget(r_q, r_c)
        colls = {c.key: c for c in self.collections(session_key, include_samples)}
        sources = [(key, idx) for key, c in colls.items() if (idx := c.index(self.engine, create=False)) is not None]
        hits = rank(sources, query.vectors, budget, k + (query.source is not None), one_per_page=True, only=only)
        if query.source is not None:  # more like this: not the result it was asked about
            hits = [h for h in hits if (h.collection, h.path, h.page) != query.source][:k]
        return [dataclasses.replace(h, rank=n, path=colls[h.collection].display_path(h.path))
                for n, h in enumerate(hits, start=1)]

    def whole_match(self, query: QueryState, session_key: str | None, include_samples: bool = True,
                    only: str | None = None) -> float | None:
        """How close the nearest item (of `only`, when given) comes to the query taken as a whole: the
        comparable score of the best result at budget WHOLE_MATCH (what the weak-match flag judges, at every
        budget); None for no items."""
        hits = self.search(query, session_key, *WHOLE_MATCH, k=1, include_samples=include_samples, only=only)
        return comparable_score(hits[0].score, WHOLE_MATCH[0]) if hits else None

    def thumbnail(self, hit: Hit, session_key: str | None) -> str:
        """A JPEG file for the result gallery (written once per item; text passages get a text card)."""
        coll = self.find_collection(hit.collection, session_key)
        folder = self.thumb_dir / coll.token
        path = folder / f"{hit.id}.jpg"
        if path.is_file():
            return str(path)
        idx = coll.index(self.engine, create=False)
        data = idx.thumbnail(hit.id) if idx is not None else b""
        item = idx.get(hit.id) if (idx is not None and not data) else None
        if not data:
            buf = io.BytesIO()
            text_card(hit.title, (item.text if item else "") or "").save(buf, "JPEG", quality=85)
            data = buf.getvalue()
        elif hit.page is not None:
            data = page_top(data)
        write_atomic(path, data)
        return str(path)

    def item(self, hit_collection: str, item_id: str, session_key: str | None) -> tuple[Collection, IndexedItem,
                                                                                      torch.Tensor]:
        coll = self.find_collection(hit_collection, session_key)
        idx = coll.index(self.engine, create=False)
        if idx is None:
            raise KeyError(f"{coll.label} has no index for the current model")
        return coll, idx.get(item_id), idx.vectors(item_id).float()

    def inspect_item(self, coll: Collection, item: IndexedItem) -> tuple[dict, ingest_mod.Item]:
        """Re-read an indexed item from its file and run the model with attention (cached per item)."""
        key = (self.engine.checkpoint_id, coll.token, item.id)
        with self._cache_lock:
            hit = self._inspect_cache.get(key)
        if hit is not None:
            return hit["inspect"], hit["item"]
        source = self.load_source_item(item)
        result = self.engine.inspect(encoder_input(source), "candidate")
        with self._cache_lock:
            if len(self._inspect_cache) > 64:
                self._inspect_cache.pop(next(iter(self._inspect_cache)))
            self._inspect_cache[key] = {"inspect": result, "item": source}
        return result, source

    def inspect_query(self, query: QueryState) -> dict:
        if query.inspected is None or query.inspected.get("_ckpt") != self.engine.checkpoint_id:
            query.inspected = dict(self.engine.inspect(query.content, "query"), _ckpt=self.engine.checkpoint_id)
        return query.inspected

    @staticmethod
    def load_source_item(item: IndexedItem) -> ingest_mod.Item:
        """The ingest Item for an indexed item, read again from its file (matched by content hash)."""
        file_path = item.path.partition("!/")[0]
        if not Path(file_path).is_file():
            raise FileNotFoundError(f"{Path(file_path).name} is no longer where it was indexed ({file_path})")
        gen = ingest_mod.iter_ingest([file_path])
        try:
            for event in gen:
                if isinstance(event, ingest_mod.Item) and event.content_hash == item.content_hash:
                    return event
        finally:
            gen.close()
        raise FileNotFoundError(f"{item.title} has changed since it was indexed; re-index it to explain it")

    # ---- indexing ----------------------------------------------------------------------------------
    def index_files(self, coll: Collection, paths: Sequence[str | os.PathLike], progress: Progress = _no_progress,
                    copy_in: bool = True, display_names: Sequence[str] | None = None) -> dict:
        """Copy uploads into the collection's folder, ingest, encode and add them (app.service.uploads).

        Returns the CLI's report: {"indexed": [...], "skipped_duplicates": [...], "replaced": [...],
        "errors": [{"path", "error"}]} plus "notes", with paths relative to the collection.
        """
        def follow(fraction: float, what: str) -> None:
            coll.adding = (fraction, what)
            progress(fraction, what)

        try:
            return uploads.add_files(self.engine, coll, paths, follow, copy_in, display_names)
        finally:
            coll.adding = None

    def remove(self, coll: Collection, targets: Sequence[str]) -> list[IndexedItem]:
        """Remove items by id or by displayed path (the removed items); deletes the stored files nothing refers
        to any more."""
        return uploads.remove(self.engine, coll, targets)

    def clear(self, coll: Collection) -> list[IndexedItem]:
        """Remove every item and stored file of a collection (the removed items)."""
        return uploads.clear(self.engine, coll)

    def items(self, coll: Collection) -> list[IndexedItem]:
        idx = coll.index(self.engine, create=False)
        return idx.items() if idx is not None else []

    def stats(self, coll: Collection | None) -> dict:
        """Items, vectors and bytes at each budget for one collection."""
        engine = self.engine
        if coll is None:
            return {"items": 0, "files": 0, "budgets": []}
        idx = coll.index(engine, create=False)
        info = idx.info() if idx is not None else {"items": 0, "sources": 0, "kinds": {}}
        n = info["items"]
        budgets = []
        for r_q, r_c in engine.presets:
            budgets.append({"budget": f"({r_q}, {r_c})", "vectors": n * r_c,
                            "bytes": n * r_c * engine.dim * 2, "size": human_bytes(n * r_c * engine.dim * 2)})
        return {"items": n, "files": info.get("sources", 0), "kinds": info.get("kinds", {}), "budgets": budgets,
                "on_disk": human_bytes(info.get("vector_bytes", 0) + info.get("metadata_bytes", 0))}

    # ---- samples and model switching ---------------------------------------------------------------
    def sync_files(self, coll: Collection, progress: Progress = _no_progress) -> dict | None:
        """Index a collection's files that have no items yet and drop items whose file is gone."""
        extensions = SAMPLE_EXTENSIONS if coll is self.samples else ingest_mod.SUPPORTED_EXTENSIONS
        return uploads.sync_folder(self.engine, coll, extensions, progress)

    def prepare_samples(self, progress: Progress = _no_progress) -> dict | None:
        """Index the sample collection for the current model if it is not indexed yet (first start)."""
        return self.sync_files(self.samples, progress) if self.samples is not None else None

    def warm_up(self) -> None:
        """One-off work done at start rather than in a visitor's first search or upload: building the fused
        MaxSim kernel where this machine has not cached it yet (~1 s, model/maxsim_kernel.py), and the class
        prior's vectors (~1 s, MetaEmbed-Mini v3.1)."""
        maxsim_kernel.load()
        model = self.engine.model
        if getattr(model.config, "class_prior", 0):
            with self.engine.lock.background():
                model.class_vectors()

    def prepare_in_background(self, log: Callable[[str], None] = print) -> threading.Thread:
        """Index what is not indexed yet (samples, then the local collection) on a thread, so the page is
        served at once; `indexing_progress` says how far it is."""
        todo = [c for c in (self.samples, self.local) if c is not None]

        def run() -> None:
            try:
                self.warm_up()
            except Exception as e:  # noqa: BLE001 - then the first photo makes them; indexing must go on
                log(f"could not prepare the model: {e}")
            for coll in todo:
                t0 = time.perf_counter()
                # "the sample collection", "your collection" (it said "the your collection")
                name = coll.label.lower() if coll.label.startswith("Your") else f"the {coll.label.lower()}"

                def show(fraction: float, what: str, coll=coll) -> None:
                    self.indexing_progress = (fraction, f"{coll.label.lower()}: {what}")

                try:
                    report = self.sync_files(coll, show)
                except Exception as e:  # noqa: BLE001 - the app keeps working without them
                    log(f"could not index {name}: {e}")
                    report = None
                if report is not None:
                    added = describe_files((e["path"], e["page"], e["kind"]) for e in report["indexed"])
                    log(f"indexed {name}: {added}, "
                        f"{len(report['errors'])} problems ({time.perf_counter() - t0:.1f} s)")
            self.indexing_progress = None

        self.indexing_progress = (0.0, "starting") if todo else None
        thread = threading.Thread(target=run, name="index-collections", daemon=True)
        thread.start()
        self._samples_thread = thread
        return thread

    def wait_for_samples(self, timeout: float | None = None) -> bool:
        thread = getattr(self, "_samples_thread", None)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def switch_model(self, source: str | None, progress: Progress = _no_progress) -> Engine:
        """Load another checkpoint, index the samples (and the local collection's files) for it, then use it."""
        if not self.allow_model_switch:
            raise PermissionError("this shared deployment uses a fixed model; run the app locally to try others")
        with self._switch_lock:
            progress(0.05, "loading the checkpoint")
            engine = load_engine(source)
            old = self.engine
            self.engine = engine
            try:
                self.warm_up()
                progress(0.3, "indexing the sample collection for this model")
                self.prepare_samples(lambda f, w: progress(0.3 + 0.3 * f, w))
                if self.local is not None:
                    progress(0.6, "indexing your collection for this model")
                    self.sync_files(self.local, lambda f, w: progress(0.6 + 0.4 * f, w))
            except BaseException:
                self.engine = old
                raise
            return engine

    def close(self) -> None:
        for coll in [self.samples, self.local, *self._session_collections.values()]:
            if coll is not None:
                coll.close()
        if self.sessions is not None:
            self.sessions.close()
        shutil.rmtree(self.thumb_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ helpers
