"""A tiny, randomly initialised Qwen2-VL saved to a folder, for demos and tests.

No model hub is reachable on CI machines, so the real loading code (``from_pretrained(path)``
in transformers, ``LLM(model=path)`` in vLLM) is exercised on a model of the real
architecture built here: a few-layer Qwen2-VL with a byte-level BPE tokenizer trained
in-process and the Qwen2-VL chat template. Its captions are gibberish; its plumbing is real.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]

# The Qwen2-VL chat template, written out: system/user/assistant turns, images as
# <|vision_start|><|image_pad|><|vision_end|> where they appear in the content list.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Text to train the tokenizer on: the shipped format examples' vocabulary plus basics."""
    words = (
        "a photo of the with brown black white red orange yellow green blue grey spotted striped "
        "wings legs tail head body fur feathers scales shell beak eyes leaves flowers petals stem "
        "Animalia Plantae Fungi Chordata Aves Mammalia Insecta Panthera leo tigris Canis lupus "
        "describe this organism caption species visible traits colour pattern texture shape"
    )
    return [words] * 50 + ["You are a biologist. Describe only what is visible in the image."] * 20


def bpe_tokenizer(special_tokens: list[str], vocab_size: int, **named_tokens):
    """A byte-level BPE tokenizer trained in-process on ``_corpus``: ``special_tokens[0]`` pads,
    ``<|im_end|>`` ends a turn (both tiny models' chat formats are Qwen's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=vocab_size - len(special_tokens), special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token=special_tokens[0],
        additional_special_tokens=special_tokens[1:], model_max_length=4096, **named_tokens,
    )


def build_tiny_qwen2_vl(path: str | Path, seed: int = 0, vocab_size: int = 512,
                        text: dict | None = None, vision: dict | None = None, max_pixels: int = 28 * 28 * 16) -> Path:
    """Write a tiny Qwen2-VL (model, tokenizer, processor, generation config) to ``path``.

    ``text`` / ``vision`` override the tiny sizes (e.g. real Qwen2-VL-2B sizes for GPU benchmarks).
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(SPECIAL_TOKENS, vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=max_pixels)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 4096, "max_window_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], **(text or {}),
        },
        vision_config={
            "depth": 1, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return save_random(Qwen2VLForConditionalGeneration, config, processor, path, seed)


def save_random(model_class, config, processor, path: Path, seed: int) -> Path:
    """Initialise ``model_class(config)`` from ``seed``, greedy-decoding until ``<|im_end|>``, and
    save it with its processor and a marker that says its weights are random."""
    import torch
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "BIOCAP_TINY_MODEL.json").write_text(json.dumps({"random_init": True, "seed": seed}))
    return path
