"""The end-to-end pipeline: each stage's outputs are the next stage's inputs, and a stage
whose outputs already exist is skipped (re-running resumes)."""

from __future__ import annotations

import logging

from biocap_ray import storage
from biocap_ray.config import Config

log = logging.getLogger(__name__)


def run_pipeline(cfg: Config, input_uri: str, output_uri: str, overwrite: bool = False) -> dict:
    """Ingest ``input_uri`` into WebDataset shards under ``output_uri`` and inspect them."""
    from biocap_ray.data.ops import convert, inspect
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    shards = storage.join(output_uri, "shards")
    if overwrite or not storage.exists(shards):
        log.info("ingest: %s -> %s", storage.redact(input_uri), storage.redact(shards))
        convert(input_uri, shards, cfg.data, to="webdataset", overwrite=overwrite)
    else:
        log.info("ingest: %s exists, skipping", storage.redact(shards))
    summary = inspect(shards, cfg.data, src_format="webdataset")
    print(summary.render())
    return {"shards": storage.redact(shards), "records": summary.records, "errors": summary.errors,
            "classes": len(summary.classes)}
