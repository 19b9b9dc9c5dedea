"""The cloud cluster as shipped: `cluster.yaml` passes Ray's own cluster-config validation
(offline, no AWS call), its node types fit what the `cluster` preset asks for, and the presets
carry the published recipe and differ from each other in values only."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import ray
import yaml
from conftest import REPO
from pydantic import BaseModel

from biocap_ray.config import Config, load_config, preset_path

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def no_aws(monkeypatch):
    """Any attempt to build an AWS client fails the test: validation must stay offline."""
    import boto3
    import botocore.session

    def refuse(*args, **kwargs):
        raise AssertionError(f"an AWS client was requested during offline validation: {args}")

    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3, "resource", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "resource", refuse)
    monkeypatch.setattr(botocore.session.Session, "create_client", refuse)


def prepared(config: dict) -> dict:
    """What `ray up` does before it talks to AWS: fill in defaults, then validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_ray_validates_the_cluster_config_offline(raw, no_aws):
    full = prepared(raw)
    assert full["provider"]["type"] == "aws"
    assert full["head_node_type"] in full["available_node_types"]


def test_validation_is_not_vacuous(raw, no_aws):
    """The same validation rejects a misspelt field, so passing it means something."""
    import jsonschema

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["caption_gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        prepared(broken)


def test_node_configs_are_valid_ec2_run_instances_arguments(raw):
    """Ray passes node_config to EC2 RunInstances; check it against botocore's bundled API model."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in raw["available_node_types"].items():
        params = {**node_type["node_config"], "MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_head_node_type_exists_and_keeps_tasks_off_the_head(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert "GPU" not in head["resources"]


def test_gpu_worker_types_scale_from_zero(raw):
    gpu_types = {n: t for n, t in raw["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2, "a caption and a training GPU type"
    for name, node_type in gpu_types.items():
        assert node_type.get("min_workers") == 0, f"{name} would keep paying for idle GPUs"
    assert sum(t.get("min_workers", 0) for t in raw["available_node_types"].values()) == 0


def test_docker_image_matches_the_installed_ray_and_python(raw):
    image = raw["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert match, f"expected a rayproject/ray GPU image with an exact version, got {image}"
    assert match.group(1) == ray.__version__
    assert (int(match.group(2)), int(match.group(3))) == sys.version_info[:2]
    assert "head_image" not in raw["docker"] and "worker_image" not in raw["docker"]


def test_setup_commands_install_the_project_from_the_synced_checkout(raw):
    mounts = raw["file_mounts"]
    project = [remote for remote, local in mounts.items()
               if (REPO / local).resolve() == REPO.resolve() and not local.startswith("~")]
    assert len(project) == 1, f"the repository must be mounted once: {mounts}"
    installs = [c for c in raw["setup_commands"] if re.search(r"pip install -e \"?" + re.escape(project[0]), c)]
    assert installs and "[vllm]" in installs[0], raw["setup_commands"]
    assert ".gitignore" in raw.get("rsync_filter", []), "keep .venv and outputs/ off the nodes"


def test_outputs_and_tracking_point_at_s3_and_the_head(raw):
    options = " ".join(raw["docker"]["run_options"])
    assert re.search(r"--env BIOCAP_OUTPUT=s3://[\w.-]+/", options)
    setup = " ".join(raw["head_setup_commands"])
    assert "export MLFLOW_TRACKING_URI=http://" in setup
    assert any("scripts/mlflow_server.sh 0.0.0.0 5000 " in c and " s3://" in c for c in raw["head_start_ray_commands"])
    for name, node_type in raw["available_node_types"].items():
        if name != raw["head_node_type"]:
            assert "IamInstanceProfile" in node_type["node_config"], f"{name} could not reach S3"


def test_every_node_starts_ray_with_the_tracking_login_and_the_dashboard_stays_local(raw):
    """`ray start` inherits MLFLOW_TRACKING_USERNAME/PASSWORD on every node (so do jobs and
    workers); a failure to derive them stops the start instead of running without them."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in raw[key] if "ray start" in c]
        assert len(starts) == 1, raw[key]
        assert starts[0].startswith('credentials=$(biocap-ray mlflow-credentials) && eval "$credentials" && ')
    head = next(c for c in raw["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head


def test_nodes_join_the_users_security_group_and_ray_opens_nothing_else(raw, no_aws):
    """Every node type names one security group of the user's; with all of them set, Ray's AWS
    setup neither creates a group nor adds its default rule (SSH from 0.0.0.0/0), and asks AWS
    nothing while deciding so."""
    from ray.autoscaler._private.aws.config import _configure_security_group

    groups = {name: t["node_config"].get("SecurityGroupIds") for name, t in raw["available_node_types"].items()}
    assert set(map(tuple, groups.values())) == {("sg-YOUR-GROUP",)}, groups
    assert "security_group" not in raw["provider"]
    configured = _configure_security_group(copy.deepcopy(prepared(raw)))
    assert {n: t["node_config"]["SecurityGroupIds"] for n, t in configured["available_node_types"].items()} == groups
    text = CLUSTER_YAML.read_text()
    assert "--port 22 --cidr YOUR-CIDR" in text and "--protocol -1 --source-group sg-YOUR-GROUP" in text
    assert "IpPermissions" not in text and "--cidr 0.0.0.0/0" not in text


def test_no_secrets_only_placeholders():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"(?i)aws_(secret_access_key|access_key_id|session_token)", text)
    assert "YOUR-BUCKET" in text and "ami-YOUR-GPU-AMI" in text
    assert not re.search(r"(?i)(password|MLFLOW_TRACKING_PASSWORD)\s*[=:]\s*\w", text)


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in bundle.items())


def test_caption_engines_and_train_workers_land_on_their_own_node_types(raw):
    """The preset's resource requests against the node types: each kind of work has one home."""
    cfg = load_config("cluster")
    types = {n: t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]}
    c, t = cfg.caption, cfg.train

    engine = {"GPU": c.num_gpus_per_engine, "CPU": 1, f"accelerator_type:{c.accelerator_type}": 0.001}
    caption_homes = [n for n, nt in types.items() if _fits(engine, nt["resources"])]
    assert len(caption_homes) == 1, caption_homes
    high = c.concurrency[1]
    assert types[caption_homes[0]]["max_workers"] * types[caption_homes[0]]["resources"]["GPU"] >= high

    worker = {"GPU": 1, "CPU": t.cpus_per_worker}
    train_homes = [n for n, nt in types.items() if _fits(worker, nt["resources"])]
    assert caption_homes[0] not in train_homes, "train workers could take caption nodes"
    assert len(train_homes) == 1, train_homes
    home = types[train_homes[0]]
    per_node = min(home["resources"]["GPU"], home["resources"]["CPU"] // t.cpus_per_worker)
    assert per_node * home["max_workers"] >= t.num_workers
    assert "InstanceMarketOptions" not in home["node_config"], "training runs on-demand"
    assert types[caption_homes[0]]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


# ---- the presets ----------------------------------------------------------------------------

def _key_paths(tree: dict, model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of a preset; free-form mappings (e.g. caption.engine_env) count as one key."""
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        field = model.model_fields.get(key)
        sub = field.annotation if field else None
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            paths |= _key_paths(value, sub, path + ".")
    return paths


PRESET_KEYS = {name: _key_paths(yaml.safe_load(preset_path(name).read_text()), Config)
               for name in ("local", "cluster")}
ONLY_CLUSTER = sorted(PRESET_KEYS["cluster"] - PRESET_KEYS["local"])
ONLY_LOCAL = sorted(PRESET_KEYS["local"] - PRESET_KEYS["cluster"])


def test_presets_differ_in_values_only():
    assert ONLY_CLUSTER == [] and ONLY_LOCAL == [], f"local.yaml lacks {ONLY_CLUSTER}; cluster.yaml lacks {ONLY_LOCAL}"


PUBLISHED = {  # DESIGN.md, "Facts of the published recipe"
    "train.model": "ViT-B-16",
    "train.lr": 1e-4,
    "train.weight_decay": 0.2,
    "train.betas": (0.9, 0.98),
    "train.eps": 1e-6,
    "train.warmup_steps": 500,
    "train.batch_size": 4096,
    "train.num_workers": 8,
    "train.epochs": 50,
    "train.precision": "bf16",
    "train.grad_checkpointing": True,
    "train.mode": "sample",
    "train.caption_weight": 1 / 6,
    "caption.engine": "vllm",
    "caption.model": "OpenGVLab/InternVL3-38B-AWQ",
    "caption.num_gpus_per_engine": 1,
    "caption.max_model_len": 2048,
    "caption.max_words": 20,
    "caption.sampling.temperature": 0.6,
    "caption.sampling.top_p": 0.8,
    "caption.sampling.max_tokens": 50,
}
PUBLISHED_BY_DEFAULT = {"train.dual_projector": True, "context.max_chars": 600}


def _get(obj, dotted: str):
    for key in dotted.split("."):
        obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
    return obj


def _same(value, expected) -> bool:
    if isinstance(expected, tuple):
        return tuple(value) == expected
    if isinstance(expected, float):
        return value == pytest.approx(expected)
    return value == expected


@pytest.mark.parametrize("dotted", sorted(PUBLISHED))
def test_cluster_preset_states_the_published_recipe(dotted):
    """Written out in the preset (a change of code defaults must not change the recipe) and loaded as such."""
    stated = _get(yaml.safe_load(preset_path("cluster").read_text()), dotted)
    assert _same(stated, PUBLISHED[dotted]), f"cluster.yaml states {dotted}={stated!r}"
    assert _same(_get(load_config("cluster"), dotted), PUBLISHED[dotted])


def test_cluster_preset_keeps_the_published_defaults():
    cfg = load_config("cluster")
    for dotted, expected in PUBLISHED_BY_DEFAULT.items():
        assert _get(cfg, dotted) == expected, dotted
    assert cfg.train.batch_size * cfg.train.num_workers == 32_768
