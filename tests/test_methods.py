"""SFT and GRPO on the same loop: objectives against hand-computed values, end-to-end runs, evaluation."""

import random

import pytest
import torch

from gopd_lab import RunConfig, train
from gopd_lab.config import ConfigError
from gopd_lab.loop.evaluate import evaluate
from gopd_lab.objectives import group_advantages, kl_k3, sft_loss
from gopd_lab.tasks import get_task, make_task
from gopd_lab.tasks.arith import corrupt_answer, with_label_noise
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer


def test_group_advantages_equal_hand_computed_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    # group 1: mean 0.25, std sqrt(0.1875) = 0.4330; group 2: mean 0.75, same std
    s = 0.1875**0.5
    expected = torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s, 0.25 / s])
    assert torch.allclose(group_advantages(rewards, 4), expected, atol=1e-4)
    assert torch.allclose(
        group_advantages(rewards, 4, scale_std=False),
        torch.tensor([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25]),
    )


def test_an_all_equal_reward_group_gets_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3)
    assert torch.equal(adv, torch.zeros(6))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)


def test_kl_k3_is_zero_at_equal_policies_and_matches_its_formula():
    lp = torch.tensor([-0.5, -1.0, -2.0])
    assert torch.allclose(kl_k3(lp, lp), torch.zeros(3))
    ref = torch.tensor([-1.0, -0.5, -2.5])
    d = ref - lp
    assert torch.allclose(kl_k3(lp, ref), d.exp() - d - 1)
    assert bool((kl_k3(lp, ref) >= 0).all())


def test_sft_loss_is_mean_nll_over_valid_tokens():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, m = sft_loss(lp, mask)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert torch.allclose(lp.grad, -mask / 3)
    weighted, _ = sft_loss(lp, mask, weights=torch.full_like(lp, 0.5))
    assert weighted.item() == pytest.approx(1.0)


def test_label_noise_changes_only_train_answers_and_is_deterministic():
    rng = random.Random(0)
    assert corrupt_answer("129", rng, "last-digit") == "120"
    assert corrupt_answer("5", rng, "last-digit") == "6"
    for _ in range(50):
        wrong = corrupt_answer("407", rng, "random-digit")
        assert wrong != "407" and len(wrong) == 3 and wrong[0] != "0"
    task = get_task("add")
    noisy = with_label_noise(task, 0.5, seed=3)
    changed = sum(a.answer != b.answer for a, b in zip(task.train, noisy.train))
    assert 0.4 * len(task.train) < changed < 0.6 * len(task.train)
    assert [e.answer for e in noisy.test] == [e.answer for e in task.test]
    again = with_label_noise(task, 0.5, seed=3)
    assert [e.answer for e in again.train] == [e.answer for e in noisy.train]


def test_evaluate_counts_correct_answers_per_domain():
    """A task whose answers are what the model already says scores 1; a different answer scores 0."""
    tok = build_char_tokenizer()
    model = tiny_model(seed=0)
    prompts = ["1+1=", "2+2=", "3+3="]
    from gopd_lab.lm.rollout import encode_prompts
    from gopd_lab.loop.evaluate import generate

    said = generate(model, tok, encode_prompts(tok, prompts), max_new_tokens=4, greedy=True)
    right = make_task("right", train=[], test=list(zip(prompts, said)))
    wrong = make_task("wrong", train=[], test=[(p, s + "x") for p, s in zip(prompts, said)])
    table = evaluate(model, tok, {"right": right, "wrong": wrong}, k=2, max_new_tokens=4).set_index("domain")
    assert table.loc["right", "greedy_acc"] == 1.0 and table.loc["wrong", "greedy_acc"] == 0.0
    assert table.loc["right", "n"] == 3 and 0.0 <= table.loc["right", "mean_acc"] <= 1.0


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_sft_and_grpo_run_end_to_end_and_write_the_run_files(method, tiny_dirs, tmp_path):
    cfg = RunConfig(
        method=method,
        student=tiny_dirs["student"],
        tasks="add,mul",
        steps=2,
        batch_size=4,
        samples_per_prompt=2 if method == "grpo" else 1,
        max_new_tokens=4,
        eval_limit=4,
        eval_k=1,
        kl_coef=0.1 if method == "grpo" else 0.0,
        out_dir=str(tmp_path / method),
    )
    history = train(cfg, progress=False)
    assert list(history.step) == [1, 2]
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "samples.jsonl", "summary.json"):
        assert (tmp_path / method / name).exists()
    if method == "grpo":
        assert "kl_reference" in history and history.reward_mean.between(0, 1).all()
    else:
        assert history.loss.iloc[-1] == pytest.approx(history.nll.iloc[-1], rel=1e-6)


def test_sft_lowers_the_loss_on_its_data(tiny_dirs, tmp_path):
    cfg = RunConfig(
        method="sft",
        student=tiny_dirs["student"],
        tasks="add",
        steps=30,
        batch_size=16,
        lr=3e-3,
        max_new_tokens=4,
        eval_limit=2,
        eval_k=0,
        out_dir=str(tmp_path / "sft"),
    )
    history = train(cfg, progress=False)
    assert history.loss.iloc[-5:].mean() < history.loss.iloc[:5].mean() - 0.5


def test_sft_or_grpo_without_tasks_is_a_clear_error(tiny_dirs, tmp_path):
    with pytest.raises(ConfigError, match="needs tasks"):
        train(
            RunConfig(
                method="grpo",
                student=tiny_dirs["student"],
                prompts=["1+1="],
                samples_per_prompt=2,
                steps=1,
                out_dir=str(tmp_path / "x"),
            ),
            progress=False,
        )
