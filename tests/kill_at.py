"""Run the ``biocap-ray`` CLI and SIGKILL its whole process group at a chosen point, to test
what an interrupted pipeline leaves behind. Usage: ``python tests/kill_at.py POINT ARGS...``.

Points: ``context-part`` (a stage's output half written: the second context part is about to be
written), ``merge-written`` (every merged shard written, the stage's marker not yet).
"""

from __future__ import annotations

import os
import signal
import sys


def _die(*_args, **_kwargs):
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _arm(point: str) -> None:
    if point == "context-part":
        import biocap_ray.context.table as table

        write_part, calls = table.write_part, []

        def second_part_kills(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                _die()
            return write_part(*args, **kwargs)

        table.write_part = second_part_kills
    elif point == "merge-written":
        import biocap_ray.data.writers as writers

        read_errors = writers.read_errors
        writers.read_errors = lambda dst: _die() if dst.rstrip("/").endswith("captioned") else read_errors(dst)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    _arm(sys.argv[1])
    from biocap_ray.cli import main

    sys.exit(main(sys.argv[2:]))
