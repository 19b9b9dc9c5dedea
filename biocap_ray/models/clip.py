"""The BioCAP model by composition over an unmodified open_clip CLIP, and the preprocessing
(image transform, tokenizer) that every stage feeding it uses.

The image tower's projection is taken out of the tower and held here twice: the label
projector (the original) and the caption projector (a copy), each with its own learnable
temperature (the caption one a copy of the original). Taxonomic text is contrasted with
label-projected images, captions with caption-projected images; the text tower is shared.
Exporting puts the label projector back, so the file is a plain open_clip checkpoint.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import torch
from torch import nn

_REGISTERED = False


def register_model_configs() -> None:
    """Make the project's open_clip configs (e.g. ``biocap-tiny``) available by name."""
    global _REGISTERED
    if not _REGISTERED:
        import open_clip

        open_clip.add_model_config(Path(str(resources.files("biocap_ray.models") / "model_configs")))
        _REGISTERED = True


class BioCAPModel(nn.Module):
    """An open_clip CLIP with a label and a caption image projector."""

    def __init__(self, clip: nn.Module, dual_projector: bool = True):
        super().__init__()
        visual = clip.visual
        if not isinstance(getattr(visual, "proj", None), nn.Parameter):
            raise ValueError(f"{type(visual).__name__} has no `proj` parameter: only open_clip ViT towers are supported")
        self.clip = clip
        self.label_proj = nn.Parameter(visual.proj.detach().clone())
        visual.proj = None  # the tower now returns pooled features; projections live here
        self.dual_projector = dual_projector
        if dual_projector:
            self.caption_proj = nn.Parameter(self.label_proj.detach().clone())
            self.caption_logit_scale = nn.Parameter(clip.logit_scale.detach().clone())

    def forward(self, images: torch.Tensor, texts: list[torch.Tensor], projectors: list[str]):
        """Image features under each projector, features of each text batch, and temperatures.

        One call (through DDP when distributed) encodes the images once for all projectors.
        """
        pooled = self.clip.visual(images)
        image = {p: self.project(pooled, p) for p in dict.fromkeys(projectors)}
        text = [self.text_features(t) for t in texts]
        return image, text, {p: self.logit_scale(p) for p in image}

    def image_features(self, images: torch.Tensor, projector: str = "label") -> torch.Tensor:
        return self.project(self.clip.visual(images), projector)

    def project(self, pooled: torch.Tensor, projector: str) -> torch.Tensor:
        proj = self.caption_proj if projector == "caption" and self.dual_projector else self.label_proj
        return nn.functional.normalize(pooled @ proj, dim=-1)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=True)

    def logit_scale(self, projector: str = "label") -> torch.Tensor:
        scale = self.caption_logit_scale if projector == "caption" and self.dual_projector else self.clip.logit_scale
        return scale.exp()

    @torch.no_grad()
    def clamp_logit_scales(self, max_log: float = 4.6052) -> None:
        self.clip.logit_scale.clamp_(0, max_log)
        if self.dual_projector:
            self.caption_logit_scale.clamp_(0, max_log)

    def open_clip_state_dict(self, projector: str = "label") -> dict[str, torch.Tensor]:
        """A plain open_clip state dict with the chosen projector (and its temperature) in place."""
        state = {k: v.detach().cpu() for k, v in self.clip.state_dict().items()}
        use_caption = projector == "caption" and self.dual_projector
        state["visual.proj"] = (self.caption_proj if use_caption else self.label_proj).detach().cpu()
        if use_caption:
            state["logit_scale"] = self.caption_logit_scale.detach().cpu()
        return state


def build_model(name: str, pretrained: str | None, dual_projector: bool = True,
                grad_checkpointing: bool = False):
    """(model, tokenizer) from an open_clip name and weights; images go through
    :func:`tools_for`'s transforms.

    ``pretrained``: a local or s3:// open_clip checkpoint (.safetensors preferred; .pt/.bin are
    loaded with ``weights_only``), or None for random initialisation.
    """
    import open_clip

    from biocap_ray.models.download import resolve_model

    register_model_configs()
    weights = resolve_model(pretrained) if pretrained else None
    clip = open_clip.create_model(name, pretrained=weights, weights_only=True)
    if grad_checkpointing:
        clip.set_grad_checkpointing(True)
    return BioCAPModel(clip, dual_projector), open_clip.get_tokenizer(name)


def _model_config(model: str) -> dict:
    import open_clip

    register_model_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model!r}")
    return cfg


@functools.lru_cache(maxsize=8)
def image_size(model: str) -> int:
    size = _model_config(model)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


@functools.lru_cache(maxsize=2)
def tools_for(model: str, is_train: bool):
    """(image transform, tokenizer) of an open_clip architecture, cached per process: the one
    source of preprocessing for training, validation and evaluation. The transform follows the
    architecture's own preprocessing config (size, mean/std, interpolation, resize mode), as
    ``open_clip.create_model_and_transforms`` would, without building the model."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = _model_config(model)
    pp = PreprocessCfg(**merge_preprocess_dict(cfg.get("preprocess_cfg", {}),
                                               {"size": cfg["vision_cfg"]["image_size"]}))
    return image_transform_v2(pp, is_train=is_train), open_clip.get_tokenizer(model)
