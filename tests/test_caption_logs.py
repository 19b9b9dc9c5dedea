"""What the caption job tells a person while it runs: progress lines without a terminal, an early
warning when prompts go without Wikipedia context, and which records the captions page samples."""

from __future__ import annotations

import logging

from biocap_ray.caption import page
from biocap_ray.caption.run import EARLY_ROWS, _Coverage, _Progress


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _listen() -> _Lines:
    logger = logging.getLogger("biocap_ray.caption.run")
    logger.setLevel(logging.INFO)
    handler = _Lines()
    logger.addHandler(handler)
    return handler


def test_without_a_terminal_progress_is_whole_lines_with_rate_and_eta():
    caplog = _listen()
    progress = _Progress(total=100, label="caption", every_s=0.0)  # pytest's stderr is not a terminal
    assert progress.bar is None
    for _ in range(4):
        progress.update(10, 50)
    progress.close()
    lines = caplog.lines
    assert len(lines) == 5 and all("\r" not in line and "\n" not in line for line in lines)
    assert lines[0].startswith("caption: 10/100 images (10%), ") and "img/s" in lines[0] and "ETA 0:" in lines[0]
    assert lines[-1].startswith("caption: 40/100 images (40%)") and lines[-1].endswith("(done)")
    quiet = _Progress(total=None, label="caption", every_s=3600.0)
    quiet.update(10, 5)
    assert len(caplog.lines) == 5  # at most one line per interval


def test_low_context_coverage_warns_once_after_the_first_captions():
    caplog = _listen()
    coverage = _Coverage(minimum=0.2)
    assert coverage.update(EARLY_ROWS - 1, 0) is None  # too early to tell
    message = coverage.update(1, 0)
    assert message and "0.0% of 1,000 captions" in message and "caption.context_uri" in message
    assert coverage.update(5000, 0) is None  # once
    assert caplog.lines == [f"caption: {message}"]
    assert _Coverage(minimum=0.2).update(EARLY_ROWS, EARLY_ROWS // 4) is None
    assert _Coverage(minimum=0.2).update(10, 1, final=True)  # a small run is judged at its end


def test_the_page_sample_is_stable_and_sized_to_the_run():
    uids = [f"uid-{i}" for i in range(20000)]
    rate = page.sample_rate(24, len(uids))
    kept = [u for u in uids if page.pick(u) < rate]
    assert 24 * page.OVERSAMPLE * 0.7 < len(kept) < 24 * page.OVERSAMPLE * 1.3
    assert kept == [u for u in uids if page.pick(u) < rate]  # the same records on every run
    assert page.sample_rate(24, 10) == 1.0 and page.sample_rate(24, None) == 1.0 and page.sample_rate(0, 10) == 0


def _ray_progress_block(dataset: str, done: int, total: str) -> list[str]:
    """One report of Ray Data's non-terminal progress logger, as Ray 2.60 writes it."""
    rule = f"======= Running Dataset: {dataset} ======="
    return [rule, f"Total Progress: {done}/{total}", "Active & requested resources: 2/2 CPU", "",
            "ReadParquet: 10/20", "  Tasks: 1; Actors: 0", "=" * len(rule)]


def test_ray_datas_progress_blocks_become_one_line_with_rate_and_eta():
    from biocap_ray.runtime import RateLines

    lines = RateLines()
    kept = []
    for t, (done, total) in enumerate([(0, "1000"), (400, "1000"), (900, "?")]):
        for message in _ray_progress_block("ingest_1", done, total):
            record = logging.LogRecord(RateLines.LOGGER, logging.INFO, __file__, 0, message, (), None)
            record.created = float(t)
            if lines.filter(record):
                kept.append(record.getMessage())
    assert len(kept) == 3 and kept[0] == "dataset ingest_1: 0/1,000 rows (0%)"
    assert kept[1].startswith("dataset ingest_1: 400/1,000 rows (40%), ") and " rows/s, ETA 0:" in kept[1]
    assert kept[2].startswith("dataset ingest_1: 900 rows, ") and "ETA" not in kept[2]
    other = logging.LogRecord(RateLines.LOGGER, logging.INFO, __file__, 0, "Execution finished", (), None)
    assert lines.filter(other) and other.getMessage() == "Execution finished"


def test_a_real_dataset_without_a_terminal_logs_whole_rate_lines(ray_local, monkeypatch):
    """Ray Data's own non-terminal progress through the filter: rate lines, no blocks or bars."""
    import time

    import ray
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    from biocap_ray.runtime import RateLines, progress_as_log_lines

    monkeypatch.setattr(LoggingExecutionProgressManager, "LOG_REPORT_INTERVAL_SEC", 0.5)
    # as init_ray leaves it (other tests' fixtures may have turned progress off in this process)
    monkeypatch.setattr(ray.data.DataContext.get_current(), "enable_progress_bars", True)
    progress_as_log_lines()  # pytest's streams are not terminals
    handler = _Lines()
    ray_log = logging.getLogger(RateLines.LOGGER)
    monkeypatch.setattr(ray_log, "level", logging.INFO)
    ray_log.addHandler(handler)
    try:
        def slow(batch):
            time.sleep(0.3)
            return batch

        ds = ray.data.range(400, override_num_blocks=8).map_batches(slow, batch_size=50)
        assert sum(len(batch["id"]) for batch in ds.iter_batches(batch_size=50)) == 400
    finally:
        ray_log.removeHandler(handler)
    assert handler.lines, "Ray Data logged no progress"
    assert all(line.startswith("dataset ") and " rows" in line for line in handler.lines), handler.lines
    assert any("rows/s" in line for line in handler.lines), handler.lines
