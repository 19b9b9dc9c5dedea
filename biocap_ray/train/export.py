"""Export: plain open_clip checkpoints that ``open_clip.create_model_and_transforms(name,
pretrained=path)`` loads.

``open_clip_label.safetensors`` carries the label (taxonomic) projector: the one zero-shot
species classification uses, so it is the model's main export. When the dual projector is on,
``open_clip_caption.safetensors`` carries the caption projector and temperature instead, for
caption retrieval. The training state (optimizer, scheduler, step) stays in the Ray Train
checkpoints for resuming.
"""

from __future__ import annotations

import os

from safetensors.torch import save_file

from biocap_ray.train.model import BioCAPModel

STATE_FILE = "state.pt"  # the full training state inside each Ray Train checkpoint
LABEL_FILE = "open_clip_label.safetensors"
CAPTION_FILE = "open_clip_caption.safetensors"


def export(model: BioCAPModel, folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    files = [(LABEL_FILE, "label")] + ([(CAPTION_FILE, "caption")] if model.dual_projector else [])
    paths = []
    for name, projector in files:
        state = {k: v.contiguous() for k, v in model.open_clip_state_dict(projector).items()}
        path = os.path.join(folder, name)
        save_file(state, path)
        paths.append(path)
    return paths
