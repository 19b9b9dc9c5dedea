"""The ``biocap-ray`` command. Each subcommand parses its arguments and calls the package.

Unknown flags are errors, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from biocap_ray import storage
from biocap_ray.config import PRESETS, Config, ConfigError, load_config

log = logging.getLogger("biocap_ray")


def _config_args() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config", default="local", help=f"preset ({', '.join(PRESETS)}) or path to a YAML config"
    )
    parent.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one config field (repeatable), e.g. --set data.batch_size=32",
    )
    return parent


def _summary(result: dict) -> int:
    """Every command's last stdout line: one JSON object a scheduler or script can parse."""
    print(json.dumps(result, default=str), flush=True)
    return 0


def _cmd_convert(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.data.ops import convert
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    result = convert(args.src, args.dst, cfg.data, to=args.to, src_format=args.src_format, overwrite=args.overwrite)
    return _summary(result)


def _cmd_inspect(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.data.ops import inspect
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    summary = inspect(args.src, cfg.data, src_format=args.src_format)
    print(summary.render())
    if args.json:
        storage.write_bytes(args.json, json.dumps(summary.as_dict(), indent=2).encode())
    return 0


def _cmd_context_wikipedia(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.context.fetch import build_wikipedia_context
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    summary = build_wikipedia_context(
        args.src, args.dst, cfg, src_format=args.src_format, overwrite=args.overwrite
    )
    return _summary(summary)


def _cmd_context_import(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.context.offline import import_context

    summary = import_context(args.src, args.dst, cfg, overwrite=args.overwrite)
    return _summary(summary)


def _cmd_context_examples(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.context.examples import examples_report
    from biocap_ray.runtime import init_ray

    if args.src and not args.src.lower().endswith((".csv", ".tsv")):
        init_ray(cfg.ray)
    report = examples_report(args.src, cfg, src_format=args.src_format)
    print(json.dumps(report, indent=2))
    if args.json:
        storage.write_bytes(args.json, json.dumps(report, indent=2).encode())
    return 0


def _cmd_caption(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.caption.run import caption
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    return _summary(caption(args.src, args.dst, cfg, src_format=args.src_format))


def _cmd_caption_merge(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.caption.merge import merge_captions
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    return _summary(merge_captions(args.src, args.captions, args.dst, cfg, overwrite=args.overwrite))


def _cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.runtime import init_ray
    from biocap_ray.train.run import train

    init_ray(cfg.ray)
    return _summary(train(args.src, args.dst, cfg, run_name=args.name))


def _cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.evaluate.run import evaluate
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    return _summary(evaluate(args.src, args.dst, cfg, args.models, held_out=args.held_out,
                             captions_page=args.captions_page))


def _cmd_tune(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.runtime import init_ray
    from biocap_ray.tune.sweep import sweep

    init_ray(cfg.ray)
    return _summary(sweep(args.src, args.dst, cfg, name=args.name))


def _cmd_mlflow_credentials(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.tracking import mlflow_credentials

    print("\n".join(f"export {k}={v}" for k, v in mlflow_credentials().items()))
    return 0


SAMPLE_INPUT = "sample_data/species-sample"


def _cmd_pipeline(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.pipeline import render, run_pipeline

    if args.input is None and args.config != "local":
        raise ValueError(f"pipeline --input is required with --config {args.config} (the shipped sample is only"
                         " the local preset's default input)")
    result = run_pipeline(cfg, args.input or SAMPLE_INPUT, args.output, overwrite=args.overwrite)
    print(render(result))
    return _summary(result)


def build_parser() -> argparse.ArgumentParser:
    common = _config_args()
    parser = argparse.ArgumentParser(prog="biocap-ray", description="BioCAP on Ray: caption, train, evaluate, tune.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    data = stages.add_parser("data", help="convert and inspect datasets of organism images")
    data_cmds = data.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conv = data_cmds.add_parser(
        "convert", parents=[common], help="convert a dataset (shards, folder+CSV, Parquet) to shards or Parquet"
    )
    conv.add_argument("src", help="input dataset: folder, metadata.csv, .tar shards or .parquet; local or s3://")
    conv.add_argument("dst", help="output folder, local or s3://")
    conv.add_argument("--to", choices=("webdataset", "parquet"), default="webdataset")
    conv.add_argument("--from", dest="src_format", choices=("webdataset", "folder", "parquet"), default=None,
                      help="input format (default: detected)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    conv.set_defaults(run=_cmd_convert)

    insp = data_cmds.add_parser("inspect", parents=[common], help="counts, ranks, classes, image sizes, errors")
    insp.add_argument("src")
    insp.add_argument("--from", dest="src_format", choices=("webdataset", "folder", "parquet"), default=None)
    insp.add_argument("--json", help="also write the summary as JSON to this path (local or s3://)")
    insp.set_defaults(run=_cmd_inspect)

    context = stages.add_parser("context", help="species context for captions: Wikipedia text, format examples")
    ctx_cmds = context.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wiki = ctx_cmds.add_parser(
        "wikipedia", parents=[common], help="fetch Wikipedia visual descriptions for every taxon of a dataset"
    )
    wiki.add_argument("src", help="dataset (as for data convert) or a taxon list CSV with the 7 ranks; local or s3://")
    wiki.add_argument("dst", help="context table folder, local or s3:// (rerun to resume)")
    wiki.add_argument("--from", dest="src_format", choices=("webdataset", "folder", "parquet"), default=None,
                      help="read SRC as this dataset format (default: detected; a CSV without 'file' is a taxon list)")
    wiki.add_argument("--overwrite", action="store_true", help="drop existing context rows (the cache is kept)")
    wiki.set_defaults(run=_cmd_context_wikipedia)

    imp = ctx_cmds.add_parser(
        "import", parents=[common], help="build the context table from a JSONL/Parquet of (scientific_name, text)"
    )
    imp.add_argument("src", help="JSONL, JSON or Parquet with scientific_name and text columns; local or s3://")
    imp.add_argument("dst", help="context table folder, local or s3://")
    imp.add_argument("--overwrite", action="store_true", help="drop existing context rows first")
    imp.set_defaults(run=_cmd_context_import)

    exm = ctx_cmds.add_parser(
        "examples", parents=[common], help="which classes of a dataset have caption format examples of their own"
    )
    exm.add_argument("src", nargs="?", help="dataset or taxon list CSV (omit to describe the examples file)")
    exm.add_argument("--from", dest="src_format", choices=("webdataset", "folder", "parquet"), default=None)
    exm.add_argument("--json", help="also write the report as JSON to this path (local or s3://)")
    exm.set_defaults(run=_cmd_context_examples)

    cap = stages.add_parser("caption", help="caption organism images with a multimodal LLM")
    cap_cmds = cap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = cap_cmds.add_parser("run", parents=[common], help="caption every image of a dataset (rerun to resume)")
    gen.add_argument("src", help="input dataset (shards, folder+metadata, Parquet; local or s3://)")
    gen.add_argument("dst", help="output folder of caption Parquet parts, local or s3://")
    gen.add_argument("--from", dest="src_format", choices=("webdataset", "folder", "parquet"), default=None)
    gen.set_defaults(run=_cmd_caption)
    mrg = cap_cmds.add_parser("merge", parents=[common], help="write shards with captions as caption.txt")
    mrg.add_argument("src", help="the dataset that was captioned, as shards or Parquet (ingest a folder first)")
    mrg.add_argument("captions", help="the caption output folder")
    mrg.add_argument("dst", help="output folder for the captioned shards")
    mrg.add_argument("--overwrite", action="store_true")
    mrg.set_defaults(run=_cmd_caption_merge)

    trn = stages.add_parser("train", parents=[common], help="contrastive training on Ray Train (rerun to resume)")
    trn.add_argument("src", help="training dataset (captioned shards, folder, Parquet; local or s3://)")
    trn.add_argument("dst", help="output folder for checkpoints, exports and MLflow (local or s3://)")
    trn.add_argument("--name", default="biocap", help="run name; the same name resumes the run")
    trn.set_defaults(run=_cmd_train)

    ev = stages.add_parser("evaluate", parents=[common],
                           help="zero-shot classification and retrieval of one or more checkpoints")
    ev.add_argument("src", help="labelled dataset (shards, folder+metadata, Parquet; local or s3://)")
    ev.add_argument("dst", help="output folder for metrics, comparison table and report")
    ev.add_argument("--model", dest="models", action="append", required=True, metavar="[NAME=]ARCH[:WEIGHTS]",
                    help="open_clip architecture and weights: a checkpoint file, a BioCAP export folder or a "
                         "training checkpoint folder; local or s3:// (repeat to compare models)")
    ev.add_argument("--held-out", action="store_true",
                    help="evaluate only the uids a training run held out (train.val_fraction)")
    ev.add_argument("--captions-page", metavar="URI",
                    help="the caption stage's captions.html, to link from the report and log with it to MLflow")
    ev.set_defaults(run=_cmd_evaluate)

    tun = stages.add_parser("tune", parents=[common],
                            help="Ray Tune sweep of training runs over tune.space (rerun to resume)")
    tun.add_argument("src", help="training dataset (captioned shards, folder, Parquet; local or s3://)")
    tun.add_argument("dst", help="output folder for trials, results table and MLflow (local or s3://)")
    tun.add_argument("--name", default="sweep", help="sweep name; the same name resumes the sweep")
    tun.set_defaults(run=_cmd_tune)

    pipe = stages.add_parser("pipeline", parents=[common], help="run every stage end to end")
    pipe.add_argument("--input", default=None,
                      help=f"input dataset (required unless --config local, whose default is {SAMPLE_INPUT})")
    pipe.add_argument("--output", default="outputs/pipeline", help="output folder, local or s3://")
    pipe.add_argument("--overwrite", action="store_true", help="recompute stages whose outputs exist")
    pipe.set_defaults(run=_cmd_pipeline)

    cred = stages.add_parser(
        "mlflow-credentials", help="shell exports of the cluster tracking server's login, derived from the Ray "
        "auth token: eval \"$(biocap-ray mlflow-credentials)\" (cluster.yaml does, on every node)")
    cred.set_defaults(run=_cmd_mlflow_credentials, config="local", overrides=[])
    return parser


def _root_cause(exc: BaseException) -> BaseException:
    """Ray wraps task errors; show the user the original one."""
    while getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Config], int] = args.run
    try:
        cfg = load_config(args.config, args.overrides)
        return run(args, cfg)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        cause = _root_cause(exc)
        print(f"biocap-ray: error: {storage.redact(str(cause))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
