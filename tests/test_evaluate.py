"""Evaluation: metrics against brute force, and the Ray Data stage against open_clip's own API."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import open_clip
import pytest
import torch
from conftest import sample_subset

from biocap_ray.config import load_config
from biocap_ray.data.taxonomy import RANKS, Taxon
from biocap_ray.evaluate.classes import ClassSet
from biocap_ray.evaluate.metrics import recall_at_k, zero_shot_metrics
from biocap_ray.evaluate.run import score

ANIMAL = dict(kingdom="Animalia", phylum="Chordata", class_="Mammalia", order="Carnivora")


def _right(pred: Taxon, truth: Taxon) -> bool:
    """Brute force: the prediction names the same taxon as the label on every rank the label has."""
    return all(pred.rank(r) == truth.rank(r) for r in RANKS if truth.rank(r) is not None)


def test_zero_shot_metrics_equal_a_brute_force_count():
    rng = np.random.default_rng(0)
    classes = [Taxon(**ANIMAL, family=f"F{i % 3}", genus=f"G{i % 5}", species=f"s{i}") for i in range(12)]
    truth = [classes[i] for i in rng.integers(0, 12, 200)]
    truth += [Taxon(**ANIMAL, family="F1", genus="G1")] * 10  # labelled to genus only
    topk = np.stack([rng.permutation(12)[:5] for _ in truth])
    got = zero_shot_metrics(truth, topk, classes)
    for k in (1, 3, 5):
        assert got[f"top{k}"] == pytest.approx(np.mean([any(_right(classes[c], t) for c in row[:k])
                                                        for row, t in zip(topk, truth)]))
        per_label: dict = {}
        for row, t in zip(topk, truth):
            per_label.setdefault(t.key(), []).append(any(_right(classes[c], t) for c in row[:k]))
        assert got[f"top{k}_macro"] == pytest.approx(np.mean([np.mean(v) for v in per_label.values()]))
    assert got["n_species"] == 200 and got["n_genus"] == 210
    assert got["acc_genus"] == pytest.approx(np.mean([classes[row[0]].genus == t.genus for row, t in zip(topk, truth)]))


def test_a_genus_label_is_right_when_any_species_of_its_genus_is_predicted():
    lion = Taxon(**ANIMAL, family="Felidae", genus="Panthera", species="leo")
    wolf = Taxon(**ANIMAL, family="Canidae", genus="Canis", species="lupus")
    panthera = Taxon(**ANIMAL, family="Felidae", genus="Panthera")
    got = zero_shot_metrics([panthera, panthera], np.array([[0], [1]]), [lion, wolf], ks=(1,))
    assert got["top1"] == 0.5 and got["acc_family"] == 0.5 and "acc_species" not in got
    # the standard (exact-class) accuracy: a species is not the genus class
    assert got["top1_exact"] == 0.0
    exact = zero_shot_metrics([panthera, lion], np.array([[2], [0]]), [lion, wolf, panthera], ks=(1,))
    assert exact["top1_exact"] == 1.0 and exact["top1"] == 1.0


def test_exact_accuracy_equals_a_brute_force_count():
    rng = np.random.default_rng(4)
    classes = [Taxon(**ANIMAL, family="F", genus=f"G{i % 3}", species=f"s{i}" if i < 9 else None) for i in range(12)]
    truth = [classes[i] for i in rng.integers(0, 12, 100)]
    topk = np.stack([rng.permutation(12)[:5] for _ in truth])
    got = zero_shot_metrics(truth, topk, classes)
    for k in (1, 3, 5):
        assert got[f"top{k}_exact"] == pytest.approx(np.mean([t in [classes[c] for c in row[:k]]
                                                              for row, t in zip(topk, truth)]))
    assert got["top1_exact"] < got["top1"]  # genus labels also count species of their genus in top1


def test_class_names_do_not_depend_on_the_order_rows_arrive_in():
    rows = [dict(**ANIMAL, family="Felidae", genus="Panthera", species="leo", common_name=name, uid=str(i))
            for i, name in enumerate(["lion", "African lion", "lion", None])]
    rows.append(dict(**ANIMAL, family="Canidae", genus="Canis", species="lupus", common_name="wolf", uid="w"))
    built = [ClassSet.build(order, "com") for order in (rows, rows[::-1], rows[1:] + rows[:1])]
    assert all(b.names == built[0].names for b in built) and built[0].names == ["wolf", "lion"]
    tie = [dict(rows[0], common_name="b lion"), dict(rows[0], common_name="a lion")]
    assert ClassSet.build(tie, "com").names == ClassSet.build(tie[::-1], "com").names == ["a lion"]


def test_hf_hub_specs_are_rejected_with_a_clear_error():
    from biocap_ray.models.checkpoints import ModelSpec

    with pytest.raises(ValueError, match="hf-hub:.*ARCH:PATH"):
        ModelSpec.parse("bioclip=hf-hub:imageomics/bioclip")


def test_recall_equals_brute_force_ranking():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(60, 16))
    text = image + rng.normal(scale=1.5, size=(60, 16))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    got = recall_at_k(image, text)
    sims = image @ text.T
    for k in (1, 5, 10):
        i2t = np.mean([i in np.argsort(-sims[i])[:k] for i in range(60)])
        t2i = np.mean([i in np.argsort(-sims[:, i])[:k] for i in range(60)])
        assert got[f"i2t_r{k}"] == pytest.approx(i2t) and got[f"t2i_r{k}"] == pytest.approx(t2i)
    assert 0 < got["i2t_r1"] < 1  # the noise makes this a real test


def test_identical_embeddings_for_matching_pairs_score_100_percent():
    """An oracle whose image embedding is its class's text embedding and its caption's embedding."""
    rows_in = [dict(kingdom="Animalia", phylum="Chordata", genus=f"G{i % 7}", species=f"s{i % 7}", uid=f"u{i}",
                    caption=f"caption {i}") for i in range(21)]
    classes = ClassSet.build(rows_in, "sci")
    rng = np.random.default_rng(2)
    class_emb = rng.normal(size=(len(classes), 32))
    class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
    own = np.array([classes.index(Taxon.from_mapping(r)) for r in rows_in])
    caption_emb = rng.normal(size=(21, 32))
    caption_emb /= np.linalg.norm(caption_emb, axis=1, keepdims=True)
    image_label = class_emb[own]  # the label projector lands on the class text...
    rows = {c: np.array([r.get(c) or "" for r in rows_in], dtype=object)
            for c in ("uid", *RANKS, "scientific_name", "common_name", "caption")}
    shuffled = caption_emb[rng.permutation(21)]  # a variant whose captions point at the wrong images
    rows.update(error=np.array([""] * 21, dtype=object), image_caption_projector=caption_emb.copy(),
                text_caption_projector=caption_emb, image_paper=caption_emb.copy(), text_paper=shuffled,
                topk=np.argsort(-(image_label @ class_emb.T), axis=1)[:, :5])  # ...the caption projector on the caption
    got = score(rows, classes, "species", "sci")
    assert got["zero_shot"]["top1"] == 1.0 and got["zero_shot"]["top1_macro"] == 1.0
    assert got["zero_shot"]["top1_exact"] == 1.0 and got["zero_shot"]["top1_exact_macro"] == 1.0
    assert all(got["zero_shot"][f"acc_{r}"] == 1.0 for r in ("kingdom", "genus", "species"))
    mine = got["retrieval_caption_projector"]
    assert mine["i2t_r1"] == 1.0 and mine["t2i_r1"] == 1.0
    assert got["retrieval_paper"]["i2t_r1"] < 0.5  # each variant is scored on its own embeddings
    assert got["confusions"] == []


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_each_retrieval_variant_uses_its_own_projector_and_prompt():
    """With two projectors that differ, "paper" is the label projector with "a photo of " +
    caption and "caption_projector" the caption projector with the caption as written."""
    from biocap_ray.evaluate.embed import Embedder
    from biocap_ray.evaluate.records import LABEL_COLUMNS
    from biocap_ray.models.checkpoints import ModelSpec
    from biocap_ray.models.clip import build_model

    embedder = Embedder(ModelSpec.parse("biocap-tiny"), [], "photo", k=5)
    torch.manual_seed(0)
    model, tokenizer = build_model("biocap-tiny", None)  # a training run's model: two projectors
    embedder.model, embedder.tokenizer = model.eval(), tokenizer
    with torch.no_grad():  # the caption head starts as a copy of the label head; training moves it
        model.caption_proj.add_(0.1 * torch.randn_like(model.caption_proj))
    assert model.dual_projector
    captions = ["A brown bird on a branch.", "A grey cat in the grass."]
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    batch = {c: np.array(["x", "y"], dtype=object) for c in LABEL_COLUMNS}
    batch.update(image=images, caption=np.array(captions, dtype=object), error=np.array([None, None], dtype=object))
    out = embedder(batch)
    with torch.no_grad():
        pooled = model.clip.visual(torch.from_numpy(images))
        want = {"paper": (model.project(pooled, "label"), ["a photo of " + c for c in captions]),
                "caption_projector": (model.project(pooled, "caption"), captions)}
        for variant, (image, prompts) in want.items():
            assert np.allclose(out[f"image_{variant}"], image.numpy(), atol=1e-5), variant
            assert np.allclose(out[f"text_{variant}"], model.text_features(tokenizer(prompts)).numpy(), atol=1e-5)
    assert not np.allclose(out["image_paper"], out["image_caption_projector"], atol=1e-3)


def test_evaluate_matches_open_clip_and_a_brute_force_argmax(tmp_path):
    from biocap_ray.evaluate.run import evaluate

    data = sample_subset(tmp_path / "data", 20, captions=True, corrupt=1)
    torch.manual_seed(3)
    from biocap_ray.models.clip import register_model_configs

    register_model_configs()
    reference = open_clip.create_model("biocap-tiny")
    weights = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    cfg = load_config("local", ["evaluate.num_gpus_per_actor=0", "evaluate.num_cpus_per_actor=0.5",
                                "evaluate.num_cpus_per_task=0.5", "evaluate.batch_size=8", "evaluate.text_type=sci"])
    out = tmp_path / "eval"
    result = evaluate(str(data), str(out), cfg, [f"mine=biocap-tiny:{weights}", "biocap-tiny"])
    got = json.loads((out / "metrics.json").read_text())["models"]["mine"]

    # brute force with open_clip's own loading, transforms, encoders and templates
    model, _, preprocess = open_clip.create_model_and_transforms("biocap-tiny", pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer("biocap-tiny")
    model.eval()
    rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if "corrupt" not in r["file"]]
    classes = sorted({Taxon.from_mapping(r) for r in rows}, key=lambda t: tuple(x or "" for x in t.key()))
    from PIL import Image

    with torch.no_grad():
        text = []
        for t in classes:
            emb = model.encode_text(tokenizer([tpl(t.scientific_name) for tpl in open_clip.OPENAI_IMAGENET_TEMPLATES]),
                                    normalize=True).mean(0)
            text.append(emb / emb.norm())
        text = torch.stack(text)
        images = torch.stack([preprocess(Image.open(data / r["file"]).convert("RGB")) for r in rows])
        image = model.encode_image(images, normalize=True)
        captions = model.encode_text(tokenizer([r["caption"] for r in rows]), normalize=True)
    ranked = (image @ text.T).argsort(dim=1, descending=True).numpy()
    truth = [Taxon.from_mapping(r) for r in rows]
    for k in (1, 3, 5):
        want = np.mean([any(_right(classes[c], t) for c in row[:k]) for row, t in zip(ranked, truth)])
        assert got["zero_shot"][f"top{k}"] == pytest.approx(want)
    with torch.no_grad():
        photo = model.encode_text(tokenizer(["a photo of " + r["caption"] for r in rows]), normalize=True)
    # an open_clip export of a plain model: its one projector serves both variants; the prompts differ
    for variant, texts in (("caption_projector", captions), ("paper", photo)):
        sims = (image @ texts.T).numpy()
        for k in (1, 5, 10):
            assert got[f"retrieval_{variant}"][f"i2t_r{k}"] == pytest.approx(
                np.mean([i in np.argsort(-sims[i])[:k] for i in range(len(rows))]))
            assert got[f"retrieval_{variant}"][f"t2i_r{k}"] == pytest.approx(
                np.mean([i in np.argsort(-sims[:, i])[:k] for i in range(len(rows))]))
    assert got["errors"] == 1
    assert list(json.loads((out / "errors.json").read_text())) == ["corrupt_0"]

    # the comparison, the report and its pictures, and MLflow
    table = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["model"] for r in table] == ["mine", "biocap-tiny:random"]
    assert float(table[0]["paper_i2t_r1"]) == pytest.approx(got["retrieval_paper"]["i2t_r1"])
    assert float(table[0]["caption_projector_t2i_r5"]) == pytest.approx(got["retrieval_caption_projector"]["t2i_r5"])
    report = (out / "report.md").read_text()
    assert "| mine |" in report and "accuracy_by_rank.png" in report
    assert "| mine | paper |" in report and "| mine | caption_projector |" in report
    for png in ("accuracy_by_rank.png", "retrieval_examples.png", "confusions_0.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])
    found = mlflow.search_runs(experiment_names=["biocap-eval"], output_format="list")
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.data.tags["model"] for r in children) == ["biocap-tiny:random", "mine"]
    assert {r.data.metrics["top1"] for r in children if r.data.tags["model"] == "mine"} == {got["zero_shot"]["top1"]}
    assert {r.data.metrics["paper_mean_recall"] for r in children
            if r.data.tags["model"] == "mine"} == {got["retrieval_paper"]["mean_recall"]}
    assert list((out / "mlartifacts").rglob("report.md"))  # artifacts beside the embedded store


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_evaluate_at_a_chosen_rank_on_s3(tmp_path, s3_bucket):
    """Classes are the genera; a training checkpoint folder's dual projectors load."""
    from biocap_ray import storage
    from biocap_ray.cli import main

    data = sample_subset(tmp_path / "data", 12, captions=True)
    for path in data.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{s3_bucket}/data/{path.relative_to(data)}", path.read_bytes())
    storage.write_bytes(f"{s3_bucket}/captions/captions.html", b"<html>the caption stage's page</html>")
    code = main(["evaluate", f"{s3_bucket}/data", f"{s3_bucket}/eval", "--model", "biocap-tiny",
                 "--captions-page", f"{s3_bucket}/captions/captions.html", "--set", "evaluate.rank=genus", "--set", "evaluate.templates=photo",
                 "--set", "evaluate.num_gpus_per_actor=0", "--set", "evaluate.num_cpus_per_actor=0.5",
                 "--set", "evaluate.num_cpus_per_task=0.5", "--set", f"evaluate.mlflow_tracking_uri=sqlite:///{tmp_path}/m.db"])
    assert code == 0
    metrics = json.loads(storage.read_bytes(f"{s3_bucket}/eval/metrics.json"))
    zs = metrics["models"]["biocap-tiny:random"]["zero_shot"]
    assert "acc_species" not in zs and zs["n_genus"] > 0
    genera = {r["genus"] for r in csv.DictReader(open(data / "metadata.csv")) if r["genus"]}
    assert zs["classes"] >= len(genera)
    # the report links the captions page, copied beside it
    assert "[captions.html](captions.html)" in storage.read_bytes(f"{s3_bucket}/eval/report.md").decode()
    assert storage.read_bytes(f"{s3_bucket}/eval/captions.html") == b"<html>the caption stage's page</html>"


def test_benchmark_layouts_with_filepath_and_a_class_column_give_as_is_classes(tmp_path):
    from biocap_ray.data.readers import read_metadata

    (tmp_path / "meta.csv").write_text("filepath,classname\na/1.jpg,Puma concolor\na/2.jpg,Puma concolor\n"
                                       "b/3.jpg,Lynx rufus\n")
    rows = read_metadata(str(tmp_path / "meta.csv")).to_pylist()
    assert [r["file"] for r in rows] == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    classes = ClassSet.build(rows, "as-is")
    assert classes.names == ["Lynx rufus", "Puma concolor"]
    assert [t.genus for t in classes.taxa] == ["Lynx", "Puma"]
    (tmp_path / "bad.csv").write_text("image,kind\nx.jpg,cat\n")
    with pytest.raises(ValueError, match="bad.csv: missing column 'file'"):
        read_metadata(str(tmp_path / "bad.csv"))


def test_the_retrieval_picture_draws_garbled_captions_without_missing_glyphs():
    """A random-weight model writes control characters and stray scripts; the plot shows ``·``."""
    import warnings

    from PIL import Image

    from biocap_ray.evaluate.report import plot_retrieval

    garbled = "\ufffdlogis\x0e\x17 t\ufffd 的 \u048c beak"
    example = {"image": Image.new("RGB", (16, 16)), "caption": garbled, "retrieved": [(garbled, True), ("ok", False)]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plot_retrieval([example])
    assert png.startswith(b"\x89PNG") and not [w for w in caught if "Glyph" in str(w.message)]
