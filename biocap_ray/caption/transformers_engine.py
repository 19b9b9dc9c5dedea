"""The Hugging Face transformers engine: ``generate`` in a Ray Data actor pool.

For small runs on CPU or one GPU, and for machines without vLLM. A batch that fails is
retried row by row; a row that still fails becomes an error row, the rest flow on.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from biocap_ray.caption.prepare import CaptionSetup, caption_row, error_row, load_processor, resolve_model

log = logging.getLogger(__name__)


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


class TransformersCaptioner:
    """Callable class for ``map_batches``: prepared prompts + images → caption rows."""

    def __init__(self, setup: CaptionSetup, sampling: dict, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText

        self.setup, self.sampling = setup, sampling
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.processor = load_processor(setup.model)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            resolve_model(setup.model), dtype=torch_dtype
        ).to(self.device).eval()

    def _generate(self, prompts: list[str], images: list[Image.Image], seed: int) -> list[tuple[str, int, int]]:
        import torch

        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
        torch.manual_seed(seed)  # this actor's own process: per-batch reproducibility
        do_sample = self.sampling["temperature"] > 0
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.sampling["max_tokens"], do_sample=do_sample,
                temperature=self.sampling["temperature"] if do_sample else None,
                top_p=self.sampling["top_p"] if do_sample else None,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        n_in = inputs["attention_mask"].sum(dim=1).tolist()
        n_out = [(row != pad).sum().item() for row in new]
        return list(zip(texts, n_in, n_out))

    def __call__(self, batch: dict) -> dict:
        rows = [{k: _plain(batch[k][i]) for k in batch} for i in range(len(batch["uid"]))]
        images = [Image.fromarray(np.asarray(r["pixels"], dtype=np.uint8)) for r in rows]
        out: list[dict] = []
        start = time.perf_counter()
        try:
            results = self._generate([r["prompt"] for r in rows], images, int(rows[0]["seed"]) if rows else 0)
            per_row = (time.perf_counter() - start) / max(1, len(rows))
            for r, (text, n_in, n_out) in zip(rows, results):
                out.append(caption_row(r, text, self.setup, input_tokens=n_in, output_tokens=n_out, latency_s=per_row))
        except Exception as exc:  # retry one by one so one bad row cannot sink its batch
            log.warning("batch of %d failed (%s); retrying row by row", len(rows), exc)
            for r, img in zip(rows, images):
                t0 = time.perf_counter()
                try:
                    (text, n_in, n_out), = self._generate([r["prompt"]], [img], int(r["seed"]))
                    out.append(caption_row(r, text, self.setup, input_tokens=n_in, output_tokens=n_out,
                                           latency_s=time.perf_counter() - t0))
                except Exception as row_exc:
                    out.append(error_row(r["uid"], f"engine failed: {type(row_exc).__name__}: {row_exc}", self.setup))
        return {k: [row[k] for row in out] for k in out[0]} if out else {}
