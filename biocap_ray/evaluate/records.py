"""What an evaluation scores, read the same way by the evaluation job and by validation during
training: the labelled records (all, or a run's held-out uids), their label columns, and extra
candidate taxa from a taxonomy file."""

from __future__ import annotations

from biocap_ray.config import DataConfig
from biocap_ray.data import readers
from biocap_ray.data.split import keep_split
from biocap_ray.data.taxonomy import RANKS, read_taxon_list

LABEL_COLUMNS = ("uid", *RANKS, "scientific_name", "common_name", "caption")


def read_split(uri: str, data: DataConfig, held_out_fraction: float | None = None):
    """The records to evaluate: all of them, or only the uids a training run held out."""
    ds = readers.read_records(uri, data)
    if held_out_fraction:
        ds = keep_split(ds, held_out_fraction, held_out=True, num_cpus=data.num_cpus_per_task)
    return ds


def label_rows(uri: str, data: DataConfig, held_out_fraction: float | None = None) -> list[dict]:
    """The label columns of every good record (cheap for folder + metadata; one read otherwise)."""
    columns = [c for c in LABEL_COLUMNS if c != "caption"]
    ds = read_split(uri, data, held_out_fraction).filter(lambda r: not r["error"], num_cpus=data.num_cpus_per_task)
    return ds.select_columns(columns).take_all()


def taxonomy_rows(uri: str | None) -> list[dict]:
    """Extra candidate taxa from a taxon list (e.g. a benchmark's label set)."""
    return read_taxon_list(uri) if uri else []
