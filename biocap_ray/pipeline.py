"""The end-to-end pipeline: each stage's outputs are the next stage's inputs. A stage is
finished when its completion marker exists, and the marker is written last, after every
output of the stage; a stage without one runs again (resuming where it can)."""

from __future__ import annotations

import json
import logging

from biocap_ray import storage
from biocap_ray.config import Config
from biocap_ray.tracking import default_tracking_uri

log = logging.getLogger(__name__)
MARKER = "_stage_summary.json"  # underscore: readers of the stage's output skip it


def run_stage(name: str, output: str, overwrite: bool, run) -> dict:
    """Run a stage unless its marker says it finished; then write the marker with its summary."""
    marker = storage.join(output, MARKER)
    if not overwrite and storage.exists(marker):
        log.info("%s: finished before (%s), skipping", name, storage.redact(output))
        return json.loads(storage.read_bytes(marker))
    log.info("%s -> %s", name, storage.redact(output))
    summary = run()
    storage.write_bytes(marker, json.dumps(summary, default=str).encode())
    return summary


def run_pipeline(cfg: Config, input_uri: str, output_uri: str, overwrite: bool = False) -> dict:
    """ingest → species context → caption → captions into shards → train → evaluate, under ``output_uri``.

    Resuming, per stage: ingest and merge rewrite their output whole (a partial set of shards
    is never trained on); context and caption continue from the rows they wrote; training
    continues from its latest checkpoint; evaluation runs again.
    """
    from biocap_ray.caption.merge import merge_captions
    from biocap_ray.caption.page import PAGE_FILE
    from biocap_ray.caption.run import caption
    from biocap_ray.context.fetch import build_wikipedia_context
    from biocap_ray.context.offline import import_context
    from biocap_ray.data.ops import convert
    from biocap_ray.evaluate.run import evaluate
    from biocap_ray.runtime import init_ray
    from biocap_ray.train.run import train

    init_ray(cfg.ray)
    out = {name: storage.join(output_uri, name) for name in ("shards", "context", "captions", "captioned", "train", "evaluate")}
    # a rerun after an interruption rewrites the shards whole (overwrite): they are the ingest's only output
    ingest = run_stage("ingest", out["shards"], overwrite,
                       lambda: convert(input_uri, out["shards"], cfg.data, to="webdataset", overwrite=True))

    def context() -> dict:
        if cfg.pipeline.context_source:
            return import_context(cfg.pipeline.context_source, out["context"], cfg, overwrite=overwrite)
        return build_wikipedia_context(out["shards"], out["context"], cfg, src_format="webdataset", overwrite=overwrite)

    run_stage("context", out["context"], overwrite, context)
    cfg = cfg.model_copy(deep=True)
    cfg.caption.context_uri = cfg.caption.context_uri or out["context"]

    captions = run_stage("caption", out["captions"], overwrite,
                         lambda: caption(out["shards"], out["captions"], cfg, src_format="webdataset"))
    run_stage("merge", out["captioned"], overwrite,
              lambda: merge_captions(out["shards"], out["captions"], out["captioned"], cfg, overwrite=True))
    trained = run_stage("train", out["train"], overwrite,
                        lambda: train(out["captioned"], out["train"], cfg, "pipeline"))
    export = storage.join(out["train"], "export", "pipeline")
    if trained.get("best_export"):
        export = storage.join(export, "best")

    def evaluation() -> dict:
        # the best checkpoint's export, on the uids training held out (when it held some out);
        # tracked in the training run's MLflow store
        cfg.evaluate.mlflow_tracking_uri = (cfg.evaluate.mlflow_tracking_uri or cfg.train.mlflow_tracking_uri
                                            or default_tracking_uri(out["train"]))
        evaluate(out["captioned"], out["evaluate"], cfg, [f"biocap={cfg.train.model}:{export}"],
                 held_out=cfg.train.val_fraction > 0, captions_page=storage.join(out["captions"], PAGE_FILE))
        return {"metrics": storage.redact(storage.join(out["evaluate"], "metrics.json"))}

    run_stage("evaluate", out["evaluate"], overwrite, evaluation)
    scores = json.loads(storage.read_bytes(storage.join(out["evaluate"], "metrics.json")))["models"]["biocap"]

    return {
        "records": ingest["records"],
        "ingest_errors": ingest["errors"],
        "captions_written": captions["captioned"],
        "caption_errors": captions["errors"],
        "qc_pass_rate": captions["qc_pass_rate"],
        "context_levels": captions["context_levels"],
        "context_coverage": captions.get("context_coverage"),
        "captions_page": captions.get("captions_page"),
        "warnings": captions.get("warnings", []),
        "train_steps": trained["steps"],
        "train_loss": trained["final_loss"],
        "model_export": storage.redact(export),
        "zero_shot_top1": scores["zero_shot"]["top1"],
        "zero_shot_top5": scores["zero_shot"]["top5"],
        "retrieval_mean_recall": scores.get("retrieval_paper", {}).get("mean_recall"),  # the published variant
        "report": storage.redact(storage.join(out["evaluate"], "report.md")),
        "mlflow_tracking_uri": trained["mlflow_tracking_uri"],
        "outputs": {k: storage.redact(v) for k, v in out.items()},
    }


def render(summary: dict) -> str:
    """The end-of-run summary for people (the JSON line after it is for schedulers)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    levels = ", ".join(f"{k} {v}" for k, v in summary["context_levels"].items())
    return "\n".join([
        "pipeline finished",
        f"  images      {summary['records']} ingested ({summary['ingest_errors']} ingest errors)",
        f"  captions    {summary['captions_written']} written, QC pass rate {pct(summary['qc_pass_rate'])},"
        f" {summary['caption_errors']} errors",
        f"  context     {pct(summary['context_coverage'])} of captions had a Wikipedia excerpt in their prompt"
        f" ({levels})",
        f"  captions    {summary['captions_page'] or 'no page'}  (a sample beside its images and prompts)",
        f"  training    {summary['train_steps']} steps, final loss {summary['train_loss']}",
        f"  zero-shot   top-1 {pct(summary['zero_shot_top1'])}, top-5 {pct(summary['zero_shot_top5'])};"
        f" retrieval mean recall {pct(summary['retrieval_mean_recall'])} (paper variant)",
        f"  report      {summary['report']}",
        f"  MLflow      {summary['mlflow_tracking_uri']}  (mlflow ui --backend-store-uri <that URI>)",
        *(f"  WARNING     {w}" for w in summary["warnings"]),
    ])
