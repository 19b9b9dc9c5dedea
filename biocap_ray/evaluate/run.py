"""The evaluation job: score one or more checkpoints on a labelled set and write a report.

Outputs under ``out``: ``metrics.json`` (every number), ``comparison.csv`` (one row per
model), ``report.md`` with its PNG pictures, ``errors.json`` for unreadable images; the same
files are logged to an MLflow run (one child run per model, under one parent).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile

import numpy as np

from biocap_ray import storage
from biocap_ray.config import Config, EvalConfig
from biocap_ray.data import readers
from biocap_ray.data.images import load_rgb
from biocap_ray.evaluate import report
from biocap_ray.evaluate.classes import ClassSet, truth_taxon
from biocap_ray.evaluate.embed import RETRIEVAL, embed
from biocap_ray.evaluate.metrics import TOPK, confusions, recall_at_k, zero_shot_metrics
from biocap_ray.evaluate.records import LABEL_COLUMNS, label_rows, read_split, taxonomy_rows
from biocap_ray.models.checkpoints import ModelSpec
from biocap_ray.tracking import default_tracking_uri, flatten, use_experiment

log = logging.getLogger(__name__)


def score(rows: dict[str, np.ndarray], classes: ClassSet, rank: str, text_type: str) -> dict:
    """Zero-shot and retrieval metrics of one model's embedded rows."""
    good = rows["error"] == ""
    labels = [dict(zip(LABEL_COLUMNS, vals)) for vals in zip(*(rows[c] for c in LABEL_COLUMNS))]
    truth_all = [truth_taxon(r, rank) for r in labels]
    scored = good & np.array([t.label_rank is not None for t in truth_all])  # unlabelled rows: retrieval only
    truth = [t for t, keep in zip(truth_all, scored) if keep]
    topk = rows["topk"][scored]
    result: dict = {"zero_shot": zero_shot_metrics(truth, topk, classes.taxa, TOPK), "errors": int((~good).sum())}
    short = [t.name("sci_com") or "" for t in classes.taxa]  # shorter than most class texts
    truth_names = [t.name("sci_com") or "" for t in truth]
    result["confusions"] = confusions(truth, topk[:, 0], classes.taxa, short, truth_names)
    captioned = good & (rows["caption"] != "")
    if captioned.sum() >= 2:
        for variant in RETRIEVAL:
            result[f"retrieval_{variant}"] = recall_at_k(rows[f"image_{variant}"][captioned],
                                                         rows[f"text_{variant}"][captioned])
    return result


def evaluate(src: str, out: str, cfg: Config, models: list[str], held_out: bool = False,
             captions_page: str | None = None) -> dict:
    """Evaluate every model spec (see :mod:`biocap_ray.evaluate.checkpoints`) on ``src``
    (``held_out``: only the uids that ``train.val_fraction`` kept out of training). A captions
    page (the caption stage's ``captions.html``), when it exists, goes beside the report, linked
    from it and logged to MLflow with it."""
    split = cfg.train.val_fraction if held_out else None
    if held_out and not split:
        raise ValueError("held-out evaluation needs train.val_fraction > 0 (the fraction training held out)")
    e = cfg.evaluate
    specs = [ModelSpec.parse(m) for m in models]
    if not specs:
        raise ValueError("no model to evaluate: give at least one ARCH[:WEIGHTS]")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"model names must differ: {[s.name for s in specs]} (use NAME=ARCH:WEIGHTS)")
    labels = label_rows(src, cfg.data, split)
    classes = ClassSet.build(labels, e.text_type, e.rank, extra=taxonomy_rows(e.taxonomy_uri))
    log.info("evaluating %d model(s) on %d records, %d classes (%s names at %s)",
             len(specs), len(labels), len(classes), e.text_type, e.rank)
    results, errors, examples = {}, {}, {}
    for spec in specs:
        rows = embed(read_split(src, cfg.data, split), spec, classes.names, cfg, k=max(TOPK))
        results[spec.name] = score(rows, classes, e.rank, e.text_type)
        errors.update({u: err for u, err in zip(rows["uid"], rows["error"]) if err})
        if "retrieval_paper" in results[spec.name] and not examples:
            examples = retrieval_examples(src, cfg, rows)
        log.info("%s: %s", spec.name, {k: round(v, 4) for k, v in results[spec.name]["zero_shot"].items()})
    setup = {"data": storage.redact(src) + (f" (held-out {split:.0%} of uids)" if split else ""), "records": len(labels), "classes": len(classes),
             "class names": e.text_type, "rank": e.rank, "templates": e.templates,
             "retrieval": "paper: label projector, 'a photo of ' + caption (as the published tables);"
                          " caption_projector: caption projector, the caption as written"}
    attached = {}
    if captions_page and storage.exists(captions_page):
        attached["captions.html"] = storage.read_bytes(captions_page)
        setup["captions"] = "[captions.html](captions.html): sampled captions beside their images and prompts"
    files = write_outputs(out, results, setup, errors, examples, attached)
    tracking_uri = e.mlflow_tracking_uri or default_tracking_uri(out)
    log_to_mlflow(tracking_uri, e, results, files)
    return {"models": {n: report.flat_metrics(r) for n, r in results.items()},
            "report": storage.redact(storage.join(out, "report.md")), "mlflow_tracking_uri": storage.redact(tracking_uri)}


def retrieval_examples(src: str, cfg: Config, rows: dict[str, np.ndarray]) -> list[dict]:
    """A few captioned images of the set with their top-3 retrieved captions (paper variant)."""
    n = cfg.evaluate.report_examples
    captioned = np.flatnonzero((rows["error"] == "") & (rows["caption"] != ""))
    if n == 0 or len(captioned) < 2:
        return []
    wanted = {str(rows["uid"][i]): i for i in captioned[:n]}
    found = readers.read_records(src, cfg.data).filter(lambda r: r["uid"] in wanted,
                                                       num_cpus=cfg.data.num_cpus_per_task).take(n)
    sims = rows["image_paper"][captioned] @ rows["text_paper"][captioned].T
    position = {i: p for p, i in enumerate(captioned)}
    examples = []
    for rec in sorted(found, key=lambda r: r["uid"]):
        p = position[wanted[rec["uid"]]]
        best = np.argsort(-sims[p], kind="stable")[:3]
        retrieved = [(str(rows["caption"][captioned[b]]), b == p) for b in best]
        examples.append({"image": load_rgb(rec["image"], cfg.data.max_image_pixels, 160),
                         "caption": str(rows["caption"][captioned[p]]), "retrieved": retrieved})
    return examples


def write_outputs(out: str, results: dict, setup: dict, errors: dict, examples: list[dict],
                  attached: dict[str, bytes] | None = None) -> dict[str, bytes]:
    pictures: dict[str, str] = {}
    files: dict[str, bytes] = dict(attached or {})
    if any(r.get("zero_shot") for r in results.values()):
        files["accuracy_by_rank.png"] = report.plot_ranks(results)
        pictures["Accuracy at every rank"] = "accuracy_by_rank.png"
    for i, (name, res) in enumerate(results.items()):
        if res.get("confusions"):
            fname = f"confusions_{i}.png"
            files[fname] = report.plot_confusions(name, res["confusions"])
            pictures[f"Confusions: {name}"] = fname
    if examples:
        files["retrieval_examples.png"] = report.plot_retrieval(examples)
        pictures["Retrieval examples"] = "retrieval_examples.png"
    files["report.md"] = report.markdown(results, setup, pictures).encode()
    files["metrics.json"] = json.dumps({"setup": setup, "models": results}, indent=2).encode()
    buf = io.StringIO()
    rows = report.comparison_rows(results)
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    files["comparison.csv"] = buf.getvalue().encode()
    if errors:
        files["errors.json"] = json.dumps(errors, indent=2).encode()
    storage.makedirs(out)
    for name, data in files.items():
        storage.write_bytes(storage.join(out, name), data)
    return files


def log_to_mlflow(tracking_uri: str, e: EvalConfig, results: dict, files: dict[str, bytes]) -> None:
    import mlflow

    use_experiment(tracking_uri, e.experiment)
    with mlflow.start_run(run_name="evaluate", tags={"stage": "evaluate"}):
        mlflow.log_params({k: v for k, v in flatten(e.model_dump(mode="json"), "evaluate.").items()})
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                path = f"{d}/{name}"
                open(path, "wb").write(data)
                mlflow.log_artifact(path, artifact_path="report")
        for name, res in results.items():
            with mlflow.start_run(run_name=name, nested=True, tags={"stage": "evaluate", "model": name}):
                mlflow.log_metrics({k: float(v) for k, v in report.flat_metrics(res).items()})
