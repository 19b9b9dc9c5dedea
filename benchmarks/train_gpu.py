"""One training step of open_clip ViT-B-16 on a single GPU (torch + open_clip only; no Ray, no
network): samples/s and model FLOPs utilisation in bf16, with and without gradient
checkpointing, at the largest batch that fits. Prints a table.

    python benchmarks/train_gpu.py            # random weights, synthetic images and tokens
    python benchmarks/train_gpu.py --device cpu --model biocap-tiny --batches 4,8   # the same code, tiny

Reference: the published run did about 750 samples/s per H100.
"""

from __future__ import annotations

import argparse
import time

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def flops_per_sample(model) -> float:
    """Forward+backward ≈ 3 × 2 × parameters × tokens, per tower (a standard estimate)."""
    vis = sum(p.numel() for p in model.visual.parameters())
    txt = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("visual."))
    image_tokens = (model.visual.image_size[0] // model.visual.patch_size[0]) ** 2 + 1
    return 6.0 * (vis * image_tokens + txt * model.context_length)


def step_rate(model, batch: int, checkpointing: bool, device: str, steps: int = 5) -> float:
    import open_clip

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    model.set_grad_checkpointing(checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training's optimizer
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch, 3, *model.visual.image_size, device=device)
    tokens = torch.randint(1, model.vocab_size, (batch, model.context_length), device=device)
    for i in range(steps + 2):
        if i == 2:
            sync()
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            img, txt, scale = model(images, tokens)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    import open_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,512,1024,2048,4096")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.model not in open_clip.list_models():  # one of the project's configs (needs the package)
        from biocap_ray.models.clip import register_model_configs

        register_model_configs()
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model = open_clip.create_model(args.model).to(args.device).train()
    fps = flops_per_sample(model)
    print(f"{name}; {args.model} ≈ {fps / 1e9:.3g} GFLOP per sample (fwd+bwd)")
    print(f"{'checkpointing':<15}{'batch':>7}{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>7}")
    for ckpt in (False, True):
        for b in (int(x) for x in args.batches.split(",")):
            try:
                rate = step_rate(model, b, ckpt, args.device)
            except torch.cuda.OutOfMemoryError:
                print(f"{str(ckpt):<15}{b:>7}{'OOM':>11}")
                torch.cuda.empty_cache()
                break
            tflops = rate * fps / 1e12
            mfu = f"{tflops / peak:.1%}" if peak else "?"
            print(f"{str(ckpt):<15}{b:>7}{rate:>11.1f}{tflops:>9.1f}{mfu:>7}")


if __name__ == "__main__":
    main()
