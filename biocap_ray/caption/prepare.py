"""Everything between a record and an engine call: decode and bound the image, look up the
species context, render the prompt with the model's chat template. Shared by both engines,
which then differ only in how text is generated (their output rows: :mod:`.rows`)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from biocap_ray.caption.families import Family
from biocap_ray.caption.prompts import PromptTemplate
from biocap_ray.caption.quality import NameIndex, QualityRules
from biocap_ray.context.lookup import ContextLookup
from biocap_ray.data.images import ImageError, load_rgb


@dataclass
class CaptionSetup:
    """The picklable state every pre/post-processing task needs."""

    model: str
    engine: str
    template: PromptTemplate
    lookup: ContextLookup
    names: NameIndex
    image_size: int
    rules: QualityRules
    max_pixels: int  # data.max_image_pixels: larger images are decompression bombs
    family: Family  # how this model is prompted (families.family_of)
    seed: int = 0
    extra: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=2)
def load_processor(model: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    from biocap_ray.models.download import resolve_model

    return AutoProcessor.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)


def organism_name(row: dict) -> str:
    sci = row.get("scientific_name") or ""
    common = row.get("common_name")
    return f"{sci} ({common})" if common and sci else (sci or common or "this organism")


def bounded_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode to RGB with the longest side at most ``size`` (bounds the engine's image tokens);
    a JPEG at the smallest DCT scale that keeps both sides at least ``size``."""
    img = load_rgb(data, max_pixels, draft=size)
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


PREPARED_COLUMNS = ("uid", "prompt", "pixels", "reference", "names", "context_level", "examples_level",
                    "context_hash", "prefix_key")


def prepare_batch(batch: pa.Table, setup: CaptionSetup) -> dict:
    """Records → prompts + bounded images. Unusable records are returned separately as errors."""
    processor = load_processor(setup.model, setup.family.trust_remote_code)
    out: dict[str, list] = {c: [] for c in PREPARED_COLUMNS}
    errors: list[dict] = []
    for row in batch.to_pylist():
        if row.get("error"):
            errors.append({"uid": row["uid"], "error": f"input record: {row['error']}"})
            continue
        try:
            pixels = bounded_image(row["image"], setup.image_size, setup.max_pixels)
        except ImageError as exc:
            errors.append({"uid": row["uid"], "error": f"unreadable image: {exc}"})
            continue
        ctx = setup.lookup.lookup(row)
        messages = setup.template.messages(organism_name(row), list(ctx.examples), ctx.text, setup.rules.max_words)
        prompt = setup.family.render(messages, processor)
        static = f"{setup.template.version}|{setup.template.order}|{'|'.join(ctx.examples)}"
        out["uid"].append(row["uid"])
        out["prompt"].append(prompt)
        out["pixels"].append(pixels)
        out["reference"].append(ctx.text)
        out["names"].append([n for n in (row.get("scientific_name"), row.get("common_name")) if n])
        out["context_level"].append(ctx.text_level)
        out["examples_level"].append(ctx.examples_level)
        out["context_hash"].append(ctx.hash)
        out["prefix_key"].append(
            hashlib.sha1(static.encode()).hexdigest()[:12] if setup.template.order == "static_first" else None
        )
    return {"prepared": out, "errors": errors}
