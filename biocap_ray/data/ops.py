"""The data stage's two user-facing operations: ``convert`` and ``inspect``."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

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
    rows = batch.to_pylist()
    for row in rows:
        origin = first.get(row["uid"])
        if origin is not None and row["origin"] != origin and not row["error"]:
            row["error"] = f"duplicate uid {row['uid']!r} (first at {origin})"
    from biocap_ray.data.schema import to_table

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
    good = writers.checked(ds, cfg, dst)
    if to == "webdataset":
        writers.write_webdataset(good, dst, cfg, overwrite=overwrite)
    else:
        writers.write_parquet(good, dst, cfg, overwrite=overwrite)
    errors = writers.read_errors(dst)
    written = sum(1 for _ in storage.list_files(dst, (".tar", ".parquet")))
    return {
        "source": storage.redact(src),
        "destination": storage.redact(dst),
        "format": to,
        "files": written,
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


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def inspect(src: str, cfg: DataConfig, src_format: str | None = None, examples: int = 10) -> Summary:
    """Decode every record once and count: records, errors, ranks, classes, image sizes, duplicates."""
    ds = readers.read_records(src, cfg, src_format)
    facts = ds.map_batches(
        facts_batch, fn_kwargs={"max_pixels": cfg.max_image_pixels}, batch_size=cfg.batch_size,
        num_cpus=cfg.num_cpus_per_task, batch_format="pyarrow",
    )
    s = Summary()
    reasons: Counter = Counter()
    ranks: Counter = Counter()
    label_ranks: Counter = Counter()
    classes: Counter = Counter()
    modes: Counter = Counter()
    uids: Counter = Counter()
    widths: list[int] = []
    heights: list[int] = []
    for batch in facts.iter_batches(batch_format="pyarrow", batch_size=4096):
        for row in batch.to_pylist():
            s.records += 1
            uids[row["uid"]] += 1
            if row["error"]:
                s.errors += 1
                reasons[row["error"].split(":")[0].split(" (")[0]] += 1
                if len(s.error_examples) < examples:
                    s.error_examples.append({k: row[k] for k in ("uid", "origin", "error")})
                continue
            s.ok += 1
            ranks.update(r for r in row["ranks_present"].split(",") if r)
            label_ranks[row["label_rank"] or "none"] += 1
            classes[row["class"] or "unknown"] += 1
            modes[row["mode"]] += 1
            widths.append(row["width"])
            heights.append(row["height"])
            s.with_caption += row["has_caption"]
            s.with_common_name += row["has_common_name"]
    dups = sorted(u for u, n in uids.items() if n > 1)
    s.duplicate_uids = len(dups)
    s.duplicate_examples = dups[:examples]
    s.error_reasons = dict(reasons.most_common())
    s.ranks_present = {r: ranks.get(r, 0) for r in RANKS}
    s.label_ranks = {r: label_ranks[r] for r in (*RANKS, "none") if label_ranks.get(r)}
    s.classes = dict(classes.most_common())
    s.image_modes = dict(modes.most_common())
    s.width, s.height = _spread(widths), _spread(heights)
    return s
