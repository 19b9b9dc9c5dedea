"""The order training reads its data in: every epoch a new permutation of the units, rows mixed
in each worker's shuffle buffer, and a resumed run's plan starting at its checkpoint."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from biocap_ray.config import load_config
from biocap_ray.data import readers
from biocap_ray.data.ops import convert
from biocap_ray.train.ingest import batch_options
from biocap_ray.train.order import epoch_permutation, plan, unit_counts

pytestmark = pytest.mark.usefixtures("ray_local")

CLASSES = ("Aves", "Mammalia", "Insecta", "Reptilia")


def class_sorted_shards(root: Path, per_class: int = 24) -> Path:
    """Shards written from a class-sorted folder: each shard holds a single class."""
    folder = root / "folder"
    (folder / "images").mkdir(parents=True)
    rows = []
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            name = f"images/{cls}_{i}.jpg"
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (40 * c, 5 * i, 90)).save(buf, format="JPEG")
            (folder / name).write_bytes(buf.getvalue())
            rows.append({"file": name, "kingdom": "Animalia", "class": cls, "genus": f"G{c}", "species": f"s{i}"})
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = load_config("local", ["data.samples_per_shard=8", "data.batch_size=8"])
    convert(str(folder), str(root / "shards"), cfg.data)
    return root / "shards"


def _classes_per_batch(src: Path, cfg, order, options: dict) -> list[list[str]]:
    ds = readers.read_records(str(src), cfg.data, order=order).select_columns(["uid", "class"])
    return [list(b["class"]) for b in ds.iter_batches(batch_format="numpy", **options)]


def test_batches_from_a_class_sorted_dataset_mix_classes_and_epochs_differ(tmp_path):
    shards = class_sorted_shards(tmp_path)
    cfg = load_config("local", ["data.samples_per_shard=8", "data.batch_size=8", "train.batch_size=8",
                                "train.shuffle_buffer=32", "train.val_fraction=0"])
    units, counts = unit_counts(str(shards), cfg, str(tmp_path / "cache"))
    assert len(units) == 12 and counts == [8] * 12
    # each shard is a single class: read in file order without the buffer, every batch is one class
    plain = _classes_per_batch(shards, cfg, None, {"batch_size": 8})
    assert all(len(set(b)) == 1 for b in plain)

    order, skipped = plan(counts, cfg.train.seed, 2, 0)
    assert skipped == 0 and sorted(order) == sorted(list(range(12)) * 2)
    assert order[:12] != order[12:]  # a new permutation each epoch
    assert list(epoch_permutation(12, 0, 1)) == order[12:]  # a pure function of (seed, epoch)
    options = {k: v for k, v in batch_options(cfg.train, rank=0, start_step=0).items() if k != "prefetch_batches"}
    mixed = _classes_per_batch(shards, cfg, order, options)
    assert len(mixed) == 24
    assert sum(len(set(b)) > 1 for b in mixed) >= 20, mixed

    ds = readers.read_records(str(shards), cfg.data, order=order).select_columns(["uid"])
    uids = [u for b in ds.iter_batches(batch_format="numpy", **options) for u in b["uid"]]
    first, second = uids[:96], uids[96:]
    assert len(set(uids)) == 96 and first != second  # every record in the stream of each epoch


def test_a_resumed_plan_drops_the_units_wholly_before_its_position():
    counts = [5, 7, 3, 9, 4]
    full, none = plan(counts, seed=3, epochs=2, skip_records=0)
    assert none == 0 and len(full) == 10
    for position in (0, 4, 5, 12, 28, 30, 40):
        order, skipped = plan(counts, seed=3, epochs=2, skip_records=position)
        assert full[len(full) - len(order):] == order  # a suffix of the full plan
        ends = [sum(counts[u] for u in full[: i + 1]) for i in range(len(full))]
        dropped = len(full) - len(order)
        assert skipped == (ends[dropped - 1] if dropped else 0) <= position
        assert dropped == len(full) or ends[dropped] > position  # the first unit read contains it
