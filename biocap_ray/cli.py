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


def _cmd_convert(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.data.ops import convert
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    result = convert(args.src, args.dst, cfg.data, to=args.to, src_format=args.src_format, overwrite=args.overwrite)
    print(json.dumps(result))
    return 0


def _cmd_inspect(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.data.ops import inspect
    from biocap_ray.runtime import init_ray

    init_ray(cfg.ray)
    summary = inspect(args.src, cfg.data, src_format=args.src_format)
    print(summary.render())
    if args.json:
        storage.write_bytes(args.json, json.dumps(summary.as_dict(), indent=2).encode())
    return 0


def _cmd_pipeline(args: argparse.Namespace, cfg: Config) -> int:
    from biocap_ray.pipeline import run_pipeline

    result = run_pipeline(cfg, args.input, args.output, overwrite=args.overwrite)
    print(json.dumps(result))
    return 0


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

    pipe = stages.add_parser("pipeline", parents=[common], help="run every stage end to end")
    pipe.add_argument("--input", default="sample_data/species-sample", help="input dataset")
    pipe.add_argument("--output", default="outputs/pipeline", help="output folder, local or s3://")
    pipe.add_argument("--overwrite", action="store_true", help="recompute stages whose outputs exist")
    pipe.set_defaults(run=_cmd_pipeline)
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
