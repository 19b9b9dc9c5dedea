"""The one record schema every reader produces and every writer consumes.

A record is one organism image: ``uid``, encoded ``image`` bytes, the seven ranks, names,
an optional ``caption``, ``source`` (provenance/licence text of the image), ``origin`` (the
file and row or shard member it was read from, for error messages) and ``error`` (null
for a good record; bad input becomes an error row instead of crashing a job).
"""

from __future__ import annotations

import pyarrow as pa

from biocap_ray.data.taxonomy import RANKS, Taxon

STRING_FIELDS: tuple[str, ...] = (
    "uid",
    *RANKS,
    "scientific_name",
    "common_name",
    "caption",
    "source",
    "origin",
    "error",
)
COLUMNS: tuple[str, ...] = ("uid", "image", *STRING_FIELDS[1:])

RECORD_SCHEMA = pa.schema([pa.field("uid", pa.string()), pa.field("image", pa.binary())] + [
    pa.field(name, pa.string()) for name in STRING_FIELDS[1:]
])


def make_record(
    uid: str,
    image: bytes | None,
    taxon: Taxon,
    *,
    scientific_name: str | None = None,
    caption: str | None = None,
    source: str | None = None,
    origin: str | None = None,
    error: str | None = None,
) -> dict:
    """A record dict in schema order; ``scientific_name`` defaults to the taxon's own."""
    rec = {"uid": uid, "image": image, **taxon.ranks()}
    rec["scientific_name"] = scientific_name or taxon.scientific_name
    rec["common_name"] = taxon.common_name
    rec["caption"] = caption or None
    rec["source"] = source
    rec["origin"] = origin
    rec["error"] = error
    return rec


def to_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def conform(table: pa.Table, origin: str) -> pa.Table:
    """Cast a table to the record schema: add missing optional columns as nulls, drop extras.

    ``uid`` and ``image`` are required; a table without them is an error naming ``origin``.
    """
    missing = [c for c in ("uid", "image") if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{origin}: missing required column(s) {', '.join(missing)}; found {', '.join(table.column_names)}"
        )
    cols = []
    for fld in RECORD_SCHEMA:
        if fld.name in table.column_names:
            cols.append(table.column(fld.name).cast(fld.type))
        else:
            cols.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(cols, schema=RECORD_SCHEMA)
