"""Per-record checks that turn bad images into error rows, and the light per-record facts
``inspect`` aggregates (no image bytes leave the worker)."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from biocap_ray.data import schema
from biocap_ray.data.images import ImageError, load_rgb, probe
from biocap_ray.data.taxonomy import RANKS

_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def duplicate_error(uid: str, origin: str, first: dict[str, str]) -> str | None:
    """The error of a record whose uid already occurred, at ``first[uid]``; None for the first
    occurrence and for uids that occur once. Metadata tables and whole datasets share it."""
    seen = first.get(uid)
    return f"duplicate uid {uid!r} (first at {seen})" if seen is not None and origin != seen else None


def image_extension(data: bytes) -> str:
    """The WebDataset key for encoded image bytes (sniffed from magic numbers)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


def _normalise(data: bytes, max_pixels: int) -> bytes:
    """Keep JPEG/PNG/WebP bytes untouched; re-encode anything else (TIFF, GIF, BMP, ...) as RGB PNG."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
    if fmt in _KEEP_FORMATS:
        return data
    out = io.BytesIO()
    load_rgb(data, max_pixels).save(out, format="PNG")
    return out.getvalue()


def check_batch(batch: pa.Table, max_pixels: int) -> pa.Table:
    """Decode every image of a record batch; failures set ``error`` (bytes of good images kept)."""
    rows = batch.to_pylist()
    for row in rows:
        if row["error"]:
            continue
        if "." in (row["uid"] or ""):
            row["error"] = f"uid {row['uid']!r} contains '.', which WebDataset reserves for key extensions"
            continue
        _, _, _, error = probe(row["image"], max_pixels)
        if error:
            row["error"] = error
        else:
            try:
                row["image"] = _normalise(row["image"], max_pixels)
            except (ImageError, OSError) as exc:
                row["error"] = str(exc)
    return schema.to_table(rows)


FACT_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("origin", pa.string()),
        ("class", pa.string()),
        ("label_rank", pa.string()),
        ("ranks_present", pa.string()),
        ("has_caption", pa.bool_()),
        ("has_common_name", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("error", pa.string()),
    ]
)


def facts_batch(batch: pa.Table, max_pixels: int) -> pa.Table:
    """One small row of facts per record: what ``inspect`` counts."""
    out = []
    for row in batch.to_pylist():
        width = height = mode = None
        error = row["error"]
        if not error:
            width, height, mode, error = probe(row["image"], max_pixels)
        present = [r for r in RANKS if row.get(r)]
        out.append(
            {
                "uid": row["uid"],
                "origin": row["origin"],
                "class": row.get("class"),
                "label_rank": present[-1] if present else None,
                "ranks_present": ",".join(present),
                "has_caption": bool(row.get("caption")),
                "has_common_name": bool(row.get("common_name")),
                "width": width,
                "height": height,
                "mode": mode,
                "error": error,
            }
        )
    return pa.Table.from_pylist(out, schema=FACT_SCHEMA)
