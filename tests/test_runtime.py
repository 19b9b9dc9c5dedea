"""A locally started Ray keeps the workers of fractional-CPU tasks between a stage's tasks."""

from __future__ import annotations

import os
import time

import psutil


def test_workers_of_quarter_cpu_tasks_outlive_a_pause(ray_local):
    """Eight quarter-CPU tasks fill 2 CPUs with eight workers. Ray's default keeps as many idle
    workers as CPUs and stops the rest after a second idle, which then restart at about a second
    of CPU each; with the local options all eight are alive after a pause of 3 s."""
    ray = ray_local

    @ray.remote(num_cpus=0.25)
    def worker_pid() -> int:
        time.sleep(3)
        return os.getpid()

    pids = set(ray.get([worker_pid.remote() for _ in range(8)]))
    assert len(pids) > 2, f"the tasks ran on {len(pids)} workers: nothing to keep beyond Ray's default"
    time.sleep(3)  # Ray stops surplus idle workers after 1 s, checking every 0.2 s
    stopped = [p for p in pids if not psutil.pid_exists(p)]
    assert not stopped, f"{len(stopped)} of {len(pids)} workers stopped while idle"
