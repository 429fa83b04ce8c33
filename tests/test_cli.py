"""The command line: options override the config file; every RunConfig field is an option."""

import ast
import inspect
import json
import re

import pytest
import yaml

from gopd_lab.cli import config_from_argv, main
from gopd_lab.cli_options import GROUPS, field_choices, plain
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
    assert "--config FILE" in help_text and "``" not in help_text  # docstring markup shown as plain text
    for f in config_fields():
        assert re.search(rf"--{f.name.replace('_', '-')}[ ,]", help_text), f.name
        first_words = " ".join(plain(docs[f.name]).split()[:4])
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
    # train writes a small HTML report beside the run: curves, plotly.js from its CDN unless asked to inline it
    from gopd_lab.viz.runs import run_report

    page = (out / "report.html").read_text()
    assert (out / "report.html").stat().st_size < 100_000 and "cdn.plot.ly" in page and "final loss" in page
    inline = run_report(out, tmp_path / "inline.html", inline=True)
    assert inline.stat().st_size > 1_000_000 and "cdn.plot.ly" not in inline.read_text()[:2000]


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
        with pytest.raises(ConfigError):
            parse(*bad)
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


# ------------------------------------------------------------------ a CLI people can read (issue 28)
def test_train_help_groups_the_options_common_ones_first_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    titles = [line.rstrip(":") for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles[titles.index("run") :] == [*GROUPS, "examples"] or titles[titles.index("run") :] == [
        *GROUPS,
        "other",
        "examples",
    ]
    run = out[out.index("\nrun:") : out.index("\nmodels:")]
    assert (
        run.index("--method")
        < run.index("--tasks")
        < run.index("--steps")
        < run.index("--lr")
        < run.index("--optimizer")
    )
    assert "gopd-lab train --student zoo:student-base" in out
    grouped = [n for names in GROUPS.values() for n in names]
    assert len(grouped) == len(set(grouped)), "a field listed in two groups"


def test_choice_fields_list_their_values_and_refuse_others_in_one_line(capsys):
    choices = field_choices()
    from gopd_lab.methods import METHODS

    assert choices["method"] == tuple(METHODS)  # from the registry: a plugin's method is listed too
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--estimator {" + ",".join(choices["estimator"]) + "}" in capsys.readouterr().out
    assert main(["train", "--estimator", "topkk"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'topkk'" in err and "╭" not in err
    for name, values in choices.items():  # every value listed is one RunConfig accepts; others it refuses
        for value in values:
            assert name not in str(_refusal(name, value)), (name, value)
        assert _refusal(name, "no-such-value") is not None, name


def _refusal(name, value):
    try:
        RunConfig.from_dict({name: value})
    except ConfigError as err:
        refused = f"{name} must be" in str(err) and repr(value) in str(err)  # not another check's complaint
        return err if refused else None
    return None


def test_misspelled_options_and_yaml_keys_name_the_closest_field(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--stesp \(did you mean --steps\?\)"):
        parse("--stesp", "3")
    path = tmp_path / "cfg.yaml"
    path.write_text("stpes: 3\nlearnig_rate: 1e-3\n")
    with pytest.raises(ConfigError, match=r"learnig_rate \(did you mean learning_rate\?\); stpes \(did you mean steps"):
        RunConfig.load(path)
    assert main(["train", "--max-new-tokns", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --max-new-tokens?" in err


def test_trl_names_that_are_not_aliases_get_the_readmes_explanation():
    with pytest.raises(ConfigError, match="per process.*batch_size is the global number of prompts"):
        parse("--per_device_train_batch_size", "8")
    with pytest.raises(ConfigError, match="max_steps counts optimizer steps; here steps counts rollout batches"):
        parse("--max-steps", "100")
    with pytest.raises(ConfigError, match="kl_coef for GRPO's KL penalty"):
        parse("--beta", "0.04")
    with pytest.raises(ConfigError, match="kl_coef for GRPO"):
        RunConfig.from_dict({"beta": 0.04})


def test_version_and_top_level_errors_are_one_line(capsys):
    from gopd_lab import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"gopd-lab {__version__}"
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'evaluate'" in err
    assert main(["eval", "--k", "x"]) == 2 and capsys.readouterr().err.count("\n") == 1


def test_top_level_help_imports_no_torch():
    """`gopd-lab --help` answers without importing torch, transformers or the config's registries (it took 8 s)."""
    import subprocess
    import sys

    code = (
        "import sys; from gopd_lab.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'gopd_lab.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]" and "gopd-lab train --help" in out
