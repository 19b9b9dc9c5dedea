"""The ``biocap-ray`` command: help and argument errors (the jobs themselves: test_jobs.py)."""

from __future__ import annotations

import pytest

from biocap_ray.cli import build_parser, main


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "convert", "--help"],
                                  ["data", "inspect", "--help"], ["evaluate", "--help"], ["tune", "--help"],
                                  ["pipeline", "--help"], ["mlflow-credentials", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    assert "usage: biocap-ray" in capsys.readouterr().out


def test_unknown_flags_are_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "inspect", "x", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_bad_config_field_fails_fast_naming_it(capsys):
    assert main(["data", "inspect", "x", "--set", "data.batch_size=-3"]) == 2
    assert "data.batch_size" in capsys.readouterr().err


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here: not found" in capsys.readouterr().err


def test_the_pipeline_runs_on_the_sample_only_by_default_of_the_local_preset(tmp_path, capsys):
    """A cluster job submitted without --input must not quietly train on the 97 sample photos."""
    assert main(["pipeline", "--config", "cluster", "--output", str(tmp_path / "out")]) == 2
    assert "--input is required with --config cluster" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_mlflow_credentials_follow_the_ray_token_and_need_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "auth_token"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["mlflow-credentials"]) == 2
    assert "no Ray auth token" in capsys.readouterr().err

    def exports(token: str) -> dict[str, str]:
        (tmp_path / "auth_token").write_text(token + "\n")
        assert main(["mlflow-credentials"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert all(line.startswith("export ") for line in lines)
        return dict(line.removeprefix("export ").split("=", 1) for line in lines)

    first = exports("a" * 64)
    assert first["MLFLOW_TRACKING_USERNAME"] == "biocap"
    password = first["MLFLOW_TRACKING_PASSWORD"]
    assert len(password) == 64 and "a" * 16 not in password  # derived, not the token itself
    assert exports("a" * 64) == first and exports("b" * 64)["MLFLOW_TRACKING_PASSWORD"] != password
    monkeypatch.setenv("RAY_AUTH_TOKEN", "c" * 64)  # the variable wins over the file, as in Ray
    assert exports("a" * 64)["MLFLOW_TRACKING_PASSWORD"] != password
