"""What both engines share: a Ray Data actor that turns prepared rows into caption rows and
outlives crashes of the engine it owns.

Rows that fail in their batch are retried alone, and a row that still fails becomes an error row.
When a failure killed the engine (vLLM's engine process died, say), the engine is rebuilt before
the rows are retried, so they run on a healthy one. Each rebuild is paid for by a failed batch or
by a row that then becomes an error row, so a poisonous input cannot restart an engine forever.
An engine that cannot be started ``max_restarts`` times in a row fails the actor; Ray Data then
restarts the actor (also bounded by ``caption.engine_max_restarts``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from biocap_ray.caption.prepare import CaptionSetup
from biocap_ray.caption.rows import caption_row, error_row
from biocap_ray.config import CaptionConfig

log = logging.getLogger(__name__)


def row_seed(uid: str, attempt: int, seed: int) -> int:
    """The sampling seed of a uid's attempt: the same caption on a rerun, another on a QC retry."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{attempt}:{uid}".encode()).digest()[:4], "little")


@dataclass
class Generation:
    text: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache (vLLM)


def _plain(value):
    """numpy batch values as Python ones (Ray hands strings over as bytes or numpy scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # missing values arrive as NaN
        return None
    return value


class EngineActor:
    """Callable class for ``map_batches``: prepared prompts + images → caption rows.

    Subclasses load, unload and call one engine; they say which exceptions mean it died.
    ``ledger`` (:mod:`biocap_ray.caption.ledger`) counts its starts and the rows it is handed.
    """

    def __init__(self, setup: CaptionSetup, cfg: CaptionConfig, ledger=None):
        self.setup, self.cfg, self.ledger = setup, cfg, ledger
        if ledger is not None:
            ledger.started.remote()
        self.sampling, self.max_restarts = cfg.sampling.model_dump(), cfg.engine_max_restarts
        self.restarts = 0
        self._start()

    def load(self) -> None:
        raise NotImplementedError

    def unload(self) -> None:
        """Release a (possibly dead) engine."""

    def generate(self, prompts: list[str], images: list[Image.Image], seed: int) -> list[Generation | Exception]:
        """One result per prompt; an engine may fail single rows (an Exception in their place) or
        raise for the whole batch."""
        raise NotImplementedError

    def is_dead(self, exc: Exception) -> bool:
        """Whether ``exc`` left the engine unusable, so it must be rebuilt."""
        return False

    def _start(self) -> None:
        for failures in range(1, self.max_restarts + 2):
            try:
                self.load()
                return
            except Exception as exc:
                self.unload()
                if failures > self.max_restarts:
                    raise RuntimeError(f"the {self.setup.engine} engine failed to start {failures} times "
                                       f"in a row; last error: {type(exc).__name__}: {exc}") from exc
                log.warning("the %s engine failed to start (%s); trying again", self.setup.engine, exc)

    def _generate(self, prompts: list[str], images: list[Image.Image], seed: int) -> list[Generation | Exception]:
        try:
            results = self.generate(prompts, images, seed)
        except Exception as exc:
            results = [exc] * len(prompts)
        dead = next((r for r in results if isinstance(r, Exception) and self.is_dead(r)), None)
        if dead is not None:
            self.restarts += 1
            log.warning("the %s engine died (%s: %s); restarting it (restart %d of this actor)",
                        self.setup.engine, type(dead).__name__, dead, self.restarts)
            self.unload()
            self._start()
        return results

    def _row(self, r: dict, g: Generation, latency_s: float, attempt: int) -> dict:
        return caption_row(r, g.text, self.setup, input_tokens=g.input_tokens, output_tokens=g.output_tokens,
                           cached_tokens=g.cached_tokens, latency_s=latency_s, attempt=attempt)

    def _caption(self, rows: list[dict], images: list[Image.Image], attempt: int) -> list[dict]:
        """One caption row per input row (an error row where the engine fails it even alone)."""
        seed = row_seed(rows[0]["uid"], attempt, self.setup.seed)
        start = time.perf_counter()
        results = self._generate([r["prompt"] for r in rows], images, seed)
        per_row = (time.perf_counter() - start) / max(1, len(rows))
        out: list[dict] = []
        for r, img, g in zip(rows, images, results):
            if isinstance(g, Exception):  # alone, so that one bad row cannot sink its batch
                log.warning("row %s failed in its batch (%s: %s); retrying it alone", r["uid"], type(g).__name__, g)
                t0 = time.perf_counter()
                (g,) = self._generate([r["prompt"]], [img], row_seed(r["uid"], attempt, self.setup.seed))
                if isinstance(g, Exception):
                    out.append(error_row(r["uid"], f"engine failed: {type(g).__name__}: {g}", self.setup))
                    continue
                out.append(self._row(r, g, time.perf_counter() - t0, attempt))
            else:
                out.append(self._row(r, g, per_row, attempt))
        return out

    def __call__(self, batch: dict) -> dict:
        rows = [{k: _plain(batch[k][i]) for k in batch} for i in range(len(batch["uid"]))]
        if not rows:
            return {}
        if self.ledger is not None:
            self.ledger.received.remote(len(rows))
        images = [Image.fromarray(np.asarray(r["pixels"], dtype=np.uint8)) for r in rows]
        out = self._caption(rows, images, 0)
        # qc_action=retry: captions that fail QC are generated again with a new seed, here, so
        # every uid still gets exactly one row (the first passing attempt, else the last one)
        attempts = self.cfg.max_attempts if self.cfg.qc_action == "retry" else 1
        for attempt in range(1, attempts):
            again = [i for i, row in enumerate(out) if row["error"] is None and not row["qc_pass"]]
            if not again:
                break
            for i, row in zip(again, self._caption([rows[i] for i in again], [images[i] for i in again], attempt)):
                if row["error"] is None:
                    out[i] = row
        return {k: [row[k] for row in out] for k in out[0]}
