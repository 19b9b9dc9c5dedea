"""Caption throughput of the transformers engine on one GPU (torch + transformers only; no
network, no Ray, no vLLM): a randomly initialised Qwen2-VL with the real 2B sizes, bf16,
448-px images, 50 new tokens per caption. Prints images/s and tokens/s per batch size.

    python benchmarks/caption_gpu.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from biocap_ray.models.tiny_qwen2_vl import build_tiny_qwen2_vl

QWEN2_VL_2B_TEXT = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "max_window_layers": 28,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
QWEN2_VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4}
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "species-sample" / "images"


def main() -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()
    folder = build_tiny_qwen2_vl(tempfile.mkdtemp(), text=QWEN2_VL_2B_TEXT, vision=QWEN2_VL_2B_VISION,
                                 max_pixels=448 * 448)
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    params = sum(p.numel() for p in model.parameters()) / 1e9
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLE.glob("*.jpg"))]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the organism."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    print(f"{torch.cuda.get_device_name()}; random Qwen2-VL, {params:.2f} B parameters, bf16")
    print(f"{'batch':>6}{'images/s':>10}{'tokens/s':>10}{'s/batch':>9}")
    for b in (int(x) for x in args.batches.split(",")):
        batch = [images[i % len(images)] for i in range(b)]
        inputs = processor(text=[prompt] * b, images=batch, return_tensors="pt", padding=True).to("cuda")
        for i in range(3):
            if i == 1:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                     do_sample=True, temperature=0.6, top_p=0.8)
        torch.cuda.synchronize()
        per_batch = (time.perf_counter() - start) / 2
        new = out.shape[1] - inputs["input_ids"].shape[1]
        print(f"{b:>6}{b / per_batch:>10.2f}{b * new / per_batch:>10.1f}{per_batch:>9.2f}")


if __name__ == "__main__":
    main()
