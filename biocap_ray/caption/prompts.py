"""Versioned caption prompt templates, rendered into chat messages.

A template is a small YAML file (see ``prompts/biocap-v1.yaml``); users can pass their own
path. Messages are turned into the model's prompt string by the model's own chat template
(``processor.apply_chat_template``): special tokens are never written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

ORDERS = ("static_first", "image_first")


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    order: Literal["static_first", "image_first"]
    system: str
    examples: str
    reference: str
    request: str

    @classmethod
    def load(cls, name_or_path: str) -> PromptTemplate:
        """A shipped template by name (``biocap-v1``) or a YAML file with the same fields."""
        path = Path(name_or_path)
        if not path.exists():
            path = Path(str(resources.files("biocap_ray.caption") / "prompts" / f"{name_or_path}.yaml"))
        if not path.exists():
            raise ValueError(f"prompt template {name_or_path!r}: no such file or shipped template")
        data = yaml.safe_load(path.read_text())
        missing = [f for f in cls.__dataclass_fields__ if f not in data]
        if missing:
            raise ValueError(f"prompt template {path}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"prompt template {path}: unknown field(s) {', '.join(unknown)}")
        if data["order"] not in ORDERS:
            raise ValueError(f"prompt template {path}: order must be one of {', '.join(ORDERS)}")
        return cls(**{k: str(v).strip() for k, v in data.items()})

    def messages(self, name: str, examples: list[str], reference: str | None, max_words: int) -> list[dict]:
        """Chat messages for one image; the image sits where ``order`` puts it."""
        static = self.examples.format(examples="\n".join(f"{i}. {e}" for i, e in enumerate(examples, 1)))
        dynamic = []
        if reference:
            dynamic.append(self.reference.format(reference=reference))
        dynamic.append(self.request.format(max_words=max_words, name=name))
        image = {"type": "image"}
        if self.order == "static_first":
            content = [{"type": "text", "text": static}, image, {"type": "text", "text": "\n\n".join(dynamic)}]
        else:
            content = [image, {"type": "text", "text": "\n\n".join([static, *dynamic])}]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]
