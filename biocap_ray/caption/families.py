"""Captioner families: what the caption stage must know to prompt each kind of multimodal LLM.

A family is chosen from the model's own ``config.json`` (its ``architectures``), so a hub id, a
local folder and an s3:// copy of one model are prompted alike, and only ``config.json`` is read
to choose (never the weights, on the driver).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from biocap_ray import storage


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    # None: the processor's chat template places the image (a content item); else the text the
    # model's own code expects where the image goes, in a plain-text chat turn
    image_placeholder: str | None = None
    stop: tuple[str, ...] = ()  # besides the tokenizer's end of sequence
    trust_remote_code: bool = False  # the checkpoint's config class lives in its repository
    engine_args: dict = field(default_factory=dict)  # vLLM engine arguments this family needs

    def render(self, messages: list[dict], processor) -> str:
        """The prompt text for chat ``messages`` (images as ``{"type": "image"}`` items)."""
        if self.image_placeholder is None:
            return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "".join(
            self.image_placeholder if part.get("type") == "image" else part.get("text", "") for part in m["content"])}
            for m in messages]
        tokenizer = getattr(processor, "tokenizer", processor)
        return tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)


# one image per prompt and no video: vLLM otherwise sizes its start-up profile for videos too
_ONE_IMAGE = {"limit_mm_per_prompt": {"image": 1, "video": 0}}
FAMILIES = (
    Family("qwen2-vl", ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
           engine_args=_ONE_IMAGE),
    # InternVL3 in the Hugging Face format (the "-hf" checkpoints): transformers and vLLM natively
    Family("internvl3-hf", ("InternVLForConditionalGeneration",), engine_args=_ONE_IMAGE),
    # the original format (e.g. OpenGVLab/InternVL3-38B-AWQ, the paper's captioner): vLLM's own
    # model code and processor, the repository's config class; "<image>" as vLLM's examples use it
    Family("internvl3", ("InternVLChatModel",), image_placeholder="<image>\n",
           stop=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|end|>"), trust_remote_code=True,
           engine_args=_ONE_IMAGE),
)


def model_config(model: str) -> dict:
    """``config.json`` of a model: built-in tiny, local folder, s3:// folder or hub id."""
    from biocap_ray.models.download import TINY_MODELS, resolve_model

    if model in TINY_MODELS or os.path.isdir(model):
        with open(os.path.join(resolve_model(model), "config.json")) as f:
            return json.load(f)
    if storage.is_s3(model):
        return json.loads(storage.read_bytes(storage.join(model, "config.json")))
    from huggingface_hub import hf_hub_download

    with open(hf_hub_download(model, "config.json")) as f:
        return json.load(f)


def family_of(model: str) -> Family:
    """The family of ``model``; an unknown architecture is an error that names the known ones."""
    architectures = model_config(model).get("architectures") or []
    for family in FAMILIES:
        if any(a in family.architectures for a in architectures):
            return family
    known = sorted(a for f in FAMILIES for a in f.architectures)
    raise ValueError(f"caption model {storage.redact(model)}: architecture {architectures} is not a known captioner"
                     f" family (known: {', '.join(known)}); add a Family in biocap_ray/caption/families.py")
