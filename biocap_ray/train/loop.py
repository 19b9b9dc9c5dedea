"""The per-worker training loop: load checkpoint → step → report (+checkpoint) → export.

Runs inside Ray Train workers (``TorchTrainer``): DDP and the process group come from Ray
Train, batches from the worker's Ray Data shard, restarts from the last reported checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import torch
from torch import nn

from biocap_ray import storage
from biocap_ray.config import Config
from biocap_ray.train.export import STATE_FILE
from biocap_ray.train.ingest import batch_options
from biocap_ray.train.model import BioCAPModel, build_model
from biocap_ray.train.objective import LABEL_TYPES, TEXT_CHOICES, label_text_type, sample_probabilities, sample_text_type


VAL_METRIC = "val_top1"  # what picks the best checkpoint and what sweeps stop early on


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings and temperatures (as open_clip's trainer)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def compute_loss(model: nn.Module, loss_fn, batch: dict, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """The step's loss and a report ``{loss_<text type>: value}``; see ``objective``.

    ``model`` is the DDP-wrapped :class:`BioCAPModel` (or the bare one on a single worker).
    """
    t = cfg.train
    images, tokens = batch["image"], batch["tokens"]
    if t.mode == "sample":
        text_type = sample_text_type(t.seed, step, sample_probabilities(t.caption_weight))
        projector = "caption" if text_type == "caption" else "label"
        image, (text,), scale = model(images, [tokens[:, TEXT_CHOICES.index(text_type)]], [projector])
        loss = loss_fn(image[projector], text, scale[projector])
        return loss, {f"loss_{text_type}": loss.item()}
    label_type = label_text_type(t.seed, step)
    texts = [tokens[:, LABEL_TYPES.index(label_type)], tokens[:, -1]]
    image, (label_text, caption_text), scale = model(images, texts, ["label", "caption"])
    label = loss_fn(image["label"], label_text, scale["label"])
    caption = loss_fn(image["caption"], caption_text, scale["caption"])
    w = t.caption_weight
    return (1 - w) * label + w * caption, {f"loss_{label_type}": label.item(), "loss_caption": caption.item()}


def _restore(unwrapped, optimizer, scheduler) -> dict:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return {"step": 0, "mlflow_run_id": None, "best_val": None, "restored": False}
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        meta = json.loads(open(os.path.join(d, "meta.json")).read())
    unwrapped.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return {**meta, "restored": True}


def _report(metrics: dict, rank: int, unwrapped, optimizer, scheduler, meta: dict) -> None:
    """Report metrics with a checkpoint staged by rank 0 in a folder that is removed once Ray
    Train has persisted it (a ViT-B-16 checkpoint with AdamW state is about 1.8 GB)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="biocap-ckpt-") as d:
        torch.save({"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
                   os.path.join(d, STATE_FILE))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def train_loop(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the serialised :class:`Config` and run facts."""
    import open_clip
    import ray.train
    import ray.train.torch

    from biocap_ray.train.tracking import RankZeroTracker
    from biocap_ray.train.validation import validate

    cfg = Config.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model, _, _, _ = build_model(t.model, t.pretrained, t.dual_projector, t.grad_checkpointing)
    model.train()
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    unwrapped: BioCAPModel = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(param_groups(unwrapped, t.weight_decay), lr=t.lr, betas=t.betas, eps=t.eps)
    total_steps = config["total_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(t.warmup_steps, total_steps))
    state = _restore(unwrapped, optimizer, scheduler)
    loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    scaler = torch.amp.GradScaler(enabled=t.precision == "fp16" and device.type == "cuda")
    tracker = RankZeroTracker(cfg, config["run_name"], config["tracking_uri"], state.get("mlflow_run_id"), rank,
                              parent_run_id=config.get("parent_run_id"))
    classes = config.get("val_classes")
    val_shard = ray.train.get_dataset_shard("val") if classes else None
    best_val = state.get("best_val")

    step = start = state["step"]
    restored_from = state["step"] if state["restored"] else -1
    per_epoch = config["steps_per_epoch"]
    # one stream for the rest of the run, its data plan already starting at this step (train.order)
    batches = ray.train.get_dataset_shard("train").iter_torch_batches(device=device, **batch_options(cfg, rank, start))
    accum = 0
    window = {"samples": 0, "captioned": 0, "data_s": 0.0, "compute_s": 0.0, "start": time.perf_counter()}
    losses: dict[str, float] = {}
    wait_start = time.perf_counter()
    for batch in batches:
        if step >= total_steps:  # a rerun of a finished run (or a sweep's finished trial) trains nothing
            break
        window["data_s"] += time.perf_counter() - wait_start
        compute_start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, report = compute_loss(model, loss_fn, batch, step, cfg)
        scaler.scale(loss / t.grad_accum_steps).backward()
        accum += 1
        window["samples"] += batch["image"].shape[0]
        window["captioned"] += int(batch["has_caption"].sum())
        losses.update(report)
        if accum < t.grad_accum_steps:
            window["compute_s"] += time.perf_counter() - compute_start
            wait_start = time.perf_counter()
            continue
        if t.grad_clip_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        unwrapped.clamp_logit_scales()
        accum = 0
        step += 1
        window["compute_s"] += time.perf_counter() - compute_start
        metrics = None
        if step % t.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window["start"]
            metrics = {"step": step, "epoch": step // per_epoch, "loss": loss.item(), **losses,
                       "lr": scheduler.get_last_lr()[0],
                       "samples_per_s_per_worker": window["samples"] / max(elapsed, 1e-9),
                       # records without a caption use train.caption_fallback in caption losses
                       "caption_fallback_fraction": 1 - window["captioned"] / max(window["samples"], 1),
                       "data_wait_s": window["data_s"], "compute_s": window["compute_s"],
                       "restored_from_step": restored_from}
            tracker.log(metrics, step)
            window = {"samples": 0, "captioned": 0, "data_s": 0.0, "compute_s": 0.0, "start": time.perf_counter()}
            losses = {}
        if step % t.checkpoint_every == 0 or step == total_steps:
            if val_shard is not None:  # validate at every checkpoint; Ray Train keeps the best
                val = validate(unwrapped, val_shard, classes, cfg, device)
                tracker.log(val, step)
                metrics = {**(metrics or {"step": step, "restored_from_step": restored_from}), **val}
                if best_val is None or val.get(VAL_METRIC, 0) > best_val:
                    best_val = val.get(VAL_METRIC, 0)
                    tracker.export(unwrapped, storage.join(config["export_uri"], "best"),
                                   {"best_step": step, f"best_{VAL_METRIC}": best_val})
            # Ray Train reports synchronise all workers (seconds each): only with checkpoints;
            # per-step metrics go straight to MLflow from rank 0.
            _report(metrics or {"step": step, "restored_from_step": restored_from}, rank, unwrapped, optimizer,
                    scheduler, {"step": step, "mlflow_run_id": tracker.run_id, "best_val": best_val})
        if step >= total_steps:
            break
        wait_start = time.perf_counter()
    if step < total_steps:
        raise RuntimeError(f"the data ran out at step {step} of {total_steps}: fewer records than planned")
    tracker.finish(unwrapped, config["export_uri"])

