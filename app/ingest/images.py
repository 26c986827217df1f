"""Opening photos: only the listed decoders, a pixel cap checked before decoding, EXIF orientation applied,
every colour mode made 8-bit RGB (model.visual.images.to_rgb, the same reading the model's tokenizer uses),
downscaled for the encoder, and a JPEG thumbnail for display."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

from PIL import Image, ImageOps, UnidentifiedImageError

from .events import DuplicateSkipped, IngestEvent, Item, _Refused
from .limits import DEFAULT_LIMITS, IngestLimits
from .sources import _Source

# Only these decoders may run: Pillow would otherwise also hand files to plugins such as EPS (Ghostscript).
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO camera files


def _image_items(src: _Source, data: bytes, file_hash: str, limits: IngestLimits,
                 known: AbstractSet[str]) -> Iterator[IngestEvent]:
    if file_hash in known:
        yield DuplicateSkipped(src.source, "", file_hash)
        return
    image = load_image(data, limits)
    yield Item(
        source=src.source, kind="image", title=src.title, content_hash=file_hash, size_bytes=len(data),
        file_hash=file_hash, image=image, thumbnail=make_thumbnail(image, limits.thumbnail_long_side),
    )


def load_image(data: bytes, limits: IngestLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode an image file's bytes to RGB, upright (EXIF), at most `encode_long_side` px long.

    Raises ValueError with a plain-words reason (without the file name) when the bytes are not a usable image.
    """
    # Imported here, not at the top: importing model/ loads torch (model/__init__.py; seconds and ~200 MB),
    # which reading text and PDFs never needs.
    from model.visual.images import to_rgb

    if not data:
        raise _Refused("not a readable image (the file is empty)")  # as pipeline._empty_message words it
    try:
        with warnings.catch_warnings():
            # We apply our own pixel cap below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:,.0f} megapixels, " if found else ""
        raise _Refused(f"too large ({size}limit {limits.max_megapixels:g})") from exc
    except UnidentifiedImageError as exc:
        raise _Refused("not a readable image (not a picture format we support, or the file is damaged)") from exc
    except Exception as exc:  # noqa: BLE001 - broken headers raise all sorts of errors
        raise _Refused("not a readable image (the file is damaged)") from exc

    width, height = im.size
    megapixels = width * height / 1e6
    if megapixels > limits.max_megapixels:
        raise _Refused(f"too large ({megapixels:,.0f} megapixels, limit {limits.max_megapixels:g})")
    if width < 1 or height < 1:
        raise _Refused("not a readable image (it has no pixels)")
    try:
        if im.format in ("JPEG", "MPO"):
            # Let the JPEG decoder downscale by 1/2..1/8 while decoding: far faster for big photos.
            im.draft("RGB", _fit_size(width, height, limits.encode_long_side))
        im.load()
        try:
            ImageOps.exif_transpose(im, in_place=True)  # in place: no second full-size copy
        except Exception:  # noqa: BLE001 - broken EXIF must not lose the picture; keep it as stored
            pass
        im = to_rgb(im)
    except Exception as exc:  # noqa: BLE001 - truncated data, bad compression streams, ...
        raise _Refused("not a readable image (the file is damaged or incomplete)") from exc
    if max(im.size) > limits.encode_long_side:
        # Bicubic, not Lanczos: 29 vs 46 ms for a 12 MP photo (drafted to 2016x1512), the largest single cost
        # of indexing one; the encoder reduces this image ~3x further, and on 43 large wallpapers the tokenizer
        # text changed only in runner-up concepts at their thresholds (4 photos; docs/benchmarks.md).
        im = im.resize(_fit_size(*im.size, limits.encode_long_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return im


def _fit_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(image: Image.Image, long_side: int = 384) -> bytes:
    """JPEG bytes of `image`, at most `long_side` px on its long side."""
    # A box reduction to just above the target, then Lanczos (reducing_gap=1): 7 instead of 14 ms for a
    # 1600x1200 photo, within 36-49 dB PSNR of a full Lanczos resize (docs/benchmarks.md, "Photo indexing
    # speed"); resize returns a new image, so the caller's is neither copied nor changed.
    thumb = image.resize(_fit_size(*image.size, long_side), Image.Resampling.LANCZOS, reducing_gap=1.0)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="JPEG", quality=80)
    return buf.getvalue()

