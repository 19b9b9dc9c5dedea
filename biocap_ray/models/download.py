"""Model weights as local paths on the node that needs them: s3:// copies once per node,
built-in tiny models built once per node, hub ids passed through (vLLM and transformers read
them from their own caches)."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil

from biocap_ray import storage

# built-in tiny random captioners (real architectures; no model hub needed): name -> builder
TINY_MODELS = {
    "builtin:tiny-qwen2-vl": "biocap_ray.models.tiny_qwen2_vl:build_tiny_qwen2_vl",
    "builtin:tiny-internvl3": "biocap_ray.models.tiny_internvl3:build_tiny_internvl3",
}
TINY_MODEL = "builtin:tiny-qwen2-vl"


def _model_cache() -> str:
    return os.environ.get("BIOCAP_MODEL_CACHE", "/tmp/biocap_models")


def _publish(tmp: str, local: str) -> None:
    """Mark a finished copy complete and move it into place (the first of racing processes wins)."""
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
        os.replace(tmp, local)
    except OSError:  # another process published first: its copy is as good
        if not os.path.exists(os.path.join(local, ".complete")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(model: str) -> str:
    """A local path for ``model``: s3:// folders or files are copied once per node, ``builtin:`` tiny
    models (random weights, for demos and tests) are built once per node; hub ids pass through."""
    if model in TINY_MODELS:
        local = os.path.join(_model_cache(), model.removeprefix("builtin:"))
        if not os.path.exists(os.path.join(local, ".complete")):
            module, builder = TINY_MODELS[model].split(":")
            tmp = f"{local}.tmp-{os.getpid()}"
            getattr(importlib.import_module(module), builder)(tmp)
            _publish(tmp, local)
        return local
    if not storage.is_s3(model):
        return model
    import pyarrow.fs as pafs

    fs, path = storage.resolve(model)
    is_file = fs.get_file_info(path).type == pafs.FileType.File
    local = os.path.join(_model_cache(), hashlib.sha1(model.encode()).hexdigest()[:12])
    if not os.path.exists(os.path.join(local, ".complete")):
        tmp = f"{local}.tmp-{os.getpid()}"
        target = os.path.join(tmp, path.rsplit("/", 1)[-1]) if is_file else tmp  # keep a file's name and suffix
        os.makedirs(tmp, exist_ok=True)
        pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        _publish(tmp, local)
    return os.path.join(local, path.rsplit("/", 1)[-1]) if is_file else local
