"""BioCAP training through Ray Train: 2 workers on gloo, a tiny open_clip ViT, the sample data."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import sample_subset

from biocap_ray.config import load_config
from biocap_ray.train.run import train

pytestmark = pytest.mark.usefixtures("ray_local")


def tiny(*extra: str):
    return load_config("local", ["train.batch_size=8", "data.batch_size=8", "train.val_fraction=0", *extra])


def losses(out: Path, run: str) -> list[tuple[int, float]]:
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["biocap"], filter_string=f"tags.biocap_run = '{run}'",
                               output_format="list")
    assert len(found) == 1
    history = mlflow.MlflowClient().get_metric_history(found[0].info.run_id, "loss")
    return sorted((m.step, m.value) for m in history)


def test_it_learns(tmp_path):
    """One fixed global batch of 16 images, seen 30 times: the loss must fall well below chance."""
    chance = math.log(16)
    out = tmp_path / "out"
    data = _subset(tmp_path, 16)
    # no shuffle buffer: one larger than an epoch (16 rows here) would mix epochs, and an image
    # twice in one contrastive batch is its own false negative
    cfg = tiny("train.epochs=30", "train.lr=0.002", "train.checkpoint_every=10", "train.caption_weight=0.3",
               "train.shuffle_buffer=0", f"train.val_data={data}", "evaluate.templates=photo")
    result = train(str(data), str(out), cfg, run_name="learn")
    history = losses(out, "learn")
    assert result["steps"] == 30 and len(history) == 30
    first, last = sum(v for _, v in history[:3]) / 3, sum(v for _, v in history[-3:]) / 3
    assert first > 0.8 * chance and last < 0.5 * first, history
    assert (out / "export" / "learn" / "open_clip_label.safetensors").exists()

    # validated at every checkpoint; the best one is kept by Ray Train and exported
    run = mlflow.search_runs(experiment_names=["biocap"], output_format="list")[0]
    val = sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_top1"))
    assert [s for s, _ in val] == [10, 20, 30], val
    assert result["best_val_top1"] == max(v for _, v in val) and result["val_top1"] == val[-1][1]
    print("validation top-1 while learning:", val)
    best_step = next(s for s, v in val if v == result["best_val_top1"])
    meta = json.loads(open(os.path.join(result["best_checkpoint"], "meta.json")).read())
    assert meta["step"] == best_step
    assert (out / "export" / "learn" / "best" / "open_clip_label.safetensors").exists()
    assert run.data.tags["best_step"] == str(best_step)


def _subset(tmp_path: Path, n: int) -> Path:
    return sample_subset(tmp_path / f"data{n}", n)


def _staged_checkpoints() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("biocap-ckpt-")}


def test_rerun_resumes_from_the_latest_checkpoint_in_joint_mode(tmp_path):
    """The rerun continues the MLflow run and its data plan starts at the checkpoint's position
    (the units before it are never read or decoded again); no staged checkpoint folder is left."""
    from biocap_ray.train.order import plan, unit_counts

    data = _subset(tmp_path, 40)
    staged = _staged_checkpoints()
    opts = ("train.mode=joint", "train.epochs=10", "train.checkpoint_every=3", "train.data_actors=1",  # as in production
            "data.batch_size=4")
    first = train(str(data), str(tmp_path / "out"), tiny("train.max_steps=3", *opts), "resume")
    assert first["steps"] == 3 and first["restored_from_step"] == -1 and first["records_skipped_on_resume"] == 0
    again = train(str(data), str(tmp_path / "out"), tiny("train.max_steps=8", *opts), "resume")
    assert again["steps"] == 8 and again["restored_from_step"] == 3
    position = 3 * 2 * 8  # 3 steps of 2 workers x batch 8
    units, counts = unit_counts(str(data), tiny(*opts), str(tmp_path / "out" / "runs"))
    assert len(units) == 10 and counts == [4] * 10  # metadata chunks of data.batch_size rows
    assert again["records_skipped_on_resume"] == plan(counts, 0, 11, position)[1] == position  # units align
    assert _staged_checkpoints() <= staged
    done = train(str(data), str(tmp_path / "out"), tiny("train.max_steps=8", *opts), "resume")
    assert done["steps"] == 8  # a rerun of a finished run trains nothing
    steps = [s for s, _ in losses(tmp_path / "out", "resume")]
    assert steps == list(range(1, 9))  # one MLflow run, continued, every step once
    run = mlflow.search_runs(experiment_names=["biocap"], output_format="list")[0]
    fallback = mlflow.MlflowClient().get_metric_history(run.info.run_id, "caption_fallback_fraction")
    assert fallback and all(m.value == 1.0 for m in fallback)  # no captions in this folder: all fell back
    assert run.data.params["train.mode"] == "joint" and run.data.params["train.lr"] == "0.001"


def _train_worker_pids() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if b"RayTrainWorker" in open(f"/proc/{d}/cmdline", "rb").read():
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def test_a_killed_worker_restarts_from_the_last_checkpoint(tmp_path):
    data = _subset(tmp_path, 32)
    out = tmp_path / "out"
    cfg = tiny("train.epochs=20", "train.max_steps=40", "train.checkpoint_every=4", "train.max_failures=2")
    killed: list[int] = []

    def killer():
        deadline = time.time() + 300
        # Ray Train writes this file once its controller has registered a checkpoint
        while time.time() < deadline and not (out / "runs" / "killed" / "checkpoint_manager_snapshot.json").exists():
            time.sleep(0.2)
        pids = _train_worker_pids()
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train(str(data), str(out), cfg, "killed")
    thread.join()
    assert killed, "no train worker was found to kill"
    assert result["steps"] == 40 and 4 <= result["restored_from_step"] < 40
    steps = [s for s, _ in losses(out, "killed")]
    assert sorted(set(steps)) == list(range(1, 41))  # no step missing after the restart


def test_two_workers_with_batch_b_match_one_worker_with_batch_2b():
    """local_loss + gather_with_grad over the Ray Train process group = the global-batch loss;
    with 2 micro-steps per worker too (DDP all-reduces once, after the last)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    single, double, accumulated = _one_step(1), _one_step(2), _one_step(2, micro_steps=2)
    for got in (double, accumulated):
        assert abs(single["loss"] - got["loss"]) < 1e-5
        assert torch.allclose(torch.tensor(got["grads"]), torch.tensor(single["grads"]), atol=1e-6)


def _one_step(workers: int, micro_steps: int = 1) -> dict:
    """One joint-mode step on a fixed batch of 8 split over ``workers`` (and each worker's part
    over ``micro_steps``): mean loss and gradients."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    def step(config):
        import open_clip
        import ray.train
        import ray.train.torch

        from biocap_ray.config import load_config as load
        from biocap_ray.models.clip import build_model
        from biocap_ray.train.loop import accumulated_backward

        cfg = load("local", ["train.mode=joint", "train.caption_weight=0.4"])
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        torch.manual_seed(0)
        model, _ = build_model("biocap-tiny", None)
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        gen = torch.Generator().manual_seed(1)
        images = torch.randn(8, 3, 32, 32, generator=gen)
        tokens = torch.randint(1, 400, (8, 6, 32), generator=gen)
        share = 8 // world
        mine = slice(rank * share, (rank + 1) * share)
        loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        micro = [{"image": part, "tokens": toks} for part, toks in zip(images[mine].chunk(micro_steps),
                                                                       tokens[mine].chunk(micro_steps))]
        loss, _ = accumulated_backward(model, loss_fn, micro, 3, cfg, lambda micro_loss: micro_loss.backward())
        mean = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(mean)
            mean /= world
        inner = model.module if hasattr(model, "module") else model
        grads = torch.cat([inner.label_proj.grad.flatten(), inner.caption_proj.grad.flatten(),
                           inner.clip.visual.conv1.weight.grad.flatten()])
        # a Ray Train V2 result keeps the metrics that came with a checkpoint
        folder = tempfile.mkdtemp()
        ray.train.report({"loss": mean.item(), "grads": grads.tolist()},
                         checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)

    trainer = TorchTrainer(step, scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}))
    return trainer.fit().metrics


@pytest.mark.parametrize("actors, operator, decode", [("null", "ActorPoolMapOperator", "TrainingRows"),
                                                      ("0", "TaskPoolMapOperator", "training_rows")])
@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_the_ingest_is_one_operator(capsys, tmp_path, fmt, actors, operator, decode):
    """Parsing, the validation split and decoding fuse into one operator after the read: on
    long-lived actors (no short-lived task processes that each import torch and open_clip
    again), or on tasks; shards are read one task each, in blocks the parser takes whole."""
    import tarfile

    from conftest import SAMPLE

    from biocap_ray.train.ingest import training_dataset

    src = SAMPLE
    if fmt == "webdataset":  # the plan only: two shards of one sample each
        src = tmp_path / "shards"
        src.mkdir()
        for i in range(2):
            with tarfile.open(src / f"shard-{i}.tar", "w") as tf:
                tf.add(next(SAMPLE.glob("images/*.jpg")), arcname=f"u{i}.jpg")
    cfg = load_config("local", ["train.val_fraction=0.2", f"train.data_actors={actors}"])
    training_dataset(str(src), cfg).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    operators = [line.strip("+- ") for line in optimized.splitlines() if "[" in line]
    read = ["TaskPoolMapOperator[ReadShardSource]"] if fmt == "webdataset" else []
    assert operators[1:] == [*read, "InputDataBuffer[Input]"], optimized
    first = "MapBatches(_shard_batch_to_records)" if fmt == "webdataset" else "MapBatches("
    assert operators[0].startswith(f"{operator}[{first}") and "split_rows" in operators[0], optimized
    assert operators[0].endswith(f"MapBatches({decode})]"), optimized


def test_decode_actors_run_at_the_lowest_cpu_priority():
    """A Ray actor of the training ingest's decoder, started as Ray Data starts it, runs its
    tasks and all its threads at nice 19, below the trainers (Ray's workers start at 15)."""
    import ray

    from biocap_ray.train.ingest import TrainingRows

    class Probe(TrainingRows):
        def niceness(self) -> tuple[int, list[int]]:
            """The nice value of the thread running this task, and of every thread."""
            threads = [int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])
                       for tid in os.listdir("/proc/self/task")]
            return os.getpriority(os.PRIO_PROCESS, 0), threads

    @ray.remote(max_calls=1)
    def task_niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    t = tiny().train
    probe = ray.remote(Probe).remote(model=t.model, fallback=t.caption_fallback, max_pixels=10**8)
    try:
        task, threads = ray.get(probe.niceness.remote())
    finally:
        ray.kill(probe)
    assert task == TrainingRows.NICENESS == 19
    assert set(threads) == {19}, threads
    assert ray.get(task_niceness.remote()) < 19  # other workers keep Ray's own priority
