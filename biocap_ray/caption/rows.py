"""Caption rows: what the output holds for each uid (the caption, its QC flags, where it came
from), or an error row for an input that could not be captioned."""

from __future__ import annotations

from biocap_ray.caption.prepare import CaptionSetup
from biocap_ray.caption.quality import check


def caption_row(prepared: dict, text: str | None, setup: CaptionSetup, *, input_tokens: int | None,
                output_tokens: int | None, latency_s: float | None, cached_tokens: int | None = None,
                error: str | None = None, attempt: int = 0) -> dict:
    """One output row: the caption, its QC flags and where it came from."""
    text = (text or "").strip() if error is None else None
    flags = check(text, prepared["names"], prepared["reference"], setup.rules, setup.names)
    if error is not None:
        flags = {k: None for k in flags}
        flags["qc_pass"] = False
    return {
        "uid": prepared["uid"],
        "caption": text,
        **flags,
        "engine": setup.engine,
        "model": setup.model,
        "prompt_version": setup.template.version,
        "context_level": prepared["context_level"],
        "examples_level": prepared["examples_level"],
        "context_hash": prepared["context_hash"],
        "prefix_key": prepared["prefix_key"],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached_tokens,
        "latency_s": latency_s,
        "attempt": attempt,
        "error": error,
    }


def error_row(uid: str, error: str, setup: CaptionSetup) -> dict:
    """An input that could not be captioned (unreadable image, engine failure after retries)."""
    return caption_row(
        {"uid": uid, "names": [], "reference": None, "context_level": None, "examples_level": None,
         "context_hash": None, "prefix_key": None},
        None, setup, input_tokens=None, output_tokens=None, latency_s=None, error=error,
    )
