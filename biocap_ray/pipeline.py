"""The end-to-end pipeline: each stage's outputs are the next stage's inputs, and a stage
whose outputs already exist is skipped (re-running resumes)."""

from __future__ import annotations

import json
import logging

from biocap_ray import storage
from biocap_ray.config import Config
from biocap_ray.tracking import default_tracking_uri

log = logging.getLogger(__name__)
SUMMARY = "_stage_summary.json"  # underscore: readers of the stage's output skip it


def _stage(name: str, output: str, overwrite: bool) -> bool:
    """Whether to run a stage: its output is missing, or the user asked to recompute."""
    if overwrite or not storage.exists(output):
        log.info("%s -> %s", name, storage.redact(output))
        return True
    log.info("%s: %s exists, skipping", name, storage.redact(output))
    return False


def _finished_or(output: str, overwrite: bool, run) -> dict:
    """A resumable stage: run it (it picks up where it stopped) unless it finished before, in
    which case its recorded summary is returned."""
    marker = storage.join(output, SUMMARY)
    if not overwrite and storage.exists(marker):
        log.info("%s finished before, skipping", storage.redact(output))
        return json.loads(storage.read_bytes(marker))
    summary = run()
    storage.write_bytes(marker, json.dumps(summary, default=str).encode())
    return summary


def run_pipeline(cfg: Config, input_uri: str, output_uri: str, overwrite: bool = False) -> dict:
    """ingest → species context → caption → captions into shards → train → evaluate, under ``output_uri``."""
    from biocap_ray.caption.merge import merge_captions
    from biocap_ray.caption.run import caption
    from biocap_ray.context.build import build_wikipedia_context, import_context
    from biocap_ray.data.ops import convert, inspect
    from biocap_ray.evaluate.run import evaluate
    from biocap_ray.runtime import init_ray
    from biocap_ray.train.run import train

    init_ray(cfg.ray)
    out = {name: storage.join(output_uri, name) for name in ("shards", "context", "captions", "captioned", "train", "evaluate")}
    if _stage("ingest", out["shards"], overwrite):
        convert(input_uri, out["shards"], cfg.data, to="webdataset", overwrite=overwrite)
    data = inspect(out["shards"], cfg.data, src_format="webdataset")
    print(data.render())

    if _stage("context", out["context"], overwrite):
        if cfg.pipeline.context_source:
            import_context(cfg.pipeline.context_source, out["context"], cfg, overwrite=overwrite)
        else:
            build_wikipedia_context(out["shards"], out["context"], cfg, src_format="webdataset", overwrite=overwrite)
    cfg = cfg.model_copy(deep=True)
    cfg.caption.context_uri = cfg.caption.context_uri or out["context"]

    # caption and train resume by themselves when interrupted; once finished, their summary is kept
    captions = _finished_or(out["captions"], overwrite,
                            lambda: caption(out["shards"], out["captions"], cfg, src_format="webdataset"))
    if _stage("merge", out["captioned"], overwrite):
        merge_captions(out["shards"], out["captions"], out["captioned"], cfg, overwrite=overwrite)
    trained = _finished_or(out["train"], overwrite, lambda: train(out["captioned"], out["train"], cfg, "pipeline"))
    export = storage.join(out["train"], "export", "pipeline")
    if trained.get("best_export"):
        export = storage.join(export, "best")
    if _stage("evaluate", storage.join(out["evaluate"], "metrics.json"), overwrite):
        # the best checkpoint's export, on the uids training held out (when it held some out);
        # tracked in the training run's MLflow store
        cfg.evaluate.mlflow_tracking_uri = (cfg.evaluate.mlflow_tracking_uri or cfg.train.mlflow_tracking_uri
                                            or default_tracking_uri(out["train"]))
        evaluate(out["captioned"], out["evaluate"], cfg, [f"biocap={cfg.train.model}:{export}"],
                 held_out=cfg.train.val_fraction > 0)
    scores = json.loads(storage.read_bytes(storage.join(out["evaluate"], "metrics.json")))["models"]["biocap"]

    return {
        "records": data.records,
        "ingest_errors": data.errors,
        "classes": len(data.classes),
        "captions_written": captions["captioned"],
        "caption_errors": captions["errors"],
        "qc_pass_rate": captions["qc_pass_rate"],
        "context_levels": captions["context_levels"],
        "train_steps": trained["steps"],
        "train_loss": trained["final_loss"],
        "model_export": storage.redact(export),
        "zero_shot_top1": scores["zero_shot"]["top1"],
        "zero_shot_top5": scores["zero_shot"]["top5"],
        "retrieval_mean_recall": scores.get("retrieval", {}).get("mean_recall"),
        "report": storage.redact(storage.join(out["evaluate"], "report.md")),
        "mlflow_tracking_uri": trained["mlflow_tracking_uri"],
        "outputs": {k: storage.redact(v) for k, v in out.items()},
    }


def render(summary: dict) -> str:
    """The end-of-run summary for people (the JSON line after it is for schedulers)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return "\n".join([
        "pipeline finished",
        f"  images      {summary['records']} ({summary['ingest_errors']} ingest errors, {summary['classes']} classes)",
        f"  captions    {summary['captions_written']} written, QC pass rate {pct(summary['qc_pass_rate'])},"
        f" {summary['caption_errors']} errors",
        f"  training    {summary['train_steps']} steps, final loss {summary['train_loss']}",
        f"  zero-shot   top-1 {pct(summary['zero_shot_top1'])}, top-5 {pct(summary['zero_shot_top5'])};"
        f" retrieval mean recall {pct(summary['retrieval_mean_recall'])}",
        f"  report      {summary['report']}",
        f"  MLflow      {summary['mlflow_tracking_uri']}  (mlflow ui --backend-store-uri <that URI>)",
    ])
