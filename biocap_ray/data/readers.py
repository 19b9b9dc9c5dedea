"""Readers: any supported dataset, local or s3://, as a streaming Ray Dataset of records.

Formats
- ``webdataset``: TreeOfLife-10M-style tar shards (``jpg``/``png``/``webp`` + text-type ``.txt`` keys,
  optional ``json`` metadata and ``caption.txt``);
- ``folder``: a metadata CSV or Parquet (a ``file`` column of image paths relative to it, plus ranks,
  or a single class-name column, as benchmark metadata has: see ``FILE_ALIASES``/``NAME_ALIASES``);
- ``parquet``: Parquet files in the record schema (``uid`` + ``image`` bytes, other columns optional).

Every reader yields :data:`~biocap_ray.data.schema.RECORD_SCHEMA` rows; problems with a single
record (missing image, unreadable metadata, unknown shard key) become error rows, problems
with the dataset as a whole (missing columns, nothing found) raise a clear error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.config import DataConfig
from biocap_ray.data import schema
from biocap_ray.data.taxonomy import RANKS, TEXT_TYPES, Taxon, parse_common_name, parse_taxon_tag

FORMATS = ("webdataset", "folder", "parquet")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_TEXT_KEYS = tuple(f"{t}.txt" for t in TEXT_TYPES)
KNOWN_SHARD_KEYS = frozenset(
    {"__key__", "__url__", "__error__", "json", "caption.txt", "txt", "cls", *IMAGE_KEYS, *_TEXT_KEYS}
)
METADATA_NAMES = ("metadata.csv", "metadata.parquet", "metadata.tsv")
# Other names benchmark metadata uses for the image path and for a single class-name column
FILE_ALIASES = ("filepath", "file_path", "filename", "file_name", "image_path", "path")
NAME_ALIASES = ("classname", "class_name", "label", "species_name", "taxon_name")


def detect_format(uri: str) -> str:
    """Guess the format from the URI: a ``.tar``/``.parquet``/``.csv`` file, or what a folder holds."""
    lower = uri.lower().rstrip("/")
    if lower.endswith(".tar"):
        return "webdataset"
    if lower.endswith((".csv", ".tsv")) or lower.endswith(METADATA_NAMES):
        return "folder"
    if lower.endswith(".parquet"):
        return "parquet"
    names = storage.list_files(uri, (".tar", ".parquet", ".csv", ".tsv"))
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(posixpath.basename(n) in METADATA_NAMES for n in names):
        return "folder"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    raise ValueError(
        f"{storage.redact(uri)}: cannot tell the dataset format (no .tar shards, metadata.csv or .parquet files)"
    )


def read_records(uri: str, cfg: DataConfig, fmt: str | None = None, order: list[int] | None = None):
    """Open ``uri`` as a streaming Ray Dataset in the record schema.

    ``order``: indices into :func:`units` (files, or metadata chunks of a folder), in the order
    to read them; an index may repeat (a training run reads its epochs as one stream).
    """
    fmt = fmt or detect_format(uri)
    readers = {"webdataset": _read_webdataset, "folder": _read_folder, "parquet": _read_parquet}
    if fmt not in readers:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    return bounded_shuffles(small_blocks(readers[fmt](uri, cfg, order)))


BLOCK_BYTES = 16 * 2**20


def small_blocks(ds):
    """``ds`` with blocks of at most about 16 MiB in every operator (Ray's default is 128 MiB).

    A read task merges what it reads up to that size, so with the default a 46 MB shard of
    photos became one block and one decode task, which emitted nothing until 128 MiB of pixels
    (about 900 photos at 224 px) were ready: the first batch came after 3-5 s and the last
    shard decoded on one core while the other idled. At 16 MiB a block holds a few hundred
    photos or about 100 decoded ones (``benchmarks/ingest.py``: the first batch after 2 s,
    throughput up by a tenth)."""
    ds.context.target_max_block_size = BLOCK_BYTES
    return ds


SHUFFLE_BATCH_BYTES = 128 * 2**20


def bounded_shuffles(ds):
    """``ds`` with the map tasks of every hash shuffle downstream of it (joins, group-bys) fed
    about 128 MiB of input at a time. Ray's default is 1 GiB, so on large inputs each such task
    held gigabytes (1.5 GB in a merge of a million records)."""
    ds.context.shuffle_input_batch_bytes = SHUFFLE_BATCH_BYTES
    return ds


def units(uri: str, cfg: DataConfig, fmt: str | None = None) -> tuple[list[str], list[int] | None]:
    """The units a dataset is read in, and their record counts where they cost nothing to know:
    shard files (counts unknown without reading them), Parquet files (counts from their footers)
    or chunks of ``data.batch_size`` rows of a folder's metadata table."""
    fmt = fmt or detect_format(uri)
    if fmt == "webdataset":
        return _shard_paths(uri), None
    if fmt == "parquet":
        fs, _ = storage.resolve(uri)
        paths = _parquet_paths(uri)
        return paths, [pq.read_metadata(p, filesystem=fs).num_rows for p in paths]
    rows = read_metadata(metadata_uri(uri)).num_rows
    sizes = [min(cfg.batch_size, rows - i) for i in range(0, max(rows, 1), cfg.batch_size)]
    return [f"chunk-{i}" for i in range(len(sizes))], sizes


def _task_kwargs(cfg: DataConfig) -> dict:
    return {"batch_size": cfg.batch_size, "num_cpus": cfg.num_cpus_per_task, "batch_format": "pyarrow"}


def count_records(uri: str, fmt: str | None = None) -> int | None:
    """The number of records without reading images (None for shards, which must be read to count)."""
    fmt = fmt or detect_format(uri)
    if fmt == "folder":
        return read_metadata(metadata_uri(uri)).num_rows
    if fmt == "parquet":
        fs, _ = storage.resolve(uri)
        return sum(pq.read_metadata(p, filesystem=fs).num_rows for p in _parquet_paths(uri))
    return None


def file_keys(uri: str, cfg: DataConfig):
    """``uid`` and ``path`` (the file holding it) of every record in shards or Parquet files,
    read without touching an image: what a per-file merge needs to route a caption."""
    import ray

    fmt = detect_format(uri)
    fs, _ = storage.resolve(uri)
    if fmt == "webdataset":
        from biocap_ray.data.shard_reader import ShardSource

        source = ShardSource(_shard_paths(uri), cfg.max_image_bytes, keys_only=True, filesystem=fs)
        keys = ray.data.read_datasource(source, num_cpus=cfg.num_cpus_per_task)
        return keys.map_batches(_keys_as_uids, **_task_kwargs(cfg))
    if fmt == "parquet":
        return ray.data.read_parquet(_parquet_paths(uri), filesystem=fs, columns=["uid"], include_paths=True,
                                     num_cpus=cfg.num_cpus_per_task)
    raise ValueError(f"{storage.redact(uri)}: a {fmt} dataset has no files of records; ingest it into shards first")


def _keys_as_uids(batch: pa.Table) -> pa.Table:
    uids = pc.utf8_trim_whitespace(batch.column("__key__"))
    return pa.table({"uid": uids, "path": batch.column("path")})


def file_records(uri: str, path: str, cfg: DataConfig) -> pa.Table:
    """The records of one shard or Parquet file of ``uri`` (``path`` as :func:`file_keys` names it)."""
    fs, _ = storage.resolve(uri)
    if path.endswith(".tar"):
        from biocap_ray.data.shard_reader import samples

        with fs.open_input_stream(path) as stream:
            return schema.to_table([shard_sample_to_record(s) for s in samples(stream, path, cfg.max_image_bytes)])
    table = pq.read_table(path, filesystem=fs)
    table = table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
    return _parquet_batch_to_records(table, cfg.max_image_bytes)


# --- WebDataset shards -------------------------------------------------------------------------


def _shard_paths(uri: str) -> list[str]:
    paths = storage.list_files(uri, (".tar",))
    if not paths:
        raise FileNotFoundError(f"{storage.redact(uri)}: no .tar shards found")
    return paths


def _read_webdataset(uri: str, cfg: DataConfig, order: list[int] | None = None):
    import ray

    from biocap_ray.data.shard_reader import ShardSource

    fs, _ = storage.resolve(uri)
    paths = _shard_paths(uri)
    paths = [paths[i] for i in order] if order is not None else paths
    # One read task per shard (a shard is read in one pass anyway), its blocks sized by
    # ``small_blocks``, and a record parser that takes them whole: it then fuses with the stage's
    # maps after it (split, decode) into one operator, which no longer re-batches the parser's
    # output. Ray Data would fuse the read too if every map took whole blocks, but its tasks would
    # then be whole shards, decoded far ahead of their consumer (see ``train.ingest``).
    source = ShardSource(paths, cfg.max_image_bytes, samples_per_block=cfg.batch_size, filesystem=fs)
    ds = ray.data.read_datasource(source, num_cpus=cfg.num_cpus_per_task, override_num_blocks=len(paths))
    return ds.map_batches(_shard_batch_to_records, **{**_task_kwargs(cfg), "batch_size": None})


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip() or None
    return str(value).strip() or None


def shard_sample_to_record(sample: dict) -> dict:
    """One WebDataset sample (key → bytes) as a record; unknown keys make it an error row."""
    sample = {k: None if isinstance(v, float) and v != v else v for k, v in sample.items()}  # NaN → None
    key = _text(sample.get("__key__")) or ""
    shard = _text(sample.get("path") or sample.get("__url__")) or "?"
    origin = f"{shard}#{key}"
    present = {k for k, v in sample.items() if v is not None and k not in ("path",)}
    unknown = sorted(present - KNOWN_SHARD_KEYS)
    image = next((sample[k] for k in IMAGE_KEYS if sample.get(k) is not None), None)
    meta: dict = {}
    error = None
    if sample.get("json") is not None:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            error = f"field 'json': not valid JSON ({exc})"
    if sample.get("__error__"):
        error = sample["__error__"]
    elif unknown:
        error = f"unknown key(s) {', '.join(repr(u) for u in unknown)} (known: image, *.txt text types, json)"
    elif image is None:
        error = "no image (expected one of the keys: " + ", ".join(IMAGE_KEYS) + ")"
    if meta:
        taxon = Taxon.from_mapping(meta)
    else:
        ranks: dict = {}
        tag = _text(sample.get("taxonTag.txt")) or _text(sample.get("taxonTag_com.txt"))
        if tag:
            ranks = parse_taxon_tag(tag)
        sci = _text(sample.get("sci.txt"))
        com = _text(sample.get("com.txt"))
        if not ranks and sci:
            ranks = {"scientific_name": sci.removeprefix("a photo of ").rstrip(".")}
        if com and sci:
            ranks["common_name"] = parse_common_name(com, sci)
        taxon = Taxon.from_mapping(ranks)
    return schema.make_record(
        key,
        image,
        taxon,
        scientific_name=meta.get("scientific_name"),
        caption=_text(sample.get("caption.txt")) or meta.get("caption"),
        source=meta.get("source"),
        origin=origin,
        error=error,
    )


def _shard_batch_to_records(batch: pa.Table) -> pa.Table:
    return schema.to_table([shard_sample_to_record(row) for row in batch.to_pylist()])


# --- image folder + metadata table -------------------------------------------------------------


MAX_METADATA_BYTES = 4 * 2**30  # a 10M-row CSV is 1-2 GB; the driver reads the table whole


def read_metadata(uri: str, max_bytes: int = MAX_METADATA_BYTES) -> pa.Table:
    """The metadata table (CSV/TSV/Parquet) with every column as string, ``uid``/``origin`` added.

    A missing ``file`` column, or no taxonomy columns at all, is an error naming the file, and so
    is a file over ``max_bytes`` (read no further than that: the driver holds the table).
    Duplicate uids are kept but marked in ``error`` (every occurrence after the first).
    """
    fs, path = storage.resolve(uri)
    shown = storage.redact(uri)
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{shown}: metadata file over the limit of {max_bytes:,} bytes, which the driver reads "
                         "whole; split the dataset into several folders, or give its records as Parquet files")
    try:
        if path.endswith(".parquet"):
            table = pq.read_table(pa.BufferReader(data))
            table = pa.table({n: table.column(n).cast(pa.string()) for n in table.column_names})
        else:
            delimiter = "\t" if path.endswith(".tsv") else ","
            header = next(csv.reader(io.StringIO(data.split(b"\n", 1)[0].decode("utf-8-sig"))), [])
            table = pacsv.read_csv(
                pa.BufferReader(data),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in header}, strings_can_be_null=True
                ),
            )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise ValueError(f"{shown}: cannot parse metadata: {exc}") from None
    table = _rename_first(table, FILE_ALIASES, "file")
    table = _rename_first(table, NAME_ALIASES, "scientific_name")
    if "file" not in table.column_names:
        raise ValueError(f"{shown}: missing column 'file' (image path); found {', '.join(table.column_names)}")
    if not any(c in table.column_names for c in (*RANKS, "scientific_name")):
        raise ValueError(
            f"{shown}: no taxonomy columns; need some of {', '.join((*RANKS, 'scientific_name', *NAME_ALIASES))}"
        )
    if "uid" not in table.column_names:
        stems = [posixpath.splitext(posixpath.basename(f or ""))[0] for f in table.column("file").to_pylist()]
        table = table.append_column("uid", pa.array(stems, pa.string()))
    base = posixpath.basename(path)
    origins = [f"{base} data row {i + 1}" for i in range(table.num_rows)]
    table = table.append_column("origin", pa.array(origins, pa.string()))
    table = _mark_duplicates(table)
    # rows of one class together: the caption prompt's static part then repeats back to back
    order = [c for c in ("class", "order", "family", "genus", "species") if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in order]) if order else table


def _rename_first(table: pa.Table, aliases: tuple[str, ...], name: str) -> pa.Table:
    """Use the first alias present as ``name`` when ``name`` itself is absent."""
    if name in table.column_names:
        return table
    found = next((a for a in aliases if a in table.column_names), None)
    if found is None:
        return table
    return table.rename_columns([name if c == found else c for c in table.column_names])


def _mark_duplicates(table: pa.Table) -> pa.Table:
    from biocap_ray.data.validate import duplicate_error

    uids, origins = table.column("uid").to_pylist(), table.column("origin").to_pylist()
    first: dict[str, str] = {}
    for uid, origin in zip(uids, origins):
        first.setdefault(uid, origin)  # the first row in the table's order
    errors = ["empty uid" if not uid else duplicate_error(uid, origin, first) for uid, origin in zip(uids, origins)]
    return table.append_column("metadata_error", pa.array(errors, pa.string()))


def metadata_uri(uri: str) -> str:
    if uri.lower().rstrip("/").endswith((".csv", ".tsv", ".parquet")):
        return uri
    found = [n for n in METADATA_NAMES if storage.exists(storage.join(uri, n))]
    if not found:
        raise FileNotFoundError(f"{storage.redact(uri)}: no {' / '.join(METADATA_NAMES)} in this folder")
    return storage.join(uri, found[0])


def _read_folder(uri: str, cfg: DataConfig, order: list[int] | None = None):
    import ray

    meta_uri = metadata_uri(uri)
    table = read_metadata(meta_uri)
    root = meta_uri.rsplit("/", 1)[0]
    chunks = [ray.put(table.slice(i, cfg.batch_size)) for i in range(0, max(table.num_rows, 1), cfg.batch_size)]
    ds = ray.data.from_arrow_refs([chunks[i] for i in order] if order is not None else chunks)
    return ds.map_batches(_attach_folder_images, fn_kwargs={"root": root, "max_bytes": cfg.max_image_bytes},
                          **_task_kwargs(cfg))


def inside(root_path: str, rel: str, real_root: str | None) -> str:
    """The path of image ``rel`` under ``root_path``; ValueError (naming why) when ``rel`` is
    absolute, a URI, or leaves the dataset's folder by ``..`` or, locally (``real_root``: the
    folder with its symlinks resolved), by a symlink: a metadata file must not make a job read
    (and publish into shards) files beside its dataset."""
    if rel.startswith(("/", "\\")) or "://" in rel or rel[1:3] in (":/", ":\\"):
        raise ValueError(f"field 'file' {rel!r} is an absolute path; paths are relative to the metadata file")
    path = posixpath.normpath(posixpath.join(root_path, rel))
    if path != root_path and not path.startswith(root_path.rstrip("/") + "/"):
        raise ValueError(f"field 'file' {rel!r} leaves the dataset's folder")
    if real_root is not None:
        path = os.path.realpath(path)  # the file opened is the one checked
        if not path.startswith(real_root.rstrip("/") + "/"):
            raise ValueError(f"field 'file' {rel!r} is a symlink out of the dataset's folder")
    return path


def read_image_file(fs, path: str, shown: str, max_bytes: int) -> bytes:
    """An image file's bytes, reading at most ``max_bytes`` + 1 of them."""
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"image file {shown!r} is over the limit of {max_bytes:,} bytes (data.max_image_bytes)")
    return data


def _attach_folder_images(batch: pa.Table, root: str, max_bytes: int) -> pa.Table:
    """Attach image bytes to metadata rows; a missing, oversized or out-of-folder image file
    becomes an error row."""
    fs, root_path = storage.resolve(root)
    real_root = None if storage.is_s3(root) else os.path.realpath(root_path)  # once per batch, not per row
    records = []
    for row in batch.to_pylist():
        error = row.get("metadata_error")
        image = None
        rel = row.get("file")
        if not error:
            if not rel:
                error = "field 'file' is empty"
            else:
                try:
                    image = read_image_file(fs, inside(root_path, rel, real_root), rel, max_bytes)
                except ValueError as exc:
                    error = str(exc)
                except OSError as exc:
                    error = f"image file {rel!r} unreadable: {storage.redact(str(exc))}"
        records.append(
            schema.make_record(
                row["uid"] or "",
                image,
                Taxon.from_mapping(row),
                scientific_name=row.get("scientific_name"),
                caption=row.get("caption"),
                source=row.get("source"),
                origin=row["origin"],
                error=error,
            )
        )
    return schema.to_table(records)


# --- Parquet with image bytes ------------------------------------------------------------------


def _parquet_paths(uri: str) -> list[str]:
    paths = storage.list_files(uri, (".parquet",))
    if not paths:
        raise FileNotFoundError(f"{storage.redact(uri)}: no .parquet files found")
    return paths


def _read_parquet(uri: str, cfg: DataConfig, order: list[int] | None = None):
    import ray

    fs, _ = storage.resolve(uri)
    paths = _parquet_paths(uri)
    first = pq.read_schema(paths[0], filesystem=fs)
    missing = [c for c in ("uid", "image") if c not in first.names]
    if missing:
        raise ValueError(f"{paths[0]}: missing required column(s) {', '.join(missing)}; found {', '.join(first.names)}")
    ds = ray.data.read_parquet([paths[i] for i in order] if order is not None else paths, filesystem=fs,
                               include_paths=True, num_cpus=cfg.num_cpus_per_task)
    return ds.map_batches(_parquet_batch_to_records, fn_kwargs={"max_bytes": cfg.max_image_bytes},
                          **_task_kwargs(cfg))


def _parquet_batch_to_records(batch: pa.Table, max_bytes: int) -> pa.Table:
    if "origin" not in batch.column_names or pc.all(pc.is_null(batch.column("origin"))).as_py():
        paths = batch.column("path") if "path" in batch.column_names else pa.nulls(batch.num_rows, pa.string())
        batch = batch.drop_columns([c for c in ("origin",) if c in batch.column_names])
        batch = batch.append_column("origin", pc.cast(paths, pa.string()))
    image = batch.column("image")
    if pa.types.is_struct(image.type):  # Hugging Face datasets style {bytes, path}
        batch = batch.set_column(batch.column_names.index("image"), "image", pc.struct_field(image, "bytes"))
    return _without_oversized_images(schema.conform(batch, origin="parquet batch"), max_bytes)


def _without_oversized_images(records: pa.Table, max_bytes: int) -> pa.Table:
    """Records whose image is over ``max_bytes`` become error rows, their bytes dropped."""
    over = pc.fill_null(pc.greater(pc.binary_length(records.column("image")), max_bytes), False)
    if not pc.any(over).as_py():
        return records
    message = f"image is over the limit of {max_bytes:,} bytes (data.max_image_bytes)"
    error = pc.if_else(over, pc.coalesce(records.column("error"), pa.scalar(message)), records.column("error"))
    image = pc.if_else(over, pa.scalar(None, records.schema.field("image").type), records.column("image"))
    records = records.set_column(records.column_names.index("error"), "error", error)
    return records.set_column(records.column_names.index("image"), "image", image)
