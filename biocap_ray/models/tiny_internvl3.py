"""A tiny, randomly initialised InternVL3 (Hugging Face format) saved to a folder, for tests.

Like ``tiny_qwen2_vl.build_tiny_qwen2_vl``: no model hub on CI, so the InternVL loading paths
(transformers' ``InternVLForConditionalGeneration``, vLLM's ``InternVLForConditionalGeneration``
entry) are exercised on the real architecture with random weights: an InternViT-style vision
tower, pixel-shuffle projector and a Qwen2 text model, a byte-level BPE tokenizer trained
in-process, and the InternVL3-hf chat template. Captions are gibberish; the plumbing is real.
"""

from __future__ import annotations

from pathlib import Path

from biocap_ray.models.tiny_qwen2_vl import bpe_tokenizer, save_random

# <|endoftext|> first: it is the pad token and takes id 0 like the Qwen2-VL builder's.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
]

# InternVLProcessor reads these named tokenizer attributes (start_image_token, ..._id):
# each <IMG_CONTEXT> in the text becomes <img> + <IMG_CONTEXT> * image_seq_length * tiles + </img>.
IMAGE_TOKENS = {
    "start_image_token": "<img>", "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
}

# The InternVL3-hf chat template: Qwen-style turns, no default system turn, an image item
# rendered as the context token the processor expands (not the original format's <image>).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# InternViT normalises with ImageNet statistics (GotOcr2's defaults are CLIP's).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_tiny_internvl3(path: str | Path, seed: int = 0, vocab_size: int = 512, image_size: int = 56,
                         max_patches: int = 4) -> Path:
    """Write a tiny InternVL3 (model, tokenizer, processor, generation config) to ``path``.

    ``image_size`` is the tile side (a multiple of 28: patch 14, then a 2x2 pixel shuffle),
    so each tile costs ``(image_size // 28) ** 2`` image tokens; ``max_patches`` caps the tiles
    per image (plus a thumbnail) to keep prompts short.
    """
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )
    from transformers.models.internvl.video_processing_internvl import (
        InternVLVideoProcessor,
    )

    if image_size % 28:
        raise ValueError(f"image_size must be a multiple of 28, got {image_size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(SPECIAL_TOKENS, vocab_size, **IMAGE_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    size = {"height": image_size, "width": image_size}
    image_seq_length = (image_size // 28) ** 2
    image_processor = GotOcr2ImageProcessor(
        size=size, crop_to_patches=True, min_patches=1, max_patches=max_patches,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    video_processor = InternVLVideoProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor = InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        image_seq_length=image_seq_length, chat_template=CHAT_TEMPLATE,
    )

    config = InternVLConfig(
        text_config={
            "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 4096, "max_window_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": True,
        },
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": image_size, "patch_size": 14,
            "attention_bias": True, "norm_type": "layer_norm", "use_qk_norm": False,
        },
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=image_seq_length,
        downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=True,
    )
    return save_random(InternVLForConditionalGeneration, config, processor, path, seed)
