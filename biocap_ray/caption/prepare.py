"""Everything between a record and an engine call, and between its output and a caption row.

Shared by both engines so they differ only in how text is generated: decode and bound the
image, look up the species context, render the prompt with the model's chat template
(before generation); quality checks and provenance columns (after).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from biocap_ray import storage
from biocap_ray.caption.families import Family
from biocap_ray.caption.prompts import PromptTemplate
from biocap_ray.caption.quality import NameIndex, QualityRules, check
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


# built-in tiny random models (real architectures; no model hub needed): name -> builder
TINY_MODELS = {
    "builtin:tiny-qwen2-vl": "biocap_ray.caption.tiny_model:build_tiny_qwen2_vl",
    "builtin:tiny-internvl3": "biocap_ray.caption.tiny_internvl:build_tiny_internvl3",
}
TINY_MODEL = "builtin:tiny-qwen2-vl"


def _model_cache() -> str:
    return os.environ.get("BIOCAP_MODEL_CACHE", "/tmp/biocap_models")


def resolve_model(model: str) -> str:
    """A local path for ``model``: s3:// folders or files are copied once per node, ``builtin:`` tiny
    models (random weights, for demos and tests) are built once per node; hub ids pass through."""
    if model in TINY_MODELS:
        local = os.path.join(_model_cache(), model.removeprefix("builtin:"))
        if not os.path.exists(os.path.join(local, ".complete")):
            import importlib

            module, builder = TINY_MODELS[model].split(":")
            tmp = f"{local}.tmp-{os.getpid()}"
            getattr(importlib.import_module(module), builder)(tmp)
            open(os.path.join(tmp, ".complete"), "w").close()
            if not os.path.exists(local):
                os.replace(tmp, local)
        return local
    if not storage.is_s3(model):
        return model
    import pyarrow.fs as pafs

    fs, path = storage.resolve(model)
    is_file = fs.get_file_info(path).type == pafs.FileType.File
    local = os.path.join(_model_cache(), hashlib.sha1(model.encode()).hexdigest()[:12])
    if not os.path.exists(os.path.join(local, ".complete")):
        tmp = f"{local}.tmp-{os.getpid()}"
        target = os.path.join(tmp, path.rsplit("/", 1)[-1]) if is_file else tmp  # keep a file's name and suffix
        os.makedirs(tmp, exist_ok=True)
        pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        open(os.path.join(tmp, ".complete"), "w").close()
        if not os.path.exists(local):
            os.replace(tmp, local)
    return os.path.join(local, path.rsplit("/", 1)[-1]) if is_file else local


@functools.lru_cache(maxsize=2)
def load_processor(model: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)


def organism_name(row: dict) -> str:
    sci = row.get("scientific_name") or ""
    common = row.get("common_name")
    return f"{sci} ({common})" if common and sci else (sci or common or "this organism")


def row_seed(uid: str, attempt: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{attempt}:{uid}".encode()).digest()[:4], "little")


def bounded_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode to RGB with the longest side at most ``size`` (bounds the engine's image tokens)."""
    img = load_rgb(data, max_pixels)
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
