"""MetaEmbed Studio: `python app.py --help` for the options (port, host, share, data dir, checkpoint, sessions)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.server import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
