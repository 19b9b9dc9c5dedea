"""Starting or joining Ray with the settings of a :class:`~biocap_ray.config.RayConfig`."""

from __future__ import annotations

import logging
import os
import sys

from biocap_ray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address`` (or ``RAY_ADDRESS``), else start a local Ray sized by the config."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        kwargs = {"num_cpus": cfg.num_cpus, "include_dashboard": False}
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    progress_as_log_lines()
    log.info("Ray resources: %s", ray.cluster_resources())


def progress_as_log_lines() -> None:
    """Without a terminal (``ray job logs``, a file), Ray Data reports progress as log lines: on
    the driver it does so by itself, but datasets run in Ray workers (Ray Train's split
    coordinator) draw tqdm bars through the driver, whose redraws are garbage in a log. Datasets
    created after this call carry the setting to the workers that run them."""
    import ray

    if not sys.stdout.isatty():
        ray.data.DataContext.get_current().use_ray_tqdm = False
