"""Embedding a labelled set through Ray Data: CPU tasks decode with the model's eval
transform, a pool of model actors (GPUs on a cluster) embeds images and captions and
ranks the candidate classes; the driver gathers one small row per image.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from biocap_ray.data.images import ImageError, load_rgb
from biocap_ray.evaluate.classes import TEMPLATES
from biocap_ray.evaluate.records import LABEL_COLUMNS
from biocap_ray.models.checkpoints import ModelSpec, load_model
from biocap_ray.models.clip import tools_for

# Retrieval variants, each (image projector, caption prompt), both always scored and named apart:
# "paper" as the published tables (label projection, "a photo of " + caption); "caption_projector"
# BioCAP's caption head on the caption as written.
RETRIEVAL = {"paper": ("label", "a photo of {}"), "caption_projector": ("caption", "{}")}


def decode_rows(batch: pa.Table, arch: str, max_pixels: int) -> dict[str, np.ndarray]:
    """Eval-transformed images plus the label columns; an unreadable image keeps its row with
    ``error`` set (and a blank image) so it is counted, never silently dropped."""
    transform, _ = tools_for(arch, False)  # full-size decodes, as open_clip's reference (no DCT scaling)
    rows = batch.to_pylist()
    images, errors = [], []
    blank = None
    for row in rows:
        error = row.get("error")
        image = None
        if not error:
            try:
                image = transform(load_rgb(row["image"], max_pixels)).numpy()
            except ImageError as exc:
                error = str(exc)
        if image is None:
            blank = blank if blank is not None else transform(load_rgb(_BLANK, max_pixels)).numpy()
            image = blank
        images.append(image)
        errors.append(error or "")
    out = {c: np.array([row.get(c) or "" for row in rows], dtype=object) for c in LABEL_COLUMNS}
    out["image"] = np.stack(images).astype(np.float32)
    out["error"] = np.array(errors, dtype=object)
    return out


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


_BLANK = _blank_png()


def zero_shot_weights(model, tokenizer, names: list[str], templates: str, device) -> torch.Tensor:
    """(dim, classes) class embeddings: each name through every template, averaged, normalised
    (open_clip's own classifier builder, on the shared text tower)."""
    import open_clip

    return open_clip.build_zero_shot_classifier(
        model.clip, tokenizer, names, TEMPLATES[templates], num_classes_per_batch=32, device=device
    )


class Embedder:
    """One model per actor: top-k classes under the label projector, and the image and caption
    embeddings of every retrieval variant (``image_<variant>``, ``text_<variant>``)."""

    def __init__(self, spec: ModelSpec, names: list[str], templates: str, k: int, seed: int = 0):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(spec, seed)
        self.model.to(self.device)
        self.weights = zero_shot_weights(self.model, self.tokenizer, names, templates, self.device) if names else None
        self.k = min(k, len(names)) if names else 0

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(batch["image"]).to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            pooled = self.model.clip.visual(images)
            label = self.model.project(pooled, "label")
            out = {c: batch[c] for c in (*LABEL_COLUMNS, "error")}
            if self.weights is not None:
                out["topk"] = (label @ self.weights.to(label.dtype)).topk(self.k, dim=-1).indices.cpu().numpy()
            captions = [str(c) for c in batch["caption"]]
            have = [i for i, c in enumerate(captions) if c]
            for variant, (projector, prompt) in RETRIEVAL.items():
                out[f"image_{variant}"] = (label if projector == "label" else
                                           self.model.project(pooled, projector)).float().cpu().numpy()
                text = np.zeros_like(out[f"image_{variant}"])
                if have:
                    tokens = self.tokenizer([prompt.format(captions[i]) for i in have]).to(self.device)
                    text[have] = self.model.text_features(tokens).float().cpu().numpy()
                out[f"text_{variant}"] = text
        return out


def embed(records, spec: ModelSpec, names: list[str], cfg, k: int = 5) -> dict[str, np.ndarray]:
    """Run ``records`` (a Ray Dataset of the record schema) through decode → embed; rows sorted
    by uid so results do not depend on scheduling."""
    from ray.data import ActorPoolStrategy

    e = cfg.evaluate
    ds = records.map_batches(
        decode_rows, fn_kwargs={"arch": spec.arch, "max_pixels": cfg.data.max_image_pixels},
        batch_format="pyarrow", batch_size=e.batch_size, num_cpus=e.num_cpus_per_task,
    ).map_batches(
        Embedder, fn_constructor_kwargs={"spec": spec, "names": names, "templates": e.templates, "k": k,
                                         "seed": cfg.train.seed},
        batch_size=e.batch_size, compute=ActorPoolStrategy(size=e.concurrency),
        num_gpus=e.num_gpus_per_actor, num_cpus=e.num_cpus_per_actor,
    )
    parts = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    if not parts:
        raise ValueError("the evaluation set has no records")
    merged = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    order = np.argsort(merged["uid"].astype(str), kind="stable")
    return {c: v[order] for c, v in merged.items()}
