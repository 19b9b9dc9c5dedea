"""Typed configs, one model per stage, loaded from YAML presets plus ``key=value`` overrides.

Unknown fields are errors (a typo must never be silently ignored), and every validation
error names the dotted path of the offending field.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Strict):
    """Where to run. ``address=None`` starts (or joins) a local Ray instance."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a locally started Ray")
    object_store_memory_mb: int | None = Field(default=None, ge=64)


class DataConfig(_Strict):
    """Reading, validating and writing organism image records."""

    max_image_pixels: int = Field(
        default=89_478_485, ge=1, description="larger images are rejected as decompression bombs"
    )
    max_image_bytes: int = Field(
        default=64 * 2**20, ge=1,
        description="larger image files or shard members become error rows, unread (photos are a few MB)",
    )
    samples_per_shard: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=64, ge=1, description="rows per Ray Data batch")
    num_cpus_per_task: float = Field(
        default=1.0, gt=0, description="CPUs of each read/decode task or actor (training's too); fractional on small machines"
    )
    check_duplicates: bool = Field(
        default=True, description="mark records whose uid occurs more than once as error rows"
    )


class ContextConfig(_Strict):
    """Species context for captions: Wikipedia visual descriptions and caption format examples."""

    api_url: str = Field(
        default="https://en.wikipedia.org/w/api.php",
        description="MediaWiki Action API endpoint (Wikipedia, a mirror, a test server)",
    )
    user_agent: str = Field(
        default="biocap-ray/0.1 (BioCAP species-context builder; set context.user_agent to add your contact)",
        min_length=8,
        description="Wikimedia asks every client to name itself and a contact",
    )
    requests_per_second: float = Field(default=5.0, gt=0, description="total over all concurrent tasks")
    concurrency: int = Field(default=2, ge=1, description="concurrent fetch tasks; the rate is split between them")
    num_cpus_per_task: float = Field(default=0.25, gt=0, description="fetching waits on the network, not the CPU")
    batch_size: int = Field(default=16, ge=1, description="taxa per Ray Data batch")
    timeout_s: float = Field(default=30.0, gt=0, description="per HTTP request")
    max_response_bytes: int = Field(default=8 * 2**20, ge=1, description="larger answers are refused unread")
    max_retries: int = Field(default=5, ge=0, description="on 429, 5xx, network errors and malformed replies")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles each retry")
    max_backoff_s: float = Field(default=60.0, ge=0)
    cache_uri: str | None = Field(
        default=None, description="on-disk response cache, local or s3:// (default: <output>/_cache)"
    )
    search_limit: int = Field(default=5, ge=1, le=50, description="search results weighed when the title is not exact")
    genus_fallback: bool = Field(default=True, description="also fetch the genus article when a species has none")
    max_chars: int = Field(default=600, ge=50, description="budget of the visual-trait excerpt")
    rows_per_file: int = Field(default=1000, ge=1, description="context rows per output Parquet file")
    format_examples_uri: str | None = Field(
        default=None, description="Parquet (class, description) of caption examples (default: the packaged file)"
    )


class SamplingConfig(_Strict):
    """Decoding parameters (published: temperature 0.6, top_p 0.8, max_tokens 50)."""

    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.8, gt=0, le=1)
    max_tokens: int = Field(default=50, ge=1)
    seed: int = Field(default=0, description="per-row seeds derive from it, so reruns are reproducible")


class CaptionConfig(_Strict):
    """Caption generation: engine, model, prompt, batching and quality checks."""

    engine: Literal["vllm", "transformers"] = "vllm"
    model: str = Field(default="", description="local folder, s3:// folder or a hub id (on clusters with network)")
    prompt: str = Field(default="biocap-v1", description="shipped template name or path to a template YAML")
    context_uri: str | None = Field(default=None, description="per-taxon context table from `context` (optional)")
    taxonomy_uri: str | None = Field(
        default=None, description="CSV of taxa (ranks + common_name) whose names count as 'another taxon' in QC"
    )
    max_words: int = Field(default=20, ge=1)
    image_size: int = Field(default=448, ge=28, description="longest side of images given to the engine")
    batch_size: int = Field(default=32, ge=1, description="images per engine call")
    concurrency: tuple[int, int] = Field(
        default=(1, 1), description="engine actors: N, or [min, max] to autoscale (read as (min, max) either way)")
    num_gpus_per_engine: float = Field(default=1.0, ge=0)
    num_cpus_per_engine: float = Field(default=1.0, gt=0)
    num_cpus_per_task: float = Field(default=1.0, gt=0, description="CPU pre/post-processing tasks")
    accelerator_type: str | None = None
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int = Field(default=2048, ge=128)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    quantization: str | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="auto", description="engine weights' dtype: a typo is refused here, not inside an engine actor")
    enable_prefix_caching: bool = True
    sampling: SamplingConfig = SamplingConfig()
    copy_threshold: float = Field(default=0.5, ge=0, le=1, description="share of words copied from the excerpt")
    qc_action: Literal["keep", "drop", "retry"] = Field(
        default="keep", description="failing captions: keep flagged, drop from merged shards, or regenerate"
    )
    max_attempts: int = Field(default=3, ge=1, description="generations per image when qc_action=retry")
    rows_per_file: int = Field(default=1000, ge=1, description="captions per output Parquet file")
    min_context_coverage: float = Field(
        default=0.2, ge=0, le=1,
        description="warn when fewer captions than this share had a Wikipedia excerpt (a wrong join key, say)")
    page_rows: int = Field(default=24, ge=0, description="captions shown beside their images on captions.html")
    engine_max_restarts: int = Field(default=3, ge=0, description="restarts of a crashed engine actor")
    engine_env: dict[str, str] = Field(
        default_factory=dict, description="environment of engine actors, e.g. VLLM_CPU_KVCACHE_SPACE on CPU"
    )

    @field_validator("concurrency", mode="before")
    @classmethod
    def _pool_range(cls, value: Any) -> Any:
        """One number is a fixed pool; a pool's range must hold at least one engine."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            if not 1 <= value[0] <= value[1]:
                raise ValueError(f"{list(value)}: need 1 <= min <= max engines")
        return value

    @model_validator(mode="after")
    def _retry_needs_attempts(self) -> CaptionConfig:
        if self.qc_action == "retry" and self.max_attempts < 2:
            raise ValueError("qc_action=retry regenerates failing captions: set caption.max_attempts to 2 or more")
        return self


class TrainConfig(_Strict):
    """Contrastive training on Ray Train (defaults: the published recipe)."""

    model: str = Field(default="ViT-B-16", description="open_clip model name")
    pretrained: str | None = Field(default=None, description="open_clip checkpoint, local or s3:// (None: random)")
    dual_projector: bool = True
    mode: Literal["sample", "joint"] = "sample"
    caption_weight: float = Field(
        default=1 / 6, ge=0, le=1, description="caption probability (sample mode) or w (joint mode)"
    )
    caption_fallback: Literal["sci", "com", "taxon", "sci_com", "taxon_com"] = Field(
        default="taxon_com", description="text used for records without a caption"
    )
    num_workers: int = Field(default=8, ge=1)
    use_gpu: bool = True
    cpus_per_worker: float = Field(default=4.0, gt=0)
    accelerator_type: str | None = Field(
        default=None, description="node type (Ray's accelerator_type resource) train workers need, e.g. H100")
    batch_size: int = Field(default=4096, ge=1, description="per worker and micro-step")
    grad_accum_steps: int = Field(default=1, ge=1)
    epochs: int = Field(default=50, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(default=1e-6, gt=0)
    warmup_steps: int = Field(default=500, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    grad_checkpointing: bool = True
    grad_clip_norm: float | None = Field(default=None, gt=0, description="None: no clipping (the paper's code)")
    seed: int = 0
    checkpoint_every: int = Field(default=1000, ge=1, description="optimizer steps between checkpoints")
    log_every: int = Field(default=10, ge=1)
    max_failures: int = Field(default=3, ge=-1, description="worker-group restarts from the last checkpoint")
    prefetch_batches: int = Field(default=2, ge=0)
    data_actors: int | None = Field(
        default=None, ge=0,
        description="most decode/augment actors (None: Ray Data scales from 1 to what fits); 0: plain tasks,"
        " cheaper for runs of seconds, since each actor first imports torch and open_clip (~6 CPU-s)",
    )
    shuffle_buffer: int = Field(
        default=2048, ge=0,
        description="rows each worker mixes before batching (decoded: ~0.6 MB each at 224 px); 0: off."
        " Units (shards) are also read in a new order every epoch",
    )
    val_data: str | None = Field(
        default=None, description="a labelled dataset to validate on at every checkpoint (zero-shot, see evaluate)"
    )
    val_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="else hold out this fraction of the training uids (by uid hash)"
    )
    mlflow_tracking_uri: str | None = Field(default=None, description="default: sqlite under the output folder")
    experiment: str = "biocap"


ClassTextType = Literal["as-is", "sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com"]
RankName = Literal["kingdom", "phylum", "class", "order", "family", "genus", "species"]


class EvalConfig(_Strict):
    """Zero-shot classification and retrieval, standalone and during training."""

    text_type: ClassTextType = Field(
        default="taxon_com", description="class names: as-is (the dataset's own name) or a BioCLIP text type"
    )
    rank: RankName = Field(default="species", description="classify at this rank (labels above it: their own)")
    taxonomy_uri: str | None = Field(
        default=None, description="CSV/Parquet of taxa (7 ranks, common_name) to add as candidate classes"
    )
    templates: Literal["openai", "photo"] = Field(
        default="openai", description="OpenAI's ImageNet template ensemble, or 'a photo of {}.' alone"
    )
    batch_size: int = Field(default=256, ge=1)
    concurrency: int = Field(default=1, ge=1, description="embedding actors")
    num_gpus_per_actor: float = Field(default=1.0, ge=0)
    num_cpus_per_actor: float = Field(default=1.0, gt=0)
    num_cpus_per_task: float = Field(default=1.0, gt=0, description="CPU decode tasks")
    report_examples: int = Field(default=4, ge=0, description="retrieval examples pictured in the report")
    mlflow_tracking_uri: str | None = Field(default=None, description="default: sqlite under the output folder")
    experiment: str = "biocap-eval"


class Dimension(_Strict):
    """One axis of a sweep: exactly one of a grid, a choice, or a (log-)uniform range."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Dimension:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        return self


class TuneConfig(_Strict):
    """A Ray Tune sweep whose trials are training runs (defaults: the caption-to-label weighting)."""

    space: dict[str, Dimension] = Field(
        default_factory=lambda: {"train.caption_weight": Dimension(grid=[0.0, 1 / 6, 1 / 3, 0.5])},
        description="train.<field> → values; e.g. train.caption_weight, train.mode, train.lr",
    )
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1, description="trials per grid point (grid) or in all (random, optuna)")
    metric: str = Field(default="val_top1", description="reported at every checkpoint; early stopping uses it")
    mode: Literal["max", "min"] = "max"
    early_stopping: bool = Field(default=True, description="ASHA on the metric, per checkpoint report")
    grace_period: int = Field(default=1, ge=1, description="checkpoint reports before a trial may be stopped")
    reduction_factor: float = Field(default=2.0, gt=1)
    max_concurrent_trials: int | None = Field(default=None, ge=1, description="default: what the cluster fits")
    trial_cpus: float = Field(default=0.25, gt=0, description="CPU of each trial's driver (its workers ask for more)")
    mlflow_tracking_uri: str | None = Field(default=None, description="default: sqlite under the output folder")
    experiment: str = "biocap-tune"

    @field_validator("space")
    @classmethod
    def _train_fields(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in space:
            section, _, name = key.partition(".")
            if section != "train" or name not in TrainConfig.model_fields:
                raise ValueError(f"{key!r}: sweep keys are train.<field>, e.g. train.caption_weight")
        return space


class PipelineConfig(_Strict):
    """What the end-to-end pipeline runs besides each stage's own settings."""

    context_source: str | None = Field(
        default=None,
        description="offline species descriptions (JSONL/Parquet) to import; empty: fetch from Wikipedia",
    )


class Config(_Strict):
    """The whole pipeline's configuration; each stage reads its own section."""

    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    context: ContextConfig = ContextConfig()
    caption: CaptionConfig = CaptionConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()
    pipeline: PipelineConfig = PipelineConfig()


PRESETS = ("local", "cluster")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("biocap_ray") / "configs" / f"{name}.yaml"))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {field}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_config(source: str | Path | None = "local", overrides: list[str] | None = None) -> Config:
    """Load a preset name (``local``, ``cluster``) or a YAML path, then apply ``a.b=value`` overrides."""
    origin = "defaults"
    tree: dict[str, Any] = {}
    if source is not None:
        path = Path(source)
        if not path.exists() and str(source) in PRESETS:
            path = preset_path(str(source))
        if not path.exists():
            raise ConfigError(f"config {source!r}: no such file or preset (presets: {', '.join(PRESETS)})")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path}: not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config {path}: top level must be a mapping of sections")
        origin = str(path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else None)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None
