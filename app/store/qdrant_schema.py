"""How items become Qdrant points (app.store.qdrant): ids, payloads, the stored fields, filters, the
collection's schema, and Qdrant's transport errors in plain words."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Iterator
from typing import Any

from model.config import DEFAULT_GROUPS

from .errors import IndexError_
from .items import IndexedItem

META_KEY = "metaembed"  # collection metadata key that marks a collection as ours
# Payload fields every listing needs; the thumbnail and the vectors are fetched only when asked for.
ITEM_FIELDS = ["id", "content_hash", "path", "kind", "title", "page", "passage", "char_start", "char_end",
               "size_bytes", "added", "text", "words", "seq"]


def stored_fields(num_vectors: int) -> list[int]:
    """The candidate budgets r_c kept as fields: the presets' r_c up to R_c, and R_c itself."""
    return sorted({rc for _, rc in DEFAULT_GROUPS if rc <= num_vectors} | {1, num_vectors})


def point_id(item_id: str) -> int:
    """Qdrant point id of an item id: 63 bits of its sha256 (Qdrant ids are unsigned 64-bit integers)."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") >> 1


def under(path: str) -> list[str]:
    """Every folder and zip archive `path` lies in ("/a/b.zip!/c/d.jpg": /a, /a/b.zip, /a/b.zip!/c)."""
    out = []
    for i, ch in enumerate(path):
        if ch == "/" and i > 0:
            out.append(path[:i].rstrip("!") if path[i - 1] == "!" else path[:i])
    return list(dict.fromkeys(out))


def item_of(record: Any) -> IndexedItem:
    p = record.payload
    span = (p["char_start"], p["char_end"]) if p.get("char_start") is not None else None
    return IndexedItem(
        id=p["id"], path=p["path"], kind=p["kind"], title=p["title"], content_hash=p["content_hash"],
        page=p.get("page"), passage=p.get("passage"), char_span=span, size_bytes=p["size_bytes"],
        added=p["added"], text=p.get("text"), words=[(w, tuple(box)) for w, box in p.get("words") or []],
        rowid=int(record.id),
    )


def payload_of(item: Any, item_id: str, added: float, seq: int) -> dict:
    span = item.char_span or (None, None)
    return {
        "id": item_id, "content_hash": item.content_hash, "path": item.source, "under": under(item.source),
        "kind": item.kind, "title": item.title, "page": item.page, "passage": item.passage,
        "char_start": span[0], "char_end": span[1], "size_bytes": int(item.size_bytes), "added": added,
        "seq": seq, "text": item.text,
        "words": [[w, [round(float(v), 4) for v in box]] for w, box in (item.words or [])],
        "file_sha256": getattr(item, "file_hash", "") or None,
        "thumbnail": base64.b64encode(item.thumbnail).decode() if item.thumbnail else None,
    }


def where(**conditions: Any) -> Any:
    """A filter on exact payload values (a list matches any of its values)."""
    from qdrant_client import models

    must = []
    for key, value in conditions.items():
        match = models.MatchAny(any=list(value)) if isinstance(value, list) else models.MatchValue(value=value)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


def split_layout(spec: str) -> tuple[str, dict[str, int]]:
    """A server spec's cluster layout for a new collection: qdrant://H:P/C?shards=N&replicas=M ->
    ("qdrant://H:P/C", {"shard_number": N, "replication_factor": M}). An existing collection keeps its own."""
    from urllib.parse import parse_qsl

    base, _, query = spec.partition("?")
    names = {"shards": "shard_number", "replicas": "replication_factor"}
    layout = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in names or not value.isdigit() or int(value) < 1:
            raise IndexError_(f"--store {spec!r}: {key}={value!r} is not a setting here; a new collection takes "
                              "shards=N and replicas=M (positive integers)")
        layout[names[key]] = int(value)
    return base, layout


def create_collection(client: Any, collection: str, checkpoint_id: str, num_vectors: int, dim: int,
            source: str | None, shard_number: int | None = None, replication_factor: int | None = None) -> None:
    from qdrant_client import models

    fields = stored_fields(num_vectors)
    local = type(client._client).__name__ == "QdrantLocal"
    config = {"first": models.VectorParams(size=dim, distance=models.Distance.DOT)}
    for rc in fields:
        if rc > 1:
            config[f"c{rc}"] = models.VectorParams(
                size=dim, distance=models.Distance.DOT, on_disk=True, hnsw_config=models.HnswConfigDiff(m=0),
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, always_ram=True)))
    meta = {"checkpoint_id": checkpoint_id, "checkpoint_source": source or "", "num_vectors": num_vectors,
            "dim": dim, "created": time.time(), "fields": fields}
    layout = {} if local else {"shard_number": shard_number, "replication_factor": replication_factor}
    client.create_collection(collection, vectors_config=config, metadata={META_KEY: meta}, **layout)
    if not local:  # local mode has no payload indexes (and warns about them)
        for key in ("id", "content_hash", "path", "under", "file_sha256", "kind"):
            client.create_payload_index(collection, key, models.PayloadSchemaType.KEYWORD)


@contextlib.contextmanager
def transport_errors(location: str) -> Iterator[None]:
    """Qdrant's connection and server errors as IndexError_ naming the store."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as e:
        raise IndexError_(f"Qdrant at {location} answered {e.status_code}: {e.reason_phrase} "
                          f"({(e.content or b'').decode(errors='replace')[:200]})") from None
    except ResponseHandlingException as e:
        cause = e.source if getattr(e, "source", None) is not None else e
        raise IndexError_(f"cannot reach Qdrant at {location} ({cause}): is the server running, and is the "
                          "address right?") from None
