"""The vLLM engine through ``ray.data.llm``: Ray Data owns the actor pool, batching,
autoscaling and restarts; we supply the rendered prompt, the image and the sampling params.

The prompt is rendered by our prepare stage with the model's own chat template, so Ray's
chat-template, tokenizer and multimodal stages are off (the multimodal stage of Ray 2.60
imports a vLLM module that moved in vLLM 0.32).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from biocap_ray.caption.prepare import CaptionSetup, caption_row, error_row, resolve_model
from biocap_ray.config import CaptionConfig

_PASS_THROUGH = ("uid", "reference", "names", "context_level", "examples_level", "context_hash", "prefix_key")


def _preprocess(row: dict, sampling: dict) -> dict:
    image = Image.fromarray(np.asarray(row["pixels"], dtype=np.uint8))
    out = {k: row[k] for k in _PASS_THROUGH}
    out["names"] = list(row["names"])
    out["prompt"] = row["prompt"]
    out["multimodal_data"] = {"image": image}
    out["sampling_params"] = dict(sampling)
    return out


def _postprocess(row: dict, setup: CaptionSetup) -> dict:
    if row.get("__inference_error__"):
        return error_row(row["uid"], f"engine failed: {row['__inference_error__']}", setup)
    metrics = row.get("metrics") or {}
    latency = None
    if metrics.get("last_token_ts") and metrics.get("scheduled_ts"):
        latency = float(metrics["last_token_ts"] - metrics["scheduled_ts"])
    prepared = {k: row.get(k) for k in _PASS_THROUGH}
    prepared["names"] = list(row.get("names") or [])
    return caption_row(prepared, row.get("generated_text"), setup, input_tokens=row.get("num_input_tokens"),
                       output_tokens=row.get("num_generated_tokens"), latency_s=latency)


def build_vllm_stage(cfg: CaptionConfig, setup: CaptionSetup, env_vars: dict[str, str]):
    """A ``ray.data.llm`` processor: prepared rows in, caption rows out."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine_kwargs = {
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "dtype": cfg.dtype,
        "max_num_seqs": cfg.batch_size,
        "limit_mm_per_prompt": {"image": 1},
        # one seed per engine and attempt (vLLM's CPU backend fails on per-request seeds)
        "seed": setup.seed + 1000 * setup.attempt,
    }
    if cfg.quantization:
        engine_kwargs["quantization"] = cfg.quantization
    if cfg.num_gpus_per_engine > 0:
        engine_kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        placement = None  # Ray's default: one GPU bundle per tensor-parallel worker
    else:
        placement = {"bundles": [{"CPU": cfg.num_cpus_per_engine}]}
    config = vLLMEngineProcessorConfig(
        model_source=resolve_model(setup.model),
        engine_kwargs=engine_kwargs,
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        accelerator_type=cfg.accelerator_type,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        prepare_multimodal_stage=False,
        should_continue_on_error=True,
        log_engine_metrics=False,
        placement_group_config=placement,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )
    sampling = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
                "max_tokens": cfg.sampling.max_tokens}
    task = {"num_cpus": cfg.num_cpus_per_task}
    return build_processor(
        config,
        preprocess=lambda row: _preprocess(row, sampling),
        postprocess=lambda row: _postprocess(row, setup),
        preprocess_map_kwargs=task,
        postprocess_map_kwargs=task,
    )
