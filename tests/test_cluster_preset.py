"""The cluster preset is the tested configuration.

Loaded as it ships, with only sizes and places changed (tiny models, CPU, two workers, small
batches, every output on the S3 test server), it runs the pipeline (ingest, context, caption
with vLLM, merge, training with bf16 autocast, gradient checkpointing, decode actors and
accumulation, evaluation) and a two-trial sweep, on a local multi-node Ray whose nodes advertise
what cluster.yaml's node types do (tests/multinode.py): caption engines and train workers land
where cluster.yaml intends. Every key the cluster preset sets apart from the local
one is therefore exercised here, unless it is listed as a size or a place.
"""

from __future__ import annotations

import io
import json

import pytest
import yaml
from conftest import REPO, sample_subset
from multinode import run

from biocap_ray import storage
from biocap_ray.config import load_config, preset_path

# What a tiny run on this machine may change; everything else keeps the cluster preset's value.
SIZES_AND_PLACES = {
    "ray.address", "ray.num_cpus",
    "data.batch_size", "data.samples_per_shard", "data.num_cpus_per_task",
    # the model (and its quantization) is a size: the published captioner needs a GPU
    "caption.model", "caption.quantization", "caption.image_size", "caption.batch_size", "caption.concurrency",
    "caption.num_gpus_per_engine", "caption.num_cpus_per_engine", "caption.num_cpus_per_task",
    "caption.accelerator_type", "caption.rows_per_file", "caption.sampling.max_tokens", "caption.engine_env",
    "pipeline.context_source",  # the cluster fetches Wikipedia; this machine has no network
    "train.model", "train.pretrained", "train.num_workers", "train.use_gpu", "train.cpus_per_worker",
    "train.accelerator_type", "train.batch_size", "train.epochs", "train.warmup_steps", "train.checkpoint_every",
    "train.log_every", "train.shuffle_buffer", "train.val_fraction",
    "tune.space", "tune.trial_cpus",  # how many trials, and how much of 2 CPUs their drivers hold
    "evaluate.batch_size", "evaluate.num_gpus_per_actor", "evaluate.num_cpus_per_actor", "evaluate.num_cpus_per_task",
}
TINY = {
    "data.batch_size": "8", "data.samples_per_shard": "8", "data.num_cpus_per_task": "0.5",
    "caption.model": "builtin:tiny-internvl3", "caption.quantization": "null", "caption.image_size": "112",
    "caption.batch_size": "8", "caption.concurrency": "1", "caption.num_gpus_per_engine": "0",
    "caption.num_cpus_per_engine": "1.0", "caption.num_cpus_per_task": "0.25",
    "caption.rows_per_file": "8", "caption.sampling.max_tokens": "12",
    "caption.engine_env": "{VLLM_CPU_KVCACHE_SPACE: '1'}",
    "pipeline.context_source": str(REPO / "sample_data" / "context" / "wikipedia_species_descriptions.jsonl"),
    "train.model": "biocap-tiny", "train.num_workers": "2", "train.use_gpu": "false", "train.cpus_per_worker": "0.25",
    "train.batch_size": "4", "train.grad_accum_steps": "2", "train.epochs": "2",
    "train.warmup_steps": "1", "train.checkpoint_every": "1", "train.log_every": "1", "train.shuffle_buffer": "16",
    "train.val_fraction": "0.25",
    "evaluate.batch_size": "16", "evaluate.num_gpus_per_actor": "0", "evaluate.num_cpus_per_actor": "0.5",
    "evaluate.num_cpus_per_task": "0.25",
    "tune.space": "{train.caption_weight: {grid: [0.0, 0.5]}}", "tune.trial_cpus": "0.25",
}
# Not a size or a place, yet set here: what this test is for (the cluster preset keeps 1)
EXERCISED_BEYOND_THE_PRESET = {"train.grad_accum_steps"}
_LEAVES = {"tune.space", "caption.engine_env"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in _LEAVES:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _preset(name: str) -> dict:
    return _flat(yaml.safe_load(preset_path(name).read_text()))


def test_the_tiny_cluster_run_changes_only_sizes_and_places():
    """So a key added to the cluster preset alone is run by the test below, not skipped."""
    assert set(TINY) - EXERCISED_BEYOND_THE_PRESET <= SIZES_AND_PLACES
    local, cluster = _preset("local"), _preset("cluster")
    apart = {k for k, v in cluster.items() if local.get(k, "unset") != v}
    exercised = apart - SIZES_AND_PLACES
    # the code paths only the cluster preset takes, all run by the test below
    assert {"train.precision", "train.grad_checkpointing", "train.data_actors", "train.prefetch_batches",
            "train.grad_clip_norm", "caption.dtype"} <= exercised
    cfg = load_config("cluster", [f"{k}={v}" for k, v in TINY.items()])
    assert (cfg.train.precision, cfg.train.grad_checkpointing, cfg.train.data_actors) == ("bf16", True, None)


@pytest.mark.slow
def test_the_cluster_preset_at_tiny_size_runs_every_stage_on_s3(tmp_path, s3_bucket):
    import mlflow
    import open_clip
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from biocap_ray.caption import outputs
    from biocap_ray.models.checkpoints import STATE_FILE, ModelSpec, load_model
    from biocap_ray.models.clip import register_model_configs

    data = sample_subset(tmp_path / "data", 24)
    for path in data.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{s3_bucket}/data/{path.relative_to(data)}", path.read_bytes())
    register_model_configs()
    torch.manual_seed(5)
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("biocap-tiny").state_dict().items()}, str(weights))
    storage.write_bytes(f"{s3_bucket}/weights/init.safetensors", weights.read_bytes())
    sets = [a for k, v in {**TINY, "train.pretrained": f"{s3_bucket}/weights/init.safetensors"}.items()
            for a in ("--set", f"{k}={v}")]
    out, sweep = f"{s3_bucket}/run", f"{s3_bucket}/sweep"
    # outputs on s3://: the embedded MLflow store goes to the working directory
    report = run("cli", "pipeline", "--config", "cluster", "--input", f"{s3_bucket}/data", "--output", out, *sets,
                 "+", "tune", "--config", "cluster", f"{out}/captioned", sweep, *sets, cwd=tmp_path)
    assert report["exit_codes"] == [0, 0]
    captions = json.loads(storage.read_bytes(f"{out}/captions/_stage_summary.json"))
    assert captions["images"] == captions["captioned"] == 24 and captions["errors"] == 0
    rows = outputs.read_parts(f"{out}/captions").to_pylist()  # the published captioner's family, on vLLM
    assert {(r["engine"], r["model"]) for r in rows} == {("vllm", "builtin:tiny-internvl3")}
    assert storage.list_files(f"{out}/context", (".parquet",))

    # training: every planned step (2 workers x 4 records x 2 micro-steps per step), checkpoints and
    # exports on S3 that load back
    summary = json.loads(storage.read_bytes(f"{out}/train/_stage_summary.json"))
    assert summary["steps"] == 2 * (summary["records"] // 16) > 0 and summary["restarts"] == 0
    checkpoint = summary["checkpoint"]
    assert checkpoint.startswith(f"{s3_bucket}/run/train/runs/pipeline/checkpoint_")
    final, _ = load_model(ModelSpec.parse(f"biocap-tiny:{checkpoint}"))
    exported, _ = load_model(ModelSpec.parse(f"biocap-tiny:{out}/train/export/pipeline"))
    assert final.dual_projector and exported.dual_projector
    initial = open_clip.create_model("biocap-tiny", pretrained=str(weights)).visual.proj
    for model in (final, exported):  # trained from the S3 weights: close to them, not equal
        assert model.label_proj.shape == initial.shape and not torch.equal(model.label_proj, initial)
        assert torch.allclose(model.label_proj, initial, atol=0.05)
    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    tracked = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                   if r.data.tags.get("stage") == "train" and r.data.tags.get("biocap_run") == "pipeline")
    params = tracked.data.params
    assert (params["train.precision"], params["train.grad_checkpointing"], params["train.grad_accum_steps"],
            params["train.data_actors"]) == ("bf16", "True", "2", "None")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(tracked.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, summary["steps"] + 1))  # no step missing

    # evaluation on S3, both retrieval variants
    metrics = json.loads(storage.read_bytes(f"{out}/evaluate/metrics.json"))["models"]["biocap"]
    assert "top1_exact" in metrics["zero_shot"]
    assert {"retrieval_paper", "retrieval_caption_projector"} <= set(metrics)

    # a two-trial sweep of the captioned shards; Tune's state, trial checkpoints and results on S3
    table = pd.read_csv(io.BytesIO(storage.read_bytes(f"{sweep}/sweep-results.csv")))
    # the preset's ASHA may stop the worse trial at a rung: both ran, at least one to the end
    assert sorted(table["train.caption_weight"]) == [0.0, 0.5]
    assert "completed" in set(table["status"]) and set(table["status"]) <= {"completed", "stopped early"}
    assert storage.list_files(f"{sweep}/tune/sweep", (".json",))  # Tune's experiment state, to restore from
    trial_checkpoints = storage.list_files(f"{sweep}/trials/runs", (STATE_FILE,))
    assert {p.split("/trials/runs/", 1)[1].split("/")[0] for p in trial_checkpoints} == {
        f"sweep-{t}" for t in table["trial"]}

    # where it all ran: engines only on the caption node, train workers only on the train node,
    # and on the head (CPU 0) only what asks for no CPU (coordinators, which a spot reclaim spares)
    placed = report["placement"]
    def asking_for(resource: str) -> set[str]:  # in a placement group the name gets a bundle suffix
        return {p["node"] for p in placed if any(k.startswith(resource) for k in p["resources"])}

    caption_nodes, train_nodes = asking_for("accelerator_type:L40S"), asking_for("accelerator_type:H100")
    assert caption_nodes == {"caption_gpu"} and train_nodes == {"train_gpu"}
    engines = [p for p in placed if p["kind"] == "actor" and "Captioner" in p["name"]]
    workers = [p for p in placed if p["kind"] == "actor" and p["name"] == "RayTrainWorker"]
    assert engines and {p["node"] for p in engines} == {"caption_gpu"}
    assert len(workers) >= 2 * 3 and {p["node"] for p in workers} == {"train_gpu"}  # the run and two trials
    on_head = [p for p in placed if p["node"] == "head"]
    assert all(not p["resources"].get("CPU") for p in on_head), on_head
