"""Zero-shot validation during training, on a held-out split or a separate labelled set.

Runs at every checkpoint on all workers: each ranks the candidate classes for its shard of
the validation set, the predictions are gathered, and every rank scores them the way the
evaluation stage does (so the checkpoint Ray Train keeps as best is the one ``evaluate``
would rank best).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from biocap_ray.data.images import ImageError, load_rgb
from biocap_ray.evaluate.classes import ClassSet, truth_taxon
from biocap_ray.evaluate.embed import zero_shot_weights
from biocap_ray.evaluate.metrics import TOPK, zero_shot_metrics
from biocap_ray.evaluate.records import label_rows, read_split, taxonomy_rows
from biocap_ray.models.clip import image_size, tools_for


def validation_rows(batch: pa.Table, model: str, max_pixels: int, classes: ClassSet, rank: str) -> dict:
    """Eval-transformed images and the class id of each label; unreadable or unlabelled
    records are left out (the evaluation stage reports them)."""
    transform, _ = tools_for(model, False)
    images, truth = [], []
    for row in batch.to_pylist():
        taxon = truth_taxon(row, rank)
        if row.get("error") or taxon.label_rank is None:
            continue
        try:
            images.append(transform(load_rgb(row["image"], max_pixels)).numpy())
        except ImageError:
            continue
        truth.append(classes.index(taxon))
    size = image_size(model)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size))
    return {"image": stacked.astype(np.float32), "truth": np.array(truth, np.int64)}


def validation_dataset(src: str, cfg, classes: ClassSet):
    """``train.val_data``, else the uids of ``src`` that ``train.val_fraction`` holds out."""
    t, e = cfg.train, cfg.evaluate
    ds = read_split(t.val_data or src, cfg.data, None if t.val_data else t.val_fraction)
    return ds.map_batches(
        validation_rows,
        fn_kwargs={"model": t.model, "max_pixels": cfg.data.max_image_pixels, "classes": classes, "rank": e.rank},
        batch_format="pyarrow", batch_size=cfg.data.batch_size, num_cpus=cfg.data.num_cpus_per_task,
    )


def validation_classes(src: str, cfg) -> ClassSet:
    """Candidate classes: the taxa of the validation records (plus ``evaluate.taxonomy_uri``)."""
    t, e = cfg.train, cfg.evaluate
    rows = label_rows(t.val_data or src, cfg.data, None if t.val_data else t.val_fraction)
    if not rows:
        raise ValueError(f"the validation split of {src} is empty: raise train.val_fraction or set train.val_data")
    return ClassSet.build(rows, e.text_type, e.rank, extra=taxonomy_rows(e.taxonomy_uri))


@torch.no_grad()
def validate(model, shard, classes: ClassSet, cfg, device) -> dict[str, float]:
    """``val_*`` zero-shot metrics of ``model`` (the bare :class:`BioCAPModel`) over all ranks' shards."""
    import torch.distributed as dist

    was_training = model.training
    model.eval()
    _, tokenizer = tools_for(cfg.train.model, False)
    weights = zero_shot_weights(model, tokenizer, classes.names, cfg.evaluate.templates, device)
    k = min(max(TOPK), len(classes))
    topk, truth = [], []
    for batch in shard.iter_torch_batches(batch_size=cfg.data.batch_size, device=device):
        features = model.image_features(batch["image"], "label")
        topk.append((features @ weights.to(features.dtype)).topk(k, dim=-1).indices.cpu().numpy())
        truth.append(batch["truth"].cpu().numpy())
    mine = (np.concatenate(topk) if topk else np.zeros((0, k), np.int64),
            np.concatenate(truth) if truth else np.zeros(0, np.int64))
    parts = [mine]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
    model.train(was_training)
    all_topk = np.concatenate([p[0] for p in parts])
    all_truth = [classes.taxa[i] for p in parts for i in p[1]]
    if not all_truth:
        return {}
    return {f"val_{k}": v for k, v in zero_shot_metrics(all_truth, all_topk, classes.taxa, TOPK).items()}
