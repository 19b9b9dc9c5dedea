"""The per-worker training loop: load checkpoint → step → report (+checkpoint) → export.

Runs inside Ray Train workers (``TorchTrainer``): DDP and the process group come from Ray
Train, batches from the worker's Ray Data shard, restarts from the last reported checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn

from biocap_ray import storage
from biocap_ray.config import Config, TrainConfig
from biocap_ray.models.checkpoints import STATE_FILE
from biocap_ray.models.clip import BioCAPModel, build_model
from biocap_ray.train.ingest import batch_options
from biocap_ray.train.objective import TEXT_CHOICES, label_text_type, sample_probabilities, sample_text_type

VAL_METRIC = "val_top1"  # what picks the best checkpoint and what sweeps stop early on


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (gains, biases, class embedding), norms and temperatures,
    exactly the paper's (open_clip's) rule: 2-D embeddings and the projectors are decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``, fused: one kernel over all parameters instead of a loop of
    small ops per tensor. On CPU the loop took a sixth of a DDP worker's step, and every DDP
    worker runs the whole update (``benchmarks/train.py``); fused runs on CUDA and CPU alike."""
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=t.betas, eps=t.eps, fused=True)


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _pairs(step: int, cfg) -> list[tuple[str, str]]:
    """(image projector, text type) pairs contrasted at ``step``; see ``objective``."""
    t = cfg.train
    if t.mode == "sample":
        text_type = sample_text_type(t.seed, step, sample_probabilities(t.caption_weight))
        return [("caption" if text_type == "caption" else "label", text_type)]
    return [("label", label_text_type(t.seed, step)), ("caption", "caption")]


def _features(model: nn.Module, batch: dict, pairs: list[tuple[str, str]]):
    texts = [batch["tokens"][:, TEXT_CHOICES.index(text_type)] for _, text_type in pairs]
    return model(batch["image"], texts, [projector for projector, _ in pairs])


def _loss(loss_fn, features, pairs: list[tuple[str, str]], cfg) -> tuple[torch.Tensor, dict]:
    image, texts, scale = features
    losses = [loss_fn(image[projector], text, scale[projector]) for (projector, _), text in zip(pairs, texts)]
    report = {f"loss_{text_type}": loss.item() for (_, text_type), loss in zip(pairs, losses)}
    if len(losses) == 1:
        return losses[0], report
    w = cfg.train.caption_weight
    return (1 - w) * losses[0] + w * losses[1], report


def compute_loss(model: nn.Module, loss_fn, batch: dict, step: int, cfg) -> tuple[torch.Tensor, dict]:
    """The step's loss on one batch and a report ``{loss_<text type>: value}``; see ``objective``.

    ``model`` is the DDP-wrapped :class:`BioCAPModel` (or the bare one on a single worker).
    """
    pairs = _pairs(step, cfg)
    return _loss(loss_fn, _features(model, batch, pairs), pairs, cfg)


def accumulated_backward(model: nn.Module, loss_fn, micro: list[dict], step: int, cfg, backward) -> tuple[torch.Tensor, dict]:
    """Gradients of ONE contrastive loss over all ``micro`` batches together, calling
    ``backward(loss)`` once per micro-batch; returns that loss and its report.

    As open_clip's ``accum_freq``: the micro-batches' features are first computed without
    gradients, then each micro-batch is encoded again with gradients and contrasted against the
    cached features of the others, so every step sees ``len(micro) x batch_size`` negatives per
    worker, and the summed gradients equal those of one batch that large. The temperatures take
    their gradient in the last pass only (otherwise it would count once per micro-batch). DDP
    all-reduces once, in the last pass (``no_sync`` before it).
    """
    if len(micro) == 1:
        loss, report = compute_loss(model, loss_fn, micro[0], step, cfg)
        backward(loss)
        return loss, report
    pairs = _pairs(step, cfg)
    with torch.no_grad():
        cached = [_features(model, batch, pairs) for batch in micro]
    last = len(micro) - 1
    for j, batch in enumerate(micro):
        sync = model.no_sync() if j < last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            image, texts, scale = _features(model, batch, pairs)
            joined = (
                {p: torch.cat([image[p] if i == j else c[0][p] for i, c in enumerate(cached)]) for p in image},
                [torch.cat([texts[k] if i == j else c[1][k] for i, c in enumerate(cached)]) for k in range(len(texts))],
                {p: s if j == last else s.detach() for p, s in scale.items()},
            )
            loss, report = _loss(loss_fn, joined, pairs, cfg)
            backward(loss)
    return loss, report


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


@dataclass(frozen=True)
class LoopArgs:
    """What every worker's loop needs besides its dataset shards (``train_loop_config["args"]``)."""

    cfg: dict  # the run's Config, serialised (validated again on the worker)
    run_name: str
    total_steps: int
    steps_per_epoch: int
    tracking_uri: str
    export_uri: str
    val_classes: object | None = None  # evaluate.classes.ClassSet when validating
    parent_run_id: str | None = None  # a sweep's trial: its MLflow run nests under the sweep's


def train_loop(config: dict) -> None:
    """Ray Train entry point; ``config["args"]`` is the run's :class:`LoopArgs`."""
    import open_clip
    import ray.train
    import ray.train.torch

    from biocap_ray.train.tracking import RankZeroTracker
    from biocap_ray.train.validation import validate

    args: LoopArgs = config["args"]
    cfg = Config.model_validate(args.cfg)
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model, _ = build_model(t.model, t.pretrained, t.dual_projector, t.grad_checkpointing)
    model.train()
    # A "sample" step trains one of the two projectors, so DDP must look for the unused one (a graph
    # walk per step); joint steps use every parameter. Gradients live in DDP's all-reduce buckets
    # (no copy in and out of them per step: about 3% of a CPU step in benchmarks/train.py's model).
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "find_unused_parameters": t.mode == "sample" and t.dual_projector, "gradient_as_bucket_view": True})
    unwrapped: BioCAPModel = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    optimizer = build_optimizer(unwrapped, t)
    total_steps = args.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(t.warmup_steps, total_steps))
    state = _restore(unwrapped, optimizer, scheduler)
    loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    scaler = torch.amp.GradScaler(enabled=t.precision == "fp16" and device.type == "cuda")
    tracker = RankZeroTracker(cfg, args.run_name, args.tracking_uri, state.get("mlflow_run_id"), rank,
                              parent_run_id=args.parent_run_id)
    classes = args.val_classes
    val_shard = ray.train.get_dataset_shard("val") if classes else None
    best_val = state.get("best_val")

    step = start = state["step"]
    restored_from = state["step"] if state["restored"] else -1
    per_epoch = args.steps_per_epoch
    # one stream for the rest of the run, its data plan already starting at this step (train.order)
    batches = ray.train.get_dataset_shard("train").iter_torch_batches(device=device, **batch_options(t, rank, start))
    micro: list[dict] = []  # this step's micro-batches (train.grad_accum_steps of them)
    window = {"samples": 0, "captioned": 0, "data_s": 0.0, "compute_s": 0.0, "start": time.perf_counter()}
    losses: dict[str, float] = {}
    wait_start = time.perf_counter()
    for batch in batches:
        if step >= total_steps:  # a rerun of a finished run (or a sweep's finished trial) trains nothing
            break
        window["data_s"] += time.perf_counter() - wait_start
        micro.append(batch)
        window["samples"] += batch["image"].shape[0]
        window["captioned"] += int(batch["has_caption"].sum())
        if len(micro) < t.grad_accum_steps:
            wait_start = time.perf_counter()
            continue
        compute_start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, report = accumulated_backward(model, loss_fn, micro, step, cfg,
                                                lambda micro_loss: scaler.scale(micro_loss).backward())
        micro = []
        losses.update(report)
        if t.grad_clip_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        unwrapped.clamp_logit_scales()
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
                    tracker.export(unwrapped, storage.join(args.export_uri, "best"),
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
    tracker.finish(unwrapped, args.export_uri)

