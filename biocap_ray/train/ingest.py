"""Streaming training ingest: records → augmented image tensors + tokenised texts, on CPU
Ray Data actors or tasks (so GPU workers only train), fed to workers with ``iter_torch_batches``."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from biocap_ray.config import TrainConfig
from biocap_ray.data.images import load_rgb
from biocap_ray.data.split import keep_split
from biocap_ray.data.taxonomy import Taxon
from biocap_ray.models.clip import image_size, tools_for
from biocap_ray.train.objective import TEXT_CHOICES


def training_rows(batch: pa.Table, model: str, fallback: str, max_pixels: int, is_train: bool = True) -> dict:
    """Decode (the data layer's safe decoder) + augment with open_clip's transforms; tokenise every
    text type (caption last). JPEGs are decoded no larger than the model needs (both sides at least
    its input size, so random crops keep their full resolution)."""
    transform, tokenizer = tools_for(model, is_train)
    size = image_size(model)
    images, texts, has_caption, uids = [], [], [], []
    for row in batch.to_pylist():
        if row.get("error"):
            continue
        taxon = Taxon.from_mapping(row)
        images.append(transform(load_rgb(row["image"], max_pixels, draft=size)).numpy())
        caption = row.get("caption")
        texts.extend([taxon.text(t) for t in TEXT_CHOICES[:-1]] + [caption or taxon.text(fallback)])
        has_caption.append(bool(caption))
        uids.append(row["uid"])
    if not uids:  # a batch of error rows only: empty, but shaped like the others so batches concatenate
        context = tokenizer.context_length
        return {"image": np.zeros((0, 3, size, size), np.float32),
                "tokens": np.zeros((0, len(TEXT_CHOICES), context), np.int64), "has_caption": np.zeros(0, bool)}
    tokens = tokenizer(texts).numpy().reshape(len(uids), len(TEXT_CHOICES), -1)
    return {"image": np.stack(images).astype(np.float32, copy=False), "tokens": tokens.astype(np.int64),
            "has_caption": np.array(has_caption)}


class TrainingRows:
    """``training_rows`` in a long-lived Ray Data actor that loads its tools once at start.

    Importing torch and open_clip and loading the tokenizer costs about 6 CPU-seconds per process
    against about 2 ms per image after it. As plain tasks, whose worker processes Ray recycles
    on a busy node, that start-up was most of the ingest's CPU and came out of training.

    The actor runs at the lowest CPU priority. Where it shares cores with the trainers, it then
    takes what they leave, rather than preempt one of them and hold up every synchronised DDP
    step; when the trainers wait for data, their cores are free for it. (Ray starts every worker
    at nice 15, the trainers too.)
    """

    NICENESS = 19  # the lowest

    def __init__(self, **kwargs):
        lower_priority(self.NICENESS)
        self.kwargs = kwargs
        tools_for(kwargs["model"], True)

    def __call__(self, batch: pa.Table) -> dict:
        return training_rows(batch, **self.kwargs)


def lower_priority(niceness: int) -> None:
    """Set this process's nice value: on Linux each thread has its own, so every thread's (those
    Ray started already too), elsewhere the process's."""
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
        except ProcessLookupError:  # a thread that has ended since
            pass


def training_dataset(src: str, cfg, order: list[int] | None = None):
    """The Ray Dataset a training run consumes (without the held-out validation uids), reading
    the units of ``src`` in ``order`` (see ``train.order``: every epoch, one stream). Parsing
    the records, the split and decoding fuse into one operator, on :class:`TrainingRows` actors
    unless ``train.data_actors`` is 0, in batches of ``data.batch_size``.

    The read stays an operator of its own. Fused with the decode (possible: see ``readers``),
    each task would be a whole shard, so the decode ran up to a shard ahead of training on the
    trainers' CPUs: 0.56 of the plain loop's samples/s against 0.80 (``benchmarks/train.py``)."""
    from ray.data import ActorPoolStrategy

    from biocap_ray.data import readers

    t = cfg.train
    ds = readers.read_records(src, cfg.data, order=order)
    if t.val_fraction and not t.val_data:
        ds = keep_split(ds, t.val_fraction, held_out=False, num_cpus=cfg.data.num_cpus_per_task)
    kwargs = {"model": t.model, "fallback": t.caption_fallback, "max_pixels": cfg.data.max_image_pixels}
    common = {"batch_format": "pyarrow", "batch_size": cfg.data.batch_size, "num_cpus": cfg.data.num_cpus_per_task}
    if t.data_actors == 0:  # plain tasks: no actor start-up, for runs that last seconds
        return ds.map_batches(training_rows, fn_kwargs=kwargs, **common)
    return ds.map_batches(TrainingRows, fn_constructor_kwargs=kwargs,
                          compute=ActorPoolStrategy(min_size=1, max_size=t.data_actors), **common)


def batch_options(t: TrainConfig, rank: int, start_step: int) -> dict:
    """How a worker iterates its shard: whole batches, mixed in a local shuffle buffer seeded by
    (seed, rank, the step the run (re)started at), so a resumed run is reproducible too."""
    return {"batch_size": t.batch_size, "prefetch_batches": t.prefetch_batches, "drop_last": True,
            "local_shuffle_buffer_size": t.shuffle_buffer or None,
            "local_shuffle_seed": int(np.random.SeedSequence([t.seed, rank, start_step]).generate_state(1)[0])}
