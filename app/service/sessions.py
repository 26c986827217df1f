"""Private per-session collections for shared deployments (Hugging Face Spaces, `--private-sessions`).

Every browser session (one Gradio `session_hash`) gets a folder of its own under a process-private root:
a random id names the folder, so nothing a client sends ever becomes part of a path except a sanitised
file name. A session's folder is removed when the session ends (Gradio's unload event) or after it has
been idle for `ttl_s` seconds, and the whole root when the process exits.

Upload limits live here too: they apply to untrusted visitors and are checked before anything is read.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.humanize import human_bytes
from model.files import write_atomic

_MB = 1024 * 1024
MAX_NAME_CHARS = 120
# Anything outside letters, digits, marks and a few harmless punctuation marks becomes "_".
_UNSAFE = re.compile(r"[^\w\-. ()+,@=\[\]]", re.UNICODE)


@dataclass(frozen=True)
class UploadLimits:
    """Caps for one upload and for a whole session; `None` means unlimited (local, single-user use)."""

    max_files: int | None = 50  # files in one upload
    max_file_bytes: int | None = 50 * _MB
    max_upload_bytes: int | None = 200 * _MB  # all files of one upload together
    max_session_bytes: int | None = 500 * _MB  # everything a session keeps
    max_session_items: int | None = 2000  # indexed items (photos, pages, passages) per session

    def __post_init__(self) -> None:
        for name in ("max_files", "max_file_bytes", "max_upload_bytes", "max_session_bytes", "max_session_items"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"UploadLimits.{name} must be a positive integer or None, got {value!r}")


UNLIMITED = UploadLimits(None, None, None, None, None)


def safe_filename(name: str) -> str:
    """A client-supplied file name reduced to one harmless path component.

    Directory parts (either slash), control characters, leading dots (hidden files, "..") and characters
    that shells or file systems treat specially are removed; the extension survives the length cap.
    """
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    suffix = Path(base).suffix  # what the CLI reads as the type ("..jpg" is a .jpg): uploads follow one rule
    base = _UNSAFE.sub("_", base).strip(" .")
    if suffix and not Path(base).suffix:
        base = "file" + _UNSAFE.sub("_", suffix)
    base = base.lstrip("-")  # never looks like a command-line option
    if not base or set(base) <= {"_"}:
        base = "file"
    if len(base) > MAX_NAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            base = stem[: MAX_NAME_CHARS - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            base = base[:MAX_NAME_CHARS].rstrip(" .")
    return base


def unique_child(folder: Path, name: str) -> Path:
    """`folder / safe_filename(name)`, with " (2)", " (3)", ... added when that name is taken.

    Raises ValueError if the result would somehow lie outside `folder` (it cannot, by construction;
    the check is the last line of defence).
    """
    clean = safe_filename(name)
    stem, dot, ext = clean.rpartition(".")
    if not dot or not stem:
        stem, ext = clean, ""
    candidate = folder / clean
    n = 2
    while candidate.exists():
        candidate = folder / (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
        n += 1
    if candidate.resolve().parent != folder.resolve():
        raise ValueError(f"file name {name!r} does not name a file inside the collection folder")
    return candidate


@dataclass
class UploadCheck:
    accepted: list[tuple[Path, str]]  # (uploaded temp path, original file name)
    errors: list[dict]  # {"path": name, "error": plain words}


def check_upload(paths: Sequence[str | os.PathLike], limits: UploadLimits, session_bytes: int = 0) -> UploadCheck:
    """Apply the upload limits before anything is read; each refused file gets a plain-words reason."""
    files = [Path(p) for p in paths]
    errors: list[dict] = []
    accepted: list[tuple[Path, str]] = []
    if limits.max_files is not None and len(files) > limits.max_files:
        # The first ones are added and the rest named: refusing them all made a visitor pick 60 files again
        # to learn that the limit was 50, and the report counted "1 file".
        for path in files[limits.max_files:]:
            errors.append({"path": path.name,
                           "error": f"{path.name}: not added, one upload takes up to {limits.max_files} files; add "
                                    "it in another batch, or pack many files into one zip archive"})
        files = files[:limits.max_files]
    total = 0
    for path in files:
        name = path.name
        try:
            size = path.stat().st_size
        except OSError:
            errors.append({"path": name, "error": f"{name}: the upload did not arrive completely; try again"})
            continue
        if limits.max_file_bytes is not None and size > limits.max_file_bytes:
            errors.append({"path": name, "error": f"{name} is {human_bytes(size)}; files up to "
                                                  f"{human_bytes(limits.max_file_bytes)} are accepted here"})
            continue
        if limits.max_upload_bytes is not None and total + size > limits.max_upload_bytes:
            errors.append({"path": name, "error": f"{name}: this upload is over "
                                                  f"{human_bytes(limits.max_upload_bytes)} in total; upload the "
                                                  "remaining files in another batch"})
            continue
        if limits.max_session_bytes is not None and session_bytes + total + size > limits.max_session_bytes:
            errors.append({"path": name, "error": f"{name}: your collection would exceed "
                                                  f"{human_bytes(limits.max_session_bytes)} on this shared "
                                                  "server; remove some files first or run the app locally"})
            continue
        total += size
        accepted.append((path, name))
    return UploadCheck(accepted, errors)


@dataclass
class PrivateSession:
    """One visitor's folder: `files/` keeps their uploads, `index/` their collection's index."""

    key: str  # the Gradio session hash it belongs to (never used in a path)
    id: str  # random, names the folder
    folder: Path
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def files_dir(self) -> Path:
        return self.folder / "files"

    @property
    def index_root(self) -> Path:
        return self.folder / "index"

    def bytes_used(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


ROOT_PREFIX = "metaembed-sessions-"
OWNER_FILE = "owner.pid"


def sweep_orphans(temp_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove session roots left in the temp folder by servers that were killed (their owner process is gone).

    A root whose owner file is missing or names a live process is left alone. Returns what was removed.
    """
    removed = []
    for root in Path(temp_dir or tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            pid = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


BROWSER_KEY = re.compile(r"[A-Za-z0-9_-]{22,64}")  # what secrets.token_urlsafe(16..48) makes


class SessionStore:
    """Creates, finds and removes private session folders under one process-private root."""

    def __init__(self, root: str | os.PathLike | None = None, ttl_s: float = 2 * 3600, max_sessions: int = 500,
                 sweep_every_s: float = 300.0, on_end: Callable[[PrivateSession], None] | None = None):
        if ttl_s <= 0 or max_sessions < 1:
            raise ValueError(f"ttl_s and max_sessions must be positive, got {ttl_s} and {max_sessions}")
        if root is None:
            sweep_orphans()
            self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
            write_atomic(self.root / OWNER_FILE, str(os.getpid()))
            self._owns_root = True
        else:
            self.root = Path(root).expanduser().resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self._owns_root = False
        os.chmod(self.root, 0o700)
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.on_end = on_end  # called before a session's folder is removed (to close what uses it)
        self._sessions: dict[str, PrivateSession] = {}
        self._tabs: dict[str, str] = {}  # Gradio session hash of an open page -> its browser's key
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, args=(sweep_every_s,), daemon=True,
                                         name="session-sweeper")
        self._sweeper.start()
        atexit.register(self.close)

    def bind(self, tab: str, browser_key: str | None) -> str:
        """Tie an open page (its Gradio session hash) to its browser's key, which the page keeps in local
        storage, so a reload finds the same collection. A missing or malformed key gets a fresh random one
        (never derived from input). Returns the key the page should keep."""
        if not browser_key or not BROWSER_KEY.fullmatch(browser_key):
            browser_key = secrets.token_urlsafe(24)
        with self._lock:
            self._tabs[tab] = browser_key
        return browser_key

    def resolve(self, key: str) -> str:
        """The session key for a page's session hash: its browser's key when bound, else the hash itself."""
        with self._lock:
            return self._tabs.get(key, key)

    def unbind(self, tab: str) -> bool:
        """The page closed or reloaded: forget the tie (the session stays until it idles out)."""
        with self._lock:
            return self._tabs.pop(tab, None) is not None

    def get(self, key: str) -> PrivateSession:
        """The session for Gradio session hash `key`, created on first use."""
        if not key:
            raise ValueError("no session id: private collections need a browser session (or a gradio_client Client)")
        self.sweep()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if len(self._sessions) >= self.max_sessions:
                    raise RuntimeError("this server is busy: too many visitors have private collections right "
                                       "now; please try again later")
                sid = secrets.token_hex(16)
                folder = self.root / sid
                (folder / "files").mkdir(parents=True)
                (folder / "index").mkdir()
                session = PrivateSession(key=key, id=sid, folder=folder)
                self._sessions[key] = session
            session.last_used = time.time()
            return session

    def peek(self, key: str) -> PrivateSession | None:
        """The session for `key` if it exists, without creating one."""
        with self._lock:
            return self._sessions.get(key)

    def end(self, key: str) -> bool:
        """Remove a session and its folder; returns whether there was one."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is None:
            return False
        with session.lock:  # wait for a running upload of this session to finish
            if self.on_end is not None:
                self.on_end(session)
            shutil.rmtree(session.folder, ignore_errors=True)
        return True

    def sweep(self) -> list[str]:
        """End sessions idle for longer than the time limit; returns their keys."""
        now = time.time()
        with self._lock:
            expired = [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s]
        for key in expired:
            self.end(key)
        return expired

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _sweep_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.sweep()

    def close(self) -> None:
        """End every session (and remove the root if this store created it)."""
        self._stop.set()
        with self._lock:
            keys = list(self._sessions)
        for key in keys:
            self.end(key)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
