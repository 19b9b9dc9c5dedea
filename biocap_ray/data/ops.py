"""The data stage's two user-facing operations: ``convert`` and ``inspect``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from biocap_ray import storage
from biocap_ray.config import DataConfig
from biocap_ray.data import readers, writers
from biocap_ray.data.taxonomy import RANKS
from biocap_ray.data.validate import facts_batch

OUTPUT_FORMATS = ("webdataset", "parquet")


def first_occurrences_of_duplicates(ds) -> dict[str, str]:
    """uid → origin of its first occurrence, for uids that occur more than once.

    Only the uid and origin columns travel through the shuffle, never image bytes; the
    first occurrence is the one with the smallest origin, so the choice is deterministic.
    """
    from ray.data.aggregate import Count, Min

    grouped = ds.select_columns(["uid", "origin"]).groupby("uid").aggregate(Count(), Min("origin"))
    return {r["uid"]: r["min(origin)"] for r in grouped.iter_rows() if r["count()"] > 1}


def _mark_duplicates(batch: pa.Table, first: dict[str, str]) -> pa.Table:
    from biocap_ray.data.schema import to_table
    from biocap_ray.data.validate import duplicate_error

    rows = batch.to_pylist()
    for row in rows:
        if not row["error"]:
            row["error"] = duplicate_error(row["uid"], row["origin"], first)

    return to_table(rows)


def convert(
    src: str,
    dst: str,
    cfg: DataConfig,
    to: str = "webdataset",
    src_format: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Read ``src`` in any format, validate every image, write ``dst`` as shards or Parquet.

    Returns counts of records written and error rows recorded under ``dst/_errors``.
    """
    if to not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {to!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    fmt = src_format or readers.detect_format(src)
    ds = readers.read_records(src, cfg, fmt)
    if cfg.check_duplicates and fmt != "folder":  # the folder reader marks duplicates itself
        first = first_occurrences_of_duplicates(ds)
        if first:
            ds = ds.map_batches(
                _mark_duplicates, fn_kwargs={"first": first}, batch_size=cfg.batch_size,
                num_cpus=cfg.num_cpus_per_task, batch_format="pyarrow",
            )
    if overwrite:  # error rows from an earlier run go too
        storage.remove_tree(dst)
    good = writers.checked(ds, cfg, dst)
    write = writers.write_webdataset if to == "webdataset" else writers.write_parquet
    records = write(good, dst, cfg, overwrite=overwrite)
    errors = writers.read_errors(dst)
    written = sum(1 for _ in storage.list_files(dst, (".tar", ".parquet")))
    return {
        "source": storage.redact(src),
        "destination": storage.redact(dst),
        "format": to,
        "files": written,
        "records": records,
        "errors": errors.num_rows,
    }


@dataclass
class Summary:
    """What ``inspect`` reports about a dataset."""

    records: int = 0
    ok: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    error_examples: list[dict] = field(default_factory=list)
    duplicate_uids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    ranks_present: dict[str, int] = field(default_factory=dict)
    label_ranks: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    with_caption: int = 0
    with_common_name: int = 0
    image_modes: dict[str, int] = field(default_factory=dict)
    width: dict[str, float] = field(default_factory=dict)
    height: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"records          {self.records}",
            f"ok               {self.ok}",
            f"errors           {self.errors}  {self.error_reasons or ''}",
            f"duplicate uids   {self.duplicate_uids}",
            f"with caption     {self.with_caption}",
            f"with common name {self.with_common_name}",
            "ranks present    " + "  ".join(f"{r}={self.ranks_present.get(r, 0)}" for r in RANKS),
            "labelled to      " + "  ".join(f"{r}={n}" for r, n in self.label_ranks.items()),
            f"classes ({len(self.classes)})      "
            + ", ".join(f"{c} {n}" for c, n in list(self.classes.items())[:10])
            + (" ..." if len(self.classes) > 10 else ""),
            f"image modes      {self.image_modes}",
            f"width  px        {self.width}",
            f"height px        {self.height}",
        ]
        for ex in self.error_examples:
            lines.append(f"  error: {ex['origin']} uid={ex['uid']}: {ex['error']}")
        return "\n".join(lines)


def _fact_counts(batch: pa.Table) -> pa.Table:
    """One row of counts per batch of facts; summed over the dataset by a Ray aggregate."""
    ok = batch.filter(pc.is_null(batch.column("error")))
    present = pc.fill_null(ok.column("ranks_present"), "")
    row = {"records": batch.num_rows, "ok": ok.num_rows,
           "with_caption": int(pc.sum(ok.column("has_caption")).as_py() or 0),
           "with_common_name": int(pc.sum(ok.column("has_common_name")).as_py() or 0),
           **{f"rank_{r}": int(pc.sum(pc.match_substring(present, r)).as_py() or 0) for r in RANKS}}
    return pa.table({k: [v] for k, v in row.items()})


def _reason(batch: pa.Table) -> pa.Table:
    """Error rows with their reason: the message up to its first detail."""
    errors = batch.filter(pc.is_valid(batch.column("error")))
    reasons = [e.split(":")[0].split(" (")[0] for e in errors.column("error").to_pylist()]
    return errors.select(["uid", "origin", "error"]).append_column("reason", pa.array(reasons, pa.string()))


def value_counts(ds, column: str, parts: int = 8) -> dict[str, int]:
    """Rows per value of ``column`` (null as "none"), most frequent first, ties by value: a Ray Data
    group-by, one row per value, whose order varies from run to run."""
    rows = ds.groupby(column, num_partitions=parts).count().take_all()
    return dict(sorted(((r[column] or "none", int(r["count()"])) for r in rows), key=lambda kv: (-kv[1], kv[0])))


def inspect(src: str, cfg: DataConfig, src_format: str | None = None, examples: int = 10) -> Summary:
    """Decode every record once and count: records, errors, ranks, classes, image sizes, duplicates.

    Every count is a Ray Data aggregate or group-by over a small per-record row of facts kept in
    the object store; the driver receives totals, one row per distinct value and a few examples.
    """
    from ray.data.aggregate import Max, Mean, Min, Sum
    from ray.data.expressions import col

    ds = readers.read_records(src, cfg, src_format)
    facts = ds.map_batches(
        facts_batch, fn_kwargs={"max_pixels": cfg.max_image_pixels}, batch_size=cfg.batch_size,
        num_cpus=cfg.num_cpus_per_task, batch_format="pyarrow",
    ).materialize()
    counted = ("records", "ok", "with_caption", "with_common_name", *(f"rank_{r}" for r in RANKS))
    totals = facts.map_batches(_fact_counts, batch_format="pyarrow").aggregate(*(Sum(c) for c in counted))
    totals = {k[len("sum("):-1]: int(v or 0) for k, v in totals.items()}
    s = Summary(records=totals["records"], ok=totals["ok"], errors=totals["records"] - totals["ok"],
                with_caption=totals["with_caption"], with_common_name=totals["with_common_name"])
    s.ranks_present = {r: totals[f"rank_{r}"] for r in RANKS}
    if s.errors:
        errors = facts.map_batches(_reason, batch_format="pyarrow")
        s.error_reasons = value_counts(errors, "reason")
        s.error_examples = [{k: r[k] for k in ("uid", "origin", "error")} for r in errors.take(examples)]
    dups = facts.select_columns(["uid"]).groupby("uid", num_partitions=8).count().filter(expr=col("count()") > 1)
    dups = dups.materialize()
    s.duplicate_uids = int(dups.count())
    s.duplicate_examples = sorted(r["uid"] for r in dups.take(examples))
    if s.ok:
        good = facts.filter(expr=col("error").is_null())
        labels = value_counts(good, "label_rank")
        s.label_ranks = {r: labels[r] for r in (*RANKS, "none") if labels.get(r)}
        s.classes = value_counts(good, "class")
        s.image_modes = value_counts(good, "mode")
        size = good.aggregate(*(agg(c) for c in ("width", "height") for agg in (Min, Mean, Max)))
        s.width, s.height = ({k: round(size[f"{k}({c})"], 1) for k in ("min", "mean", "max")} for c in ("width", "height"))
    return s
