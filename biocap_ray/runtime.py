"""Starting or joining Ray with the settings of a :class:`~biocap_ray.config.RayConfig`."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workers import this module for their setup hook: keep it light
    from biocap_ray.config import RayConfig

log = logging.getLogger(__name__)

# While more worker processes than CPUs are alive (actors count too), Ray stops those idle for a
# second. Tasks at a half or a quarter of a CPU (the local preset's) run two to four workers per
# CPU, so a stage stopped and restarted workers between its tasks, about a second of CPU each
# to start Python, Ray and the task's imports: 0.4-1.0 core-ms per image of a 10k-image ingest
# on 2 cores, a tenth of its time (``benchmarks/ingest.py``).
WORKERS_PER_CPU = 4


def local_options(num_cpus: int | None) -> dict:
    """``ray.init`` options of a locally started Ray: ``num_cpus`` (None: all) and a worker pool
    that holds the workers of quarter-CPU tasks while they wait for the next."""
    cpus = num_cpus or os.cpu_count() or 1
    return {"num_cpus": num_cpus, "_system_config": {"num_workers_soft_limit": WORKERS_PER_CPU * cpus}}


def init_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address`` (or ``RAY_ADDRESS``), else start a local Ray sized by the config."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # merged with a submitted job's own runtime environment (its working_dir)
    runtime_env = {"worker_process_setup_hook": "biocap_ray.runtime.worker_setup"}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        kwargs = {**local_options(cfg.num_cpus), "include_dashboard": False, "runtime_env": runtime_env}
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    progress_as_log_lines()
    log.info("Ray resources: %s", ray.cluster_resources())


def interactive() -> bool:
    """Progress bars only where a person watches both streams: tqdm draws on stderr, Ray Data
    picks bars or log lines by stdout."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_as_log_lines() -> None:
    """Without a terminal (``ray job logs``, a file), progress is whole log lines.

    On the driver Ray Data then logs a block of per-operator counts every 10 s; ``RateLines``
    turns each block into one line with rows/s and ETA. Datasets run in Ray workers (Ray Train's
    split coordinator) would draw tqdm bars through the driver, whose redraws are garbage in a
    log: datasets created after this call carry the setting to those workers. With stdout on a
    terminal but stderr in a file, bars would land in the file, so there are none."""
    import ray

    if interactive():
        return
    ctx = ray.data.DataContext.get_current()
    ctx.use_ray_tqdm = False
    if sys.stdout.isatty():
        ctx.enable_progress_bars = False
    _add_rate_lines()


def worker_setup() -> None:
    """Run by Ray in every worker process of a job that ``init_ray`` started: datasets that run
    in a worker (Ray Train's split coordinator) report progress as rate lines too."""
    if not sys.stdout.isatty():
        _add_rate_lines()


def _add_rate_lines() -> None:
    ray_log = logging.getLogger(RateLines.LOGGER)
    if not any(isinstance(f, RateLines) for f in ray_log.filters):
        ray_log.addFilter(RateLines())


class RateLines(logging.Filter):
    """Ray Data's non-terminal progress block (``==== Running Dataset: ID ====``, ``Total
    Progress: done/total``, operator lines, a closing rule) as one line: ``dataset ID: done/total
    rows (p%), r rows/s, ETA h:mm:ss``. Lines it does not recognise pass unchanged."""

    LOGGER = "ray.data._internal.progress.logging_progress"
    _OPEN = re.compile(r"^=+ Running Dataset: (\S+) =+$")
    _TOTAL = re.compile(r"^Total Progress: (\d+)/(\d+|\?)$")

    def __init__(self):
        super().__init__()
        self.dataset: str | None = None  # inside a block: its dataset
        self.seen: dict[str, tuple[float, int]] = {}  # dataset -> (time, rows) when first reported

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        opened = self._OPEN.match(msg)
        if opened:
            self.dataset = opened.group(1)
            return False
        if self.dataset is None:
            return True
        total = self._TOTAL.match(msg)
        if total:
            done, of = int(total.group(1)), None if total.group(2) == "?" else int(total.group(2))
            record.msg, record.args = self.line(self.dataset, done, of, record.created), ()
            return True
        if msg and set(msg) == {"="}:
            self.dataset = None
        return False

    def line(self, dataset: str, done: int, total: int | None, now: float) -> str:
        start_t, start_rows = self.seen.setdefault(dataset, (now, done))
        text = f"dataset {dataset}: {done:,}" + (f"/{total:,} rows ({done / max(total, 1):.0%})"
                                                 if total is not None else " rows")
        if now > start_t and done > start_rows:
            rate = (done - start_rows) / (now - start_t)
            text += f", {rate:,.1f} rows/s"
            if total is not None:
                left = int(max(total - done, 0) / rate)
                text += f", ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
        return text
