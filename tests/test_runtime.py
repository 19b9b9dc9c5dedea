"""A locally started Ray keeps the workers of fractional-CPU tasks between a stage's tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# In a Ray of its own: Ray's limit counts every worker process (actors too), so the actors that
# other tests leave in the session's Ray would crowd out the ones this test watches.
SCRIPT = textwrap.dedent("""
    import json, os, time

    import psutil
    import ray

    from biocap_ray.config import RayConfig
    from biocap_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))

    @ray.remote(num_cpus=0.25)
    def worker_pid():
        time.sleep(3)
        return os.getpid()

    pids = set(ray.get([worker_pid.remote() for _ in range(6)]))
    time.sleep(3)  # Ray stops surplus idle workers after 1 s, checking every 0.2 s
    print(json.dumps({"workers": len(pids), "stopped": sum(not psutil.pid_exists(p) for p in pids)}))
""")


def test_workers_of_quarter_cpu_tasks_outlive_a_pause(tmp_path):
    """Six quarter-CPU tasks fill 2 CPUs with six workers. Ray's default keeps as many workers
    as CPUs and stops the idle rest after a second, to restart them later at about a second of
    CPU each; a Ray that ``init_ray`` starts keeps all six through a pause of 3 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not the session's Ray
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["workers"] > 2, f"the tasks ran on {seen['workers']} workers: nothing to keep beyond Ray's default"
    assert seen["stopped"] == 0, f"{seen['stopped']} of {seen['workers']} workers stopped while idle"
