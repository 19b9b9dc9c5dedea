"""The caption-to-label weighting: which text each step contrasts with the images.

``sample`` (the paper's): each step draws ONE text type for the whole global batch from
{sci, com, taxon, sci_com, taxon_com, caption} with configurable probabilities. The draw is a
pure function of (seed, step), so every rank agrees without communicating and no global RNG
is touched. ``joint``: every step computes both losses on the same images and combines them
as (1 − w)·label + w·caption.
"""

from __future__ import annotations

import hashlib
import random

LABEL_TYPES: tuple[str, ...] = ("sci", "com", "taxon", "sci_com", "taxon_com")
TEXT_CHOICES: tuple[str, ...] = (*LABEL_TYPES, "caption")


def step_rng(seed: int, step: int, purpose: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{step}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def sample_text_type(seed: int, step: int, probs: dict[str, float]) -> str:
    """The text type of ``step`` in sample mode (identical on every rank)."""
    types = [t for t in TEXT_CHOICES if probs.get(t, 0) > 0]
    return step_rng(seed, step, "text_type").choices(types, weights=[probs[t] for t in types])[0]


def label_text_type(seed: int, step: int) -> str:
    """The label text type contrasted in ``joint`` mode at ``step`` (uniform over label types)."""
    return step_rng(seed, step, "label_type").choice(LABEL_TYPES)


def sample_probabilities(caption_probability: float) -> dict[str, float]:
    """Caption gets ``caption_probability``; the five label types share the rest equally.

    The paper's uniform draw over six types is ``caption_probability = 1/6``.
    """
    rest = (1.0 - caption_probability) / len(LABEL_TYPES)
    return {**{t: rest for t in LABEL_TYPES}, "caption": caption_probability}
