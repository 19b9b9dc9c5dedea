"""Caption generation: records + species context → one faithful caption per image.

``run.caption`` streams a dataset through a prompt-building stage, an engine (vLLM through
``ray.data.llm``, or Hugging Face transformers in a Ray Data actor pool) and quality checks,
and writes Parquet parts that a rerun resumes from. ``merge`` puts captions into shards.
"""
