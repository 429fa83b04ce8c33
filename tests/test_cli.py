"""The command line: options override the config file; every RunConfig field is an option."""

import ast
import inspect
import json
import re

import pytest
import yaml

from gopd_lab.cli import config_from_argv, main
from gopd_lab.config import ConfigError, RunConfig, config_fields


def parse(*argv):
    return config_from_argv(list(argv))


def test_every_config_field_is_an_option_with_its_docstring_as_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one help line per option: docstrings are not wrapped
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    body = ast.parse(inspect.getsource(RunConfig)).body[0].body
    docs = {a.target.id: b.value.value for a, b in zip(body, body[1:]) if isinstance(a, ast.AnnAssign)}
    assert "--config FILE" in help_text
    for f in config_fields():
        assert re.search(rf"--{f.name.replace('_', '-')}[ ,]", help_text), f.name
        first_words = " ".join(docs[f.name].split()[:4])
        assert first_words in help_text, f"--{f.name}: help lacks its docstring {first_words!r}"


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
    assert isinstance(cfg.lr, float) and isinstance(cfg.steps, int)
    path.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number"):
        RunConfig.load(path)
    path.write_text('{"lr": 2e-4, "lam": {"add": 1.5}}')  # JSON is read by the same loader
    assert RunConfig.load(path).lr == 2e-4


def test_option_values_of_every_kind():
    cfg = parse("--max-grad-norm", "null", "--clip-eps", "0.2", "--resume", "--extra", '{"a": 1}')
    assert (cfg.max_grad_norm, cfg.clip_eps, cfg.resume, cfg.extra) == (None, 0.2, True, {"a": 1})
    cfg = parse("--resume", "true", "--row-seeded-sampling", "True", "--phi-weighting", "false", "--steps", "3")
    assert (cfg.resume, cfg.row_seeded_sampling, cfg.phi_weighting, cfg.steps) == (True, True, False, 3)
    for bad in (["--resume", "maybe"], ["--resume", "true", "false"], ["--steps", "x"]):
        with pytest.raises(SystemExit) as exit_:
            parse(*bad)
        assert exit_.value.code == 2
    cfg = parse("--prompts", '["12+3=", "7*8="]', "--lora-target-modules", "[q_proj, v_proj]", "--out_dir", "r/x")
    assert cfg.prompts == ["12+3=", "7*8="] and cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.out_dir == "r/x" and parse("--tasks", "add,mul").task_names == ["add", "mul"]
    assert parse("--report-to", "[tensorboard, trackio]").report_targets == ["tensorboard", "trackio"]


def test_trl_names_are_aliases_of_the_same_fields(tmp_path):
    cfg = parse("--learning-rate", "3e-4", "--num_iterations=2", "--num-generations", "4", "--output-dir", "r/y")
    assert (cfg.lr, cfg.epochs_per_batch, cfg.samples_per_prompt, cfg.out_dir) == (3e-4, 2, 4, "r/y")
    with pytest.raises(ConfigError, match="TRL's name for --lr"):
        parse("--lr", "1e-3", "--learning-rate", "2e-3")
    path = tmp_path / "trl.yaml"
    path.write_text("learning_rate: 1e-4\nmax_completion_length: 6\n")
    cfg = RunConfig.load(path)
    assert (cfg.lr, cfg.max_new_tokens) == (1e-4, 6)
    for not_the_same in ("lmbda", "beta", "per_device_train_batch_size", "max_steps"):
        with pytest.raises(ConfigError, match="unknown config field"):
            RunConfig.from_dict({not_the_same: 1})
