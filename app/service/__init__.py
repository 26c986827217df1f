"""What the app does, without Gradio: the loaded model, the collections, search, indexing and sessions.

    engine.py      Engine: a loaded checkpoint, its id, the model lock (visitors before indexing)
    collection.py  Collection: a folder of files and its index per checkpoint
    sessions.py    private per-visitor folders with expiry, upload limits, safe file names
    thumbnails.py  gallery pictures (text passages get a card)
    uploads.py     changing a collection: add uploads, remove, clear, re-sync a folder with its index
    studio.py      Studio: the sample collection plus the visitor's, and everything the UI and API call
"""

from .collection import Collection
from .engine import Engine, load_engine
from .sessions import UploadLimits
from .studio import SAMPLE_DIR, QueryState, Studio, default_data_dir

__all__ = ["SAMPLE_DIR", "Collection", "Engine", "QueryState", "Studio", "UploadLimits", "default_data_dir",
           "load_engine"]
