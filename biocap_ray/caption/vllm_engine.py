"""The vLLM engine: one vLLM ``AsyncLLM`` per actor of a Ray Data actor pool.

Ray Data still owns the pool (autoscaling range, GPUs and accelerator type per actor, bounded
actor restarts) and the batching; the actor owns the engine. We do not use ``ray.data.llm``'s
processor here because (1) its engine stage drops vLLM's per-request ``num_cached_tokens``, and its
engine metrics need Ray Serve, so the prefix-cache hit rate could not be reported; (2) when the
engine process dies it exits the actor and Ray Data restarts it without limit, so a row that kills
the engine is retried forever instead of becoming an error row. Owning the engine fixes both
(see ``engine.EngineActor``).

The prompt arrives rendered by the prepare stage with the model's own chat template; the image
arrives decoded and bounded. The async engine (on an event loop thread of the actor) is the one
vLLM serves with: when its engine process dies, every request in flight fails with
``EngineDeadError`` (the offline ``vllm.LLM`` of vLLM 0.32 waits forever instead).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid

from PIL import Image

from biocap_ray.caption.engine import EngineActor, Generation
from biocap_ray.caption.prepare import CaptionSetup
from biocap_ray.config import CaptionConfig
from biocap_ray.models.download import resolve_model


def engine_kwargs(cfg: CaptionConfig, setup: CaptionSetup) -> dict:
    """vLLM engine arguments from the caption config."""
    kwargs = {
        "model": resolve_model(setup.model),
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "dtype": cfg.dtype,
        "max_num_seqs": cfg.batch_size,
        "trust_remote_code": setup.family.trust_remote_code,
        **setup.family.engine_args,
        # one seed per engine (vLLM's CPU backend fails on per-request seeds); a QC retry draws
        # a new sample from the engine's advanced random state
        "seed": setup.seed,
        # an engine actor has no terminal: a weight-loading bar would reach the job log as redraws
        "use_tqdm_on_load": False,
    }
    if cfg.quantization:
        kwargs["quantization"] = cfg.quantization
    if cfg.num_gpus_per_engine > 0:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return kwargs


def sampling_params(sampling: dict, stop: tuple[str, ...] = ()):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(temperature=sampling["temperature"], top_p=sampling["top_p"],
                          max_tokens=sampling["max_tokens"], output_kind=RequestOutputKind.FINAL_ONLY,
                          stop=list(stop) or None)


class VLLMCaptioner(EngineActor):
    def __init__(self, setup: CaptionSetup, cfg: CaptionConfig, ledger=None):
        self.engine = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="vllm-engine-loop", daemon=True).start()
        super().__init__(setup, cfg, ledger)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def load(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_kwargs(self.cfg, self.setup))

        async def start():
            return AsyncLLM.from_engine_args(args)

        self.engine = self._run(start())
        self.params = sampling_params(self.sampling, self.setup.family.stop)

    def unload(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # a dead engine may fail to shut down; its processes are gone anyway
                pass
        gc.collect()

    def is_dead(self, exc: Exception) -> bool:
        from vllm.v1.engine.exceptions import EngineDeadError

        return self.engine is None or isinstance(exc, EngineDeadError)

    def generate(self, prompts: list[str], images: list[Image.Image], seed: int) -> list[Generation | Exception]:
        engine, params = self.engine, self.params

        async def one(prompt: str, image: Image.Image):
            final = None
            request = {"prompt": prompt, "multi_modal_data": {"image": image}}
            async for final in engine.generate(request, params, request_id=uuid.uuid4().hex):
                pass
            return Generation(final.outputs[0].text, len(final.prompt_token_ids), len(final.outputs[0].token_ids),
                              final.num_cached_tokens or 0)

        async def batch():
            return await asyncio.gather(*(one(p, im) for p, im in zip(prompts, images)), return_exceptions=True)

        return self._run(batch())
