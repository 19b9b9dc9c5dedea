"""Training pieces that need no Ray: the dual projector, text-type mixing, export."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from biocap_ray.config import load_config
from biocap_ray.models.checkpoints import CAPTION_FILE, LABEL_FILE, export
from biocap_ray.models.clip import build_model
from biocap_ray.train.objective import (
    LABEL_TYPES,
    label_text_type,
    sample_probabilities,
    sample_text_type,
)


def test_text_type_draw_is_a_pure_function_of_seed_and_step():
    probs = sample_probabilities(1 / 6)
    draws = [sample_text_type(7, s, probs) for s in range(3000)]
    assert draws == [sample_text_type(7, s, probs) for s in range(3000)]  # every rank agrees
    assert draws != [sample_text_type(8, s, probs) for s in range(3000)]
    counts = Counter(draws)
    assert set(counts) == {*LABEL_TYPES, "caption"}
    assert all(abs(n / 3000 - 1 / 6) < 0.03 for n in counts.values())
    state = torch.random.get_rng_state()
    sample_text_type(7, 1, probs)
    assert torch.equal(state, torch.random.get_rng_state())  # no global RNG touched


def test_caption_probability_is_the_knob():
    assert Counter(sample_text_type(0, s, sample_probabilities(0.0)) for s in range(500))["caption"] == 0
    assert set(sample_text_type(0, s, sample_probabilities(1.0)) for s in range(50)) == {"caption"}
    assert {label_text_type(0, s) for s in range(200)} == set(LABEL_TYPES)


def test_dual_projector_starts_as_copies_and_exports_to_plain_open_clip(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = build_model("biocap-tiny", None)
    assert torch.equal(model.label_proj, model.caption_proj)
    assert torch.equal(model.caption_logit_scale, model.clip.logit_scale)
    assert model.label_proj.data_ptr() != model.caption_proj.data_ptr()
    with torch.no_grad():
        model.caption_proj.add_(0.5)  # diverge, as training would
    images = torch.randn(3, 3, 32, 32)
    tokens = tokenizer(["a photo of Panthera leo.", "a photo of lion.", "a lion with a mane"])
    model.eval()
    with torch.no_grad():
        ours = {p: model.image_features(images, p) for p in ("label", "caption")}
        text = model.text_features(tokens)
    export(model, str(tmp_path))
    for name, projector in ((LABEL_FILE, "label"), (CAPTION_FILE, "caption")):
        clip, _, _ = open_clip.create_model_and_transforms("biocap-tiny", pretrained=str(tmp_path / name))
        clip.eval()
        with torch.no_grad():
            assert torch.allclose(clip.encode_image(images, normalize=True), ours[projector], atol=1e-6)
            assert torch.allclose(clip.encode_text(tokens, normalize=True), text, atol=1e-6)
    assert not torch.allclose(ours["label"], ours["caption"])


def test_single_projector_flag():
    model, _ = build_model("biocap-tiny", None, dual_projector=False)
    assert not hasattr(model, "caption_proj")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.image_features(x, "caption"), model.image_features(x, "label"))


def test_the_single_gpu_benchmark_runs_its_code_at_tiny_size_on_cpu(monkeypatch, capsys):
    """The H100 script's own path (model, synthetic batch, bf16 autocast, both checkpointing
    settings, FLOP estimate) on a tiny model: it must print one positive rate per row."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_gpu.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--device", "cpu", "--model", "biocap-tiny", "--batches", "2,4"])
    runpy.run_path(str(script), run_name="__main__")
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("False", "True"))]
    assert [(r[0], r[1]) for r in rows] == [("False", "2"), ("False", "4"), ("True", "2"), ("True", "4")]
    assert all(float(r[2]) > 0 for r in rows), rows


def test_weight_decay_spares_exactly_what_the_papers_code_spares():
    from biocap_ray.train.loop import param_groups

    model, _ = build_model("biocap-tiny", None)
    groups = param_groups(model, 0.2)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2]
    assert all(p.ndim < 2 for p in groups[0]["params"])  # the paper's rule names no 2-D parameter
    names = {id(p): n for n, p in model.named_parameters()}
    spared, decayed = ({names[id(p)] for p in g["params"]} for g in groups)
    assert {"clip.logit_scale", "caption_logit_scale", "clip.visual.class_embedding",
            "clip.ln_final.weight", "clip.ln_final.bias"} <= spared
    # 2-D embeddings and the projectors are decayed, as open_clip's trainer does
    assert {"clip.token_embedding.weight", "clip.positional_embedding", "clip.visual.positional_embedding",
            "label_proj", "caption_proj", "clip.visual.conv1.weight"} <= decayed


def test_training_optimizer_is_fused_adamw_with_the_papers_groups_and_update():
    """The fused optimizer keeps the decay groups and makes the update the per-tensor loop makes."""
    from biocap_ray.train.loop import build_optimizer, param_groups

    t = load_config("local", ["train.model=biocap-tiny", "train.weight_decay=0.2", "train.lr=0.01"]).train
    # float64: attention's key biases get a gradient of rounding noise only, which Adam's
    # normalisation would otherwise blow up into different steps in the two implementations
    model, reference = build_model(t.model, None)[0].double(), build_model(t.model, None)[0].double()
    reference.load_state_dict(model.state_dict())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    fused = build_optimizer(model, t)
    loop = torch.optim.AdamW(param_groups(reference, t.weight_decay), lr=t.lr, betas=t.betas, eps=t.eps,
                             foreach=False)
    assert [(g["fused"], g["weight_decay"]) for g in fused.param_groups] == [(True, 0.0), (True, 0.2)]
    for step in range(3):
        for m, opt in ((model, fused), (reference, loop)):
            torch.manual_seed(step)
            images, tokens = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(1, 400, (4, 32))
            image, texts, scales = m(images, [tokens], ["label"])
            open_clip.ClipLoss()(image["label"], texts[0], scales["label"]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert not torch.equal(model.state_dict()["label_proj"], initial["label_proj"])  # it did train


@pytest.mark.parametrize("mode", ["sample", "joint"])
def test_two_micro_batches_of_b_are_one_batch_of_2b(mode):
    """Accumulation contrasts the whole accumulated batch: same loss, same gradients."""
    import open_clip

    from biocap_ray.train.loop import accumulated_backward

    cfg = load_config("local", [f"train.mode={mode}", "train.caption_weight=0.5"])
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(8, 3, 32, 32, generator=gen), "tokens": torch.randint(1, 400, (8, 6, 32), generator=gen)}
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    results = []
    for micro in ([batch], halves):
        torch.manual_seed(0)
        model, _ = build_model("biocap-tiny", None)
        calls = []
        loss, _ = accumulated_backward(model, open_clip.ClipLoss(), micro, 3, cfg,
                                       lambda micro_loss: (calls.append(1), micro_loss.backward()))
        assert len(calls) == len(micro)
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (whole, whole_grads), (accum, accum_grads) = results
    assert abs(whole - accum) < 1e-5
    assert whole_grads.keys() == accum_grads.keys() and len(whole_grads) > 10
    for name, grad in whole_grads.items():
        assert torch.allclose(grad, accum_grads[name], atol=1e-6, rtol=1e-4), name


def test_accumulation_all_reduces_once_per_step_under_ddp():
    """DDP's gradient all-reduce runs in the last micro-step only (``no_sync`` before it): three
    micro-batches communicate exactly as much as one batch."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from biocap_ray.train.loop import accumulated_backward

    cfg = load_config("local", ["train.mode=joint"])
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(6, 3, 32, 32, generator=gen), "tokens": torch.randint(1, 400, (6, 6, 32), generator=gen)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model, _ = build_model("biocap-tiny", None)
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        reduced = []

        def counting_hook(state, bucket):  # DDP's own all-reduce, counted
            reduced.append(bucket.index())
            return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])

        ddp.register_comm_hook(None, counting_hook)
        accumulated_backward(ddp, open_clip.ClipLoss(), [batch], 3, cfg, lambda loss: loss.backward())
        one_batch = len(reduced)
        reduced.clear()
        micro = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2, 4)]
        accumulated_backward(ddp, open_clip.ClipLoss(), micro, 3, cfg, lambda loss: loss.backward())
        assert one_batch > 0 and len(reduced) == one_batch
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("model", ["biocap-tiny", "ViT-B-16"])
def test_the_one_preprocessing_source_is_what_open_clip_builds_for_the_architecture(model):
    """Training, validation and evaluation transform images with ``tools_for`` (without building
    a model); it must be what ``open_clip.create_model_and_transforms`` returns for the architecture."""
    from biocap_ray.models.clip import register_model_configs, tools_for

    register_model_configs()
    _, train_tf, eval_tf = open_clip.create_model_and_transforms(model)
    assert repr(tools_for(model, True)[0]) == repr(train_tf)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    assert torch.equal(tools_for(model, False)[0](image), eval_tf(image))
