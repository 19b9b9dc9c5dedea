"""The ``biocap-ray`` command: help and argument errors (the jobs themselves: test_jobs.py)."""

from __future__ import annotations

import pytest

from biocap_ray.cli import build_parser, main


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "convert", "--help"],
                                  ["data", "inspect", "--help"], ["evaluate", "--help"], ["tune", "--help"],
                                  ["pipeline", "--help"]])
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
