"""Streaming training ingest: records → augmented image tensors + tokenised texts, on CPU
Ray Data tasks (so GPU workers only train), fed to workers with ``iter_torch_batches``."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from biocap_ray.data.images import load_rgb
from biocap_ray.data.taxonomy import Taxon
from biocap_ray.train.objective import TEXT_CHOICES


@functools.lru_cache(maxsize=2)
def _tools(model: str, is_train: bool):
    import open_clip

    from biocap_ray.train.model import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model!r}")
    size = cfg["vision_cfg"]["image_size"]
    transform = open_clip.image_transform(size, is_train=is_train)
    return transform, open_clip.get_tokenizer(model)


def training_rows(batch: pa.Table, model: str, fallback: str, max_pixels: int, is_train: bool = True) -> dict:
    """Decode (the data layer's safe decoder) + augment with open_clip's transforms; tokenise every
    text type (caption last)."""
    transform, tokenizer = _tools(model, is_train)
    images, texts, has_caption, uids = [], [], [], []
    for row in batch.to_pylist():
        if row.get("error"):
            continue
        taxon = Taxon.from_mapping(row)
        images.append(transform(load_rgb(row["image"], max_pixels)).numpy())
        caption = row.get("caption")
        texts.extend([taxon.text(t) for t in TEXT_CHOICES[:-1]] + [caption or taxon.text(fallback)])
        has_caption.append(bool(caption))
        uids.append(row["uid"])
    if not uids:  # a batch of error rows only
        return {"image": np.zeros((0, 3, 1, 1), np.float32), "tokens": np.zeros((0, len(TEXT_CHOICES), 1), np.int64),
                "has_caption": np.zeros(0, bool)}
    tokens = tokenizer(texts).numpy().reshape(len(uids), len(TEXT_CHOICES), -1)
    return {"image": np.stack(images).astype(np.float32), "tokens": tokens.astype(np.int64),
            "has_caption": np.array(has_caption)}


def training_dataset(src: str, cfg, is_train: bool = True):
    """The Ray Dataset a training (or validation) run consumes."""
    from biocap_ray.data import readers

    t = cfg.train
    return readers.read_records(src, cfg.data).map_batches(
        training_rows,
        fn_kwargs={"model": t.model, "fallback": t.caption_fallback, "max_pixels": cfg.data.max_image_pixels,
                   "is_train": is_train},
        batch_format="pyarrow", batch_size=cfg.data.batch_size, num_cpus=t.data_cpus_per_task,
    )
