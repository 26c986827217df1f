"""Start the app: command-line options, deployment detection (Spaces, private sessions), launch.

`python app.py` calls `main()`. Tests and benchmarks call `create_app()` + `launch()` directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home, also offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from app.service import SAMPLE_DIR, Studio, UploadLimits, default_data_dir, load_engine  # noqa: E402
from app.ui.app import CSS, HEAD, build_demo  # noqa: E402


def on_spaces() -> bool:
    """Running as a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="app.py", description="MetaEmbed Studio: search your photos and documents, see why results matched.",
        epilog="Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (host / port), METAEMBED_CHECKPOINT "
               "(checkpoint), SPACE_ID (set on Hugging Face Spaces: turns on private sessions).")
    p.add_argument("--host", default=None,
                   help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="create a temporary public gradio.live link (needs internet)")
    p.add_argument("--data-dir", default=None,
                   help=f"where your collection and the sample index live (default: {default_data_dir()})")
    p.add_argument("--store", default=None, metavar="SPEC",
                   help="keep your collection's vectors in Qdrant: qdrant://HOST:PORT/COLLECTION (a server or "
                        "cluster; API key from $QDRANT_API_KEY) or qdrant-local:DIR (default: the embedded index "
                        "under --data-dir)")
    p.add_argument("--checkpoint", default=None,
                   help="MetaEmbed checkpoint folder or Hub id (default: $METAEMBED_CHECKPOINT or the bundled "
                        "MetaEmbed-Mini)")
    p.add_argument("--private-sessions", action="store_true",
                   help="give every browser session its own temporary collection (on automatically on Spaces)")
    p.add_argument("--no-samples", action="store_true", help="do not index or show the sample collection")
    p.add_argument("--session-ttl", type=float, default=2.0, help="hours before an idle private session is removed")
    p.add_argument("--mcp", action="store_true",
                   help="also serve the search and index endpoints as MCP tools for agents, at "
                        "/gradio_api/mcp/ (Gradio's own MCP server; needs gradio[mcp])")
    args = p.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.session_ttl <= 0:
        p.error(f"--session-ttl must be positive, got {args.session_ttl}")
    return args


def create_app(checkpoint: str | None = None, data_dir: str | os.PathLike | None = None,
               private_sessions: bool = False, sample_dir: str | os.PathLike | None = SAMPLE_DIR,
               limits: UploadLimits | None = None, session_ttl_s: float = 2 * 3600,
               wait_for_samples: bool = False, log=print, store: str | None = None) -> tuple[Studio, gr.Blocks]:
    """Load the model and build the UI. Files not indexed yet (the samples on first start, everything after
    a model or index-format change) are indexed in the background, or before returning with
    `wait_for_samples`; later starts reuse the indexes."""
    t0 = time.perf_counter()
    source = checkpoint if checkpoint is not None else os.environ.get("METAEMBED_CHECKPOINT") or None
    engine = load_engine(source)
    log(f"model {engine.config.name} from {engine.source} on {engine.model.device} "
        f"({time.perf_counter() - t0:.1f} s)")
    studio = Studio(engine, data_dir or default_data_dir(), private_sessions=private_sessions, sample_dir=sample_dir,
                    limits=limits, session_ttl_s=session_ttl_s, store=store)
    if store is not None and studio.local is not None:
        studio.local.index(engine)  # an unreachable Qdrant or another checkpoint's collection: say so now
    if wait_for_samples:
        studio.warm_up()
        for coll in (studio.samples, studio.local):
            if coll is not None:
                studio.sync_files(coll)
    else:
        studio.prepare_in_background(log)
    demo = build_demo(studio)
    return studio, demo


class CacheThumbnails:
    """ASGI middleware: the browser may keep the gallery's thumbnails. Gradio serves files without a
    Cache-Control header, and Chromium fetched thumbnails again when the gallery showed them anew: up to 24
    requests after a slider move, which the server answered while the next move waited (issue 17).
    A thumbnail's file never changes: it is written once per item (its id a prefix of its content hash), in
    a folder named afresh by each server process (Studio.thumb_dir)."""

    HEADER = (b"cache-control", b"private, max-age=86400, immutable")

    def __init__(self, app: ASGIApp, folder: str) -> None:
        self.app = app
        self.marker = f"/file={folder.rstrip('/')}/"  # in the decoded path of a thumbnail's URL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.marker not in scope.get("path", ""):
            await self.app(scope, receive, send)
            return

        async def send_cacheable(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                message = {**message, "headers": [*message.get("headers", []), self.HEADER]}
            await send(message)

        await self.app(scope, receive, send_cacheable)


def launch(studio: Studio, demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False, mcp: bool = False):
    """Serve `demo`; the data and session folders are never served as files. `mcp`: the named API endpoints
    are MCP tools too (streamable HTTP at /gradio_api/mcp/, SSE at /gradio_api/mcp/sse)."""
    blocked = [str(studio.data_dir)]
    if studio.sessions is not None:
        blocked.append(str(studio.sessions.root))
    max_file = studio.limits.max_file_bytes
    demo.queue(max_size=64, default_concurrency_limit=2)
    return demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        show_error=True, blocked_paths=blocked, max_file_size=max_file, ssr_mode=False, theme=gr.themes.Default(),
        css=CSS, head=HEAD, favicon_path=None, footer_links=["api", "gradio"], run_history=False, mcp_server=mcp,
        app_kwargs={"middleware": [Middleware(CacheThumbnails, folder=str(studio.thumb_dir))]},
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    private = args.private_sessions or on_spaces()
    try:
        studio, demo = create_app(args.checkpoint, args.data_dir, private_sessions=private,
                                  sample_dir=None if args.no_samples else SAMPLE_DIR,
                                  session_ttl_s=args.session_ttl * 3600, store=args.store)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if private:
        print("private sessions: every browser session gets its own temporary collection")
    # SIGTERM (what `kill`, systemd and container runtimes send) shuts down like Ctrl-C, so private
    # uploads are removed; by default Python would exit without running any cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        launch(studio, demo, host=args.host, port=args.port, share=args.share, mcp=args.mcp)
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
