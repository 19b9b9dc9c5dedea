"""Caption generation: records + species context → one faithful caption per image.

``run.caption`` streams a dataset through a prompt-building stage, an engine (vLLM or Hugging
Face transformers, one engine per actor of a Ray Data actor pool) and quality checks,
and writes Parquet parts that a rerun resumes from. ``merge`` puts captions into shards.

May import: ``data``, ``models`` (weights), ``context`` and the neutral top-level modules.
"""
