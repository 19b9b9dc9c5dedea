"""What the engines tell the driver besides their captions: how many rows they were handed and how
many times an engine actor started.

Ray re-runs a batch whose engine was lost (a spot node reclaimed, an actor killed) on another
actor without telling anyone; the batch's rows then reach an engine twice but are written once.
Rows handed to engines minus rows written is therefore the work the run lost and redid. Counts
only (two integers), on an actor pinned to the driver's node, which a spot reclaim spares.
"""

from __future__ import annotations


class Ledger:
    def __init__(self):
        self.rows, self.starts = 0, 0

    def received(self, rows: int) -> None:
        self.rows += rows

    def started(self) -> None:
        self.starts += 1

    def counts(self) -> dict:
        return {"rows_received": self.rows, "engine_starts": self.starts}


def start_ledger():
    """A ledger actor on this (the driver's) node, asking for no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(Ledger).remote()
