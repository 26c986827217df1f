"""A collection: a folder of files plus one index per checkpoint, shared by the threads of a server."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

from app.store import Store, open_store, open_store_for
from app.store.index import CheckpointMismatch, Index, IndexError_

from .engine import Engine
from .sessions import UNLIMITED, UploadLimits


class Collection:
    """A folder of files plus its indexes (one per checkpoint), safe to use from several threads."""

    def __init__(self, key: str, label: str, root: Path, files_dir: Path, read_only: bool = False,
                 limits: UploadLimits = UNLIMITED, store: str | None = None):
        self.key = key
        self.label = label
        self.root = Path(root)
        self.files_dir = Path(files_dir)
        self.read_only = read_only
        self.limits = limits
        self.lock = threading.RLock()  # guards the open indexes (short); each Index serialises its own calls
        # Held while files are copied and indexed, removed or cleared: one writer at a time per collection,
        # while searches go on (they only wait for the index's own lock, one batch at a time).
        self.writing = threading.RLock()
        # (fraction, what) while files are being added: a page reloaded mid-upload (a phone that suspended the
        # tab) lost its progress bar and showed a half-added PDF as complete; the status line shows this instead.
        self.adding: tuple[float, str] | None = None
        self.token = secrets.token_hex(12)  # names this collection's thumbnail folder; never derived from input
        self._indexes: dict[str, Store] = {}
        # A Qdrant store (app.store.qdrant) instead of the index folders under `root`: one collection, made
        # by one checkpoint; loading another model then says so instead of mixing vectors.
        self.store = store

    def index_dir(self, ckpt: str) -> Path:
        return self.root / "index" / ckpt

    def index(self, engine: Engine, create: bool = True) -> Store | None:
        """This collection's index for `engine`'s checkpoint (None if there is none and create=False)."""
        with self.lock:
            idx = self._indexes.get(engine.checkpoint_id)
            if idx is not None:
                return idx
            if self.store is not None:
                return self._open_store(engine, create)
            folder = self.index_dir(engine.checkpoint_id)
            if not create and not (folder / "index.sqlite").is_file():
                return None
            try:
                idx = Index.open_for(folder, engine.checkpoint_id, engine.num_candidate_vectors, engine.dim,
                                     checkpoint_source=engine.source)
            except CheckpointMismatch:
                raise
            except IndexError_:
                # An index this version cannot read (an older format, or damaged): the files are the source
                # of truth, so keep it aside and start afresh; Studio.sync_files indexes the files again.
                aside = folder.with_name(f"{folder.name}.unreadable-{int(time.time())}")
                folder.rename(aside)
                idx = Index.open_for(folder, engine.checkpoint_id, engine.num_candidate_vectors, engine.dim,
                                     checkpoint_source=engine.source)
            self._indexes[engine.checkpoint_id] = idx
            return idx

    def _open_store(self, engine: Engine, create: bool) -> Store | None:
        try:
            if create:
                idx = open_store_for(self.store, engine.checkpoint_id, engine.num_candidate_vectors, engine.dim,
                                     checkpoint_source=engine.source)
            else:
                idx = open_store(self.store, engine.checkpoint_id)
        except FileNotFoundError:
            return None
        self._indexes[engine.checkpoint_id] = idx
        return idx

    def close(self) -> None:
        with self.lock:
            for idx in self._indexes.values():
                idx.close()
            self._indexes.clear()

    def display_path(self, source: str) -> str:
        """The path users see: relative to the files folder (zip members keep their "!/member" part)."""
        zip_part, sep, member = source.partition("!/")
        try:
            rel = Path(zip_part).resolve().relative_to(self.files_dir.resolve()).as_posix()
        except ValueError:
            rel = Path(zip_part).name
        return rel + (sep + member if sep else "")
