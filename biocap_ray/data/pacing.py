"""A floor on the period of Ray Data's scheduling loop.

The streaming executor's loop blocks in ``ray.wait`` (up to 0.1 s) while tasks run, but when
none run (every operator backpressured because the consumer, e.g. a training step, is slower
than the ingest) it spins without pause. For a training run that loop lives in the dataset's
split coordinator, on the same nodes as the workers, and spinning it took half a core from
them. Ray Data calls each of the dataset's execution callbacks once per loop step: this one
sleeps until a step has lasted at least ``PERIOD``.

Each idle step still costs about 5 ms of CPU (resource accounting, backpressure policies,
metrics): at a 0.05 s floor the coordinator took a tenth of a core for the whole run, against
0.03 at 0.2 s (``benchmarks/train.py``, sampled per process). A busy step already waits up to
0.1 s in ``ray.wait``, so at 0.2 s new tasks are dispatched at most half as often, and each
step dispatches into every free task slot.
"""

from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback


class PacedScheduling(ExecutionCallback):
    PERIOD = 0.2  # s; short next to a training step or any decode task, long next to one idle loop step

    def __init__(self):
        self._last = time.perf_counter()

    def on_execution_step(self, executor) -> None:
        rest = self.PERIOD - (time.perf_counter() - self._last)
        if rest > 0:
            time.sleep(rest)
        self._last = time.perf_counter()


def paced(ds):
    """``ds``, its execution (wherever it runs: driver, split coordinator) paced; see above."""
    ctx = ds.context
    if PacedScheduling not in ctx.custom_execution_callback_classes:
        # a new list: the context may share the old one with the process-wide context
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, PacedScheduling]
    return ds
