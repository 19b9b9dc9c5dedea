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
