"""The Hugging Face transformers engine: ``generate`` in a Ray Data actor pool, for small runs on
CPU or one GPU, and for machines without vLLM."""

from __future__ import annotations

from PIL import Image

from biocap_ray.caption.engine import EngineActor, Generation
from biocap_ray.caption.prepare import load_processor
from biocap_ray.models.download import resolve_model


class TransformersCaptioner(EngineActor):
    def load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if self.cfg.dtype == "auto" else getattr(torch, self.cfg.dtype)
        trust = self.setup.family.trust_remote_code
        self.processor = load_processor(self.setup.model, trust)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            resolve_model(self.setup.model), dtype=torch_dtype, trust_remote_code=trust
        ).to(self.device).eval()

    def generate(self, prompts: list[str], images: list[Image.Image], seed: int) -> list[Generation]:
        import torch

        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
        torch.manual_seed(seed)  # this actor's own process: per-batch reproducibility
        do_sample = self.sampling["temperature"] > 0
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.sampling["max_tokens"], do_sample=do_sample,
                temperature=self.sampling["temperature"] if do_sample else None,
                top_p=self.sampling["top_p"] if do_sample else None,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        n_in = inputs["attention_mask"].sum(dim=1).tolist()
        return [Generation(text, n, int((row != pad).sum())) for text, n, row in zip(texts, n_in, new)]
