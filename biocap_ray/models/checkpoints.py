"""A BioCAP model's files, written and read: exports, training state, any open_clip checkpoint.

Exports are plain open_clip checkpoints that ``open_clip.create_model_and_transforms(name,
pretrained=path)`` loads. ``open_clip_label.safetensors`` carries the label (taxonomic)
projector, the one zero-shot species classification uses, so it is the model's main export.
With the dual projector, ``open_clip_caption.safetensors`` carries the caption projector and
temperature instead, for caption retrieval. The training state (optimizer, scheduler, step)
stays in the Ray Train checkpoints (``state.pt``) for resuming.

A spec names the open_clip architecture and its weights, optionally with a display name:
``[name=]ARCH[:WEIGHTS]`` — e.g. ``clip=ViT-B-16:/models/openai.pt``,
``biocap-tiny:outputs/demo/train/export/pipeline`` or ``ViT-B-16`` (random weights).
WEIGHTS (local or s3://) may be an open_clip checkpoint file, a BioCAP export folder (label
and caption projectors) or a Ray Train checkpoint folder of a BioCAP run (``state.pt``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from biocap_ray import storage
from biocap_ray.models.clip import BioCAPModel, build_model

STATE_FILE = "state.pt"  # the full training state inside each Ray Train checkpoint
LABEL_FILE = "open_clip_label.safetensors"
CAPTION_FILE = "open_clip_caption.safetensors"


def export(model: BioCAPModel, folder: str) -> list[str]:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    files = [(LABEL_FILE, "label")] + ([(CAPTION_FILE, "caption")] if model.dual_projector else [])
    paths = []
    for name, projector in files:
        state = {k: v.contiguous() for k, v in model.open_clip_state_dict(projector).items()}
        path = os.path.join(folder, name)
        save_file(state, path)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    weights: str | None

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        if rest.startswith("hf-hub:"):
            raise ValueError(
                f"model spec {spec!r}: hf-hub: models are not loaded by name (jobs may have no hub access, and"
                " the evaluation needs the architecture's name for its transforms); download the checkpoint"
                " and give ARCH:PATH, e.g. ViT-B-16:s3://bucket/bioclip/open_clip_model.safetensors")
        arch, _, weights = rest.partition(":")
        if not arch:
            raise ValueError(f"model spec {spec!r}: expected [name=]ARCH[:WEIGHTS]")
        shown = weights.rstrip("/").rsplit("/", 1)[-1] if weights else "random"
        if weights and os.path.exists(weights):  # model actors do not share this process's directory
            weights = os.path.abspath(weights)
        return cls(name or f"{arch}:{shown}", arch, weights or None)


def load_model(spec: ModelSpec, seed: int = 0) -> tuple[BioCAPModel, object]:
    """(model in eval mode, open_clip tokenizer). Random weights are seeded, so runs repeat."""
    from biocap_ray.models.download import resolve_model

    weights = resolve_model(spec.weights) if spec.weights else None
    if weights and os.path.isdir(weights):
        if os.path.exists(os.path.join(weights, STATE_FILE)):
            model, tokenizer = _from_training_state(spec.arch, os.path.join(weights, STATE_FILE))
        elif os.path.exists(os.path.join(weights, LABEL_FILE)):
            model, tokenizer = _from_export(spec.arch, weights)
        else:
            raise FileNotFoundError(
                f"{storage.redact(spec.weights)}: neither a BioCAP export ({LABEL_FILE}) nor a training checkpoint"
                f" ({STATE_FILE})"
            )
    else:
        torch.manual_seed(seed)
        model, tokenizer = build_model(spec.arch, weights, dual_projector=False)
    return model.eval(), tokenizer


def _from_export(arch: str, folder: str):
    from safetensors.torch import load_file

    caption = os.path.join(folder, CAPTION_FILE)
    dual = os.path.exists(caption)
    model, tokenizer = build_model(arch, os.path.join(folder, LABEL_FILE), dual_projector=dual)
    if dual:
        state = load_file(caption)
        with torch.no_grad():
            model.caption_proj.copy_(state["visual.proj"])
            model.caption_logit_scale.copy_(state["logit_scale"])
    return model, tokenizer


def _from_training_state(arch: str, path: str):
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model, tokenizer = build_model(arch, None, dual_projector="caption_proj" in state)
    model.load_state_dict(state)
    return model, tokenizer
