"""Regression tests of review findings: config paths that disagreed, CLI parsing, multi-process λ statistics,
umask, error labels and messages, pushing a LoRA run."""

import json
import os

import pytest
import torch

from gopd_lab import cli, runio
from gopd_lab.cli import config_from_argv, main
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import DataError, NonFiniteError
from gopd_lab.loop.update import _check_finite
from gopd_lab.objectives.lineage import agopd_lambda, reopd_budget, reopd_q


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "knobs",
    [
        dict(reopd_tau=-1.0),
        dict(reopd_gamma_max=-1.0),
        dict(reopd_target=-0.5),
        dict(reopd_ema=1.0),
        dict(agopd_rho=-1.0),
        dict(agopd_lam_max=0.1),
        dict(entropy_threshold=-1.0),
    ],
)
def test_lineage_knob_ranges_are_checked_under_fixed_lam_mode(knobs):
    """_check_lam_mode returned early for lam_mode='fixed', so RunConfig(reopd_tau=-1) was accepted."""
    with pytest.raises(ConfigError, match=next(iter(knobs))):
        RunConfig(student="s", **knobs)


def test_from_dict_accepts_json_text_like_the_constructor():
    for name, text, value in [
        ("lam", '{"add": 1.5}', {"add": 1.5}),
        ("teacher", '{"add": "t"}', {"add": "t"}),
        ("reference", '{"add": "r"}', {"add": "r"}),
    ]:
        assert getattr(RunConfig.from_dict({"student": "s", name: text}), name) == value
        assert getattr(RunConfig(student="s", **{name: text}), name) == value
    with pytest.raises(ConfigError, match="lam must be a number"):
        RunConfig.from_dict({"student": "s", "lam": "fast"})


def test_entropy_lam_mode_with_a_teacher_server_is_a_config_error():
    with pytest.raises(ConfigError, match=r"lam_mode='entropy' needs the teacher's whole next-token distribution"):
        RunConfig(student="s", teacher="http://localhost:8000", lam_mode="entropy")
    with pytest.raises(ConfigError, match="https://x"):
        RunConfig(student="s", teacher={"add": "t", "mul": "https://x"}, lam_mode="entropy")
    RunConfig(student="s", teacher="http://localhost:8000", lam_mode="reopd")  # REOPD needs only log-probs


# ------------------------------------------------------------------------------------ CLI
def test_cli_empty_text_option_stays_empty_not_none():
    """`--tasks ""`: "" in "{[" is True, so the empty text was read as YAML → None."""
    assert config_from_argv(["--student", "s", "--tasks", ""]).tasks == ""
    assert config_from_argv(["--student", "s", "--tasks", "[add, mul]"]).tasks == ["add", "mul"]


def test_cli_options_fix_a_config_file_that_alone_is_invalid(tmp_path):
    """The file was validated alone before the options applied: estimator=jsd with lam=1.25 in the file and
    --lam 1 on the command line was refused."""
    path = tmp_path / "cfg.yaml"
    path.write_text("student: s\nestimator: jsd\nlam: 1.25\nlearning_rate: 0.001\n")
    cfg = config_from_argv(["--config", str(path), "--lam", "1"])
    assert (cfg.estimator, cfg.lam, cfg.lr) == ("jsd", 1.0, 0.001)
    with pytest.raises(ConfigError, match="estimator='jsd'"):
        config_from_argv(["--config", str(path)])
    path.write_text("student: s\nnosuch: 1\n")
    with pytest.raises(ConfigError, match="unknown config field"):
        config_from_argv(["--config", str(path)])


def test_cli_labels_a_bad_data_file_data_error(monkeypatch, capsys):
    def bad_data(args):
        raise DataError("prompts.jsonl line 3: not JSON")

    monkeypatch.setattr(cli, "cmd_train", bad_data)
    assert main(["train"]) == 2
    assert capsys.readouterr().err.strip() == "gopd-lab: data error: prompts.jsonl line 3: not JSON"
    monkeypatch.undo()
    assert main(["train", "--student", "s", "--lr", "-1"]) == 2
    assert "gopd-lab: configuration error: lr must be > 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ λ statistics over processes
def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:2], x[2:]


def _two_process_reduce(other_stats: torch.Tensor):
    """What Distributed.sum_stats does with two processes: this process's sums plus the other's."""
    return lambda stats: stats + other_stats


def test_reopd_budget_is_the_global_batch_budget_over_processes():
    """γ_b was computed from each process's share alone; with the sums all-reduced it equals the one-process γ_b."""
    g = torch.Generator().manual_seed(0)
    lp_t, lp_s = -torch.rand(4, 5, generator=g), -torch.rand(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]).float()
    q = reopd_q(lp_t, lp_s, tau=0.05, mask=mask)
    kw = dict(target=0.25, gamma_max=1.0, ema=0.9, previous=0.5)
    whole = reopd_budget(q, mask, **kw)
    (qa, qb), (ma, mb) = _halves(q), _halves(mask)
    stats_b = torch.stack([(qb * mb).sum().double(), mb.sum().double()])
    stats_a = torch.stack([(qa * ma).sum().double(), ma.sum().double()])
    got_a = reopd_budget(qa, ma, **kw, reduce=_two_process_reduce(stats_b))
    got_b = reopd_budget(qb, mb, **kw, reduce=_two_process_reduce(stats_a))
    assert got_a == pytest.approx(whole) and got_b == pytest.approx(whole)
    assert reopd_budget(qa, ma, **kw) != pytest.approx(whole)  # the local budget differs: the test can fail
    q_mean = float((q * mask).sum() / mask.sum())  # hand value: raw = clip(0.25 / mean q, 0, 1)
    assert whole[1] == pytest.approx(min(0.25 / q_mean, 1.0))


def test_agopd_lambda_is_the_global_batch_lambda_over_processes():
    g = torch.Generator().manual_seed(1)
    lp_t, lp_s, lp_r = (-torch.rand(4, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]).float()
    kw = dict(rho=0.25, lam_max=5.0)
    whole = float(agopd_lambda(lp_t, lp_s, lp_r, mask=mask, **kw))
    opd, extra = (lp_t - lp_s) * mask, (lp_t - lp_r) * mask
    n = mask.sum()
    assert whole == pytest.approx(1 + 0.25 * float((opd.pow(2).sum() / n).sqrt() / (extra.pow(2).sum() / n).sqrt()))

    def stats(rows):
        return torch.stack(
            [opd[rows].double().pow(2).sum(), extra[rows].double().pow(2).sum(), mask[rows].sum().double()]
        )

    a, b = slice(0, 2), slice(2, 4)
    got_a = agopd_lambda(lp_t[a], lp_s[a], lp_r[a], mask=mask[a], reduce=_two_process_reduce(stats(b)), **kw)
    got_b = agopd_lambda(lp_t[b], lp_s[b], lp_r[b], mask=mask[b], reduce=_two_process_reduce(stats(a)), **kw)
    assert float(got_a) == pytest.approx(whole) and float(got_b) == pytest.approx(whole)
    assert float(agopd_lambda(lp_t[a], lp_s[a], lp_r[a], mask=mask[a], **kw)) != pytest.approx(whole)


# ------------------------------------------------------------------------------------ files and messages
def test_umask_is_read_once_not_changed_on_every_write(tmp_path, monkeypatch):
    """Reading the umask means setting it: done on every atomic write, it raced with other threads' files."""
    calls = []
    real = os.umask
    monkeypatch.setattr(runio, "_UMASK", None)
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    for i in range(3):
        runio.atomic_write_text(tmp_path / f"f{i}.txt", "x")
    assert len(calls) == 2  # set once and restored once, for the first write only


def test_nonfinite_error_names_the_epoch_of_the_batch():
    """With epochs_per_batch > 1 the message said "stopped before the optimizer step" after earlier steps."""
    nan = torch.tensor(float("nan"))
    with pytest.raises(NonFiniteError, match=r"in epoch 2 of 3 over this batch; .*first 1 optimizer step\(s\) were"):
        _check_finite(nan, nan, None, 1, 3)
    with pytest.raises(NonFiniteError, match=r"\(nan\); stopped before its optimizer step$"):
        _check_finite(nan, nan, None, 0, 1)


# ------------------------------------------------------------------------------------ push a LoRA run
def test_push_merges_a_lora_adapter_into_a_full_model(tiny_dirs, tmp_path):
    """model/ of a LoRA run holds adapter files only: push copied them with a card whose snippet could not load."""
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gopd_lab.loop.train import train
    from gopd_lab.scale.hub import stage

    run = tmp_path / "run"
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        prompts=["1+1=", "2+2="],
        batch_size=2,
        max_new_tokens=3,
        steps=2,
        lr=0.05,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        log_samples=0,
        device="cpu",
        dtype="float32",
        out_dir=str(run),
    )
    train(cfg, progress=False)
    assert (run / "model" / "adapter_config.json").is_file() and not (run / "model" / "config.json").exists()
    out = stage(run, tmp_path / "staged", "you/student")
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["student"])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["student"]), run / "model")
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        want, got, start = adapted(ids).logits, merged(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, start, atol=1e-4)  # the adapter moved the weights: the merge is not the base
    assert json.loads((out / "gopd_lab_config.json").read_text())["lora_r"] == 4
