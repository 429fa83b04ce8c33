"""The command line: options override the config file; every RunConfig field is an option."""

import json

import pytest
import yaml

from gopd_lab.cli import build_parser, config_from_args, main
from gopd_lab.config import config_fields


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_config_field_is_an_option_with_help():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in train._actions}
    for f in config_fields():
        assert f.name in options, f.name
        assert options[f.name].help, f"--{f.name} has no help text"


def test_options_override_the_config_file_and_parse_types(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"student": "s", "teacher": "t", "lam": 1.0, "steps": 10}))
    cfg = parse("--config", str(path), "--lam", "1.25", "--steps", "3", "--clip-eps", "0.2")
    assert (cfg.student, cfg.teacher, cfg.lam, cfg.steps, cfg.clip_eps) == ("s", "t", 1.25, 3, 0.2)
    cfg = parse("--student", "007", "--teacher", '{"add": "a", "mul": "b"}', "--lam", '{"add": 1.5, "mul": 1}')
    assert cfg.student == "007" and cfg.teacher == {"add": "a", "mul": "b"} and cfg.lam_for("add") == 1.5


def test_bad_values_exit_with_one_clear_message(capsys):
    assert main(["train", "--student", "s", "--teacher", "t", "--lam", "0"]) == 2
    err = capsys.readouterr().err
    assert "lam must be a finite number > 0" in err and err.count("\n") == 1
    assert main(["train", "--config", "/nonexistent.yaml"]) == 2


def test_train_command_runs_a_tiny_run(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--student",
            tiny_dirs["student"],
            "--teacher",
            tiny_dirs["teacher"],
            "--lam",
            "1.25",
            "--prompts",
            '["12+3=", "7*8="]',
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "3",
            "--out-dir",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads((out / "config.json").read_text())["lam"] == 1.25
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "done: 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["eval", "--help"], ["zoo", "--help"], ["demo", "--help"]])
def test_subcommands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0


def test_exponent_numbers_parse_from_options_and_yaml(tmp_path):
    """Regression: `--lr 1e-3` and `lr: 1e-3` in YAML reached RunConfig as the string '1e-3'."""
    assert parse("--lr", "1e-3").lr == 1e-3
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 1e-3\nsteps: 5\n")
    from gopd_lab.config import ConfigError, RunConfig

    cfg = RunConfig.load(path)
    assert cfg.lr == 1e-3 and cfg.steps == 5
    path.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number"):
        RunConfig.load(path)
