"""The comparison protocol: loss aggregation (closed forms), the on-policy temperature rule, a fixed evaluation seed."""

import pytest
import torch

from gopd_lab import RunConfig, train
from gopd_lab.config import ConfigError
from gopd_lab.lm.logprobs import student_forward
from gopd_lab.lm.rollout import Rollout
from gopd_lab.loop.update import loss_weights, update
from gopd_lab.methods import get_method
from gopd_lab.methods.method import Objective
from gopd_lab.objectives import LossInput, masked_mean
from gopd_lab.scorers.score import Scored
from gopd_lab.world.tiny import tiny_model

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
X = torch.tensor([[1.0, 2.0, 6.0, 99.0], [4.0, 99.0, 99.0, 99.0], [99.0, 99.0, 99.0, 99.0]])


def test_loss_weights_give_the_token_mean_and_the_mean_of_row_means():
    assert masked_mean(X, loss_weights(MASK, "token-mean")).item() == pytest.approx((1 + 2 + 6 + 4) / 4)
    seq = loss_weights(MASK, "seq-mean-token-mean")
    assert torch.allclose(seq[0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0])) and seq[2].sum() == 0
    assert masked_mean(X, seq).item() == pytest.approx(((1 + 2 + 6) / 3 + 4 / 1) / 2)  # the empty row is not counted
    equal = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # equal lengths: the two are the same number
    y = torch.tensor([[1.0, 5.0, 7.0], [2.0, 3.0, 7.0]])
    assert masked_mean(y, loss_weights(equal, "seq-mean-token-mean")).item() == pytest.approx(
        masked_mean(y, equal).item()
    )
    with pytest.raises(ValueError, match="loss_agg"):
        loss_weights(MASK, "sum")


@pytest.fixture(scope="module")
def ragged():
    """A student and a rollout of three completions of lengths 3, 1 and 2."""
    student = tiny_model(seed=0)
    ids = torch.tensor([[5, 9, 11, 0], [7, 0, 0, 0], [12, 13, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    prompt = torch.tensor([[20, 21], [0, 22], [23, 24]])
    pmask = torch.tensor([[1, 1], [0, 1], [1, 1]])
    rollout = Rollout(prompt, pmask, ids, mask, ["", "", ""], ["", "", ""], ["d", "d", "d"])
    return student, rollout


class GivenAdvantages(Objective):
    """The method's loss with advantages given by hand (instead of its own A_t)."""

    def __init__(self, advantages, cfg):
        self.advantages, self.cfg = advantages, cfg

    def __call__(self, part, rows, out, lp_student, lp_old, weights):
        A_t = self.advantages[rows]  # (b, C)
        loss, metrics = get_method(self.cfg.method).loss(LossInput(out, part, A_t, weights, self.cfg, lp_old))
        return loss, A_t, metrics


def loss_of(student, scored, advantages, cfg) -> float:
    """The loss :func:`update` reports for ``advantages`` (a step of lr 0: the weights stay)."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    return update(student, optimizer, scored, cfg, objective=GivenAdvantages(advantages, cfg)).metrics["loss"]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_sampled_and_full_losses_follow_the_aggregation_by_hand(ragged, agg):
    student, rollout = ragged
    mask = rollout.completion_mask.float()
    lengths = mask.sum(1)

    def by_hand(per_token):  # (B, C) → the loss of the aggregation
        if agg == "token-mean":
            return (per_token * mask).sum() / mask.sum()
        return ((per_token * mask).sum(1) / lengths).mean()

    adv = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.0, 0.0]])
    scored = Scored(rollout=rollout, lam=torch.ones(3), lp_teacher=torch.zeros(3, 4))
    s = RunConfig(method="gopd", estimator="sampled", loss_agg=agg)
    loss = loss_of(student, scored, adv, s)
    assert loss == pytest.approx(-by_hand(adv).item(), rel=1e-6)  # on-policy: ratio 1, loss = −mean A

    out = student_forward(student, rollout, full=True)
    target = torch.log_softmax(torch.randn(out.logp.shape, generator=torch.Generator().manual_seed(0)), -1)
    scored.target = target
    loss = loss_of(student, scored, adv, s.replace(estimator="full"))
    kl = (out.logp.exp() * (out.logp - target)).sum(-1)  # (N,) per-state KL
    assert loss == pytest.approx(by_hand(out.positions.scatter(kl.detach())).item(), rel=1e-5)


def test_the_two_aggregations_differ_on_ragged_rows(ragged):
    student, rollout = ragged
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scored = Scored(rollout=rollout, lam=torch.ones(3), lp_teacher=torch.zeros(3, 4))
    token = loss_of(student, scored, adv, RunConfig(loss_agg="token-mean"))
    seq = loss_of(student, scored, adv, RunConfig(loss_agg="seq-mean-token-mean"))
    assert token == pytest.approx(0.0, abs=1e-7) and seq == pytest.approx(-(1 - 3 + 0) / 3)


def test_temperature_other_than_1_is_refused_where_the_update_is_on_policy():
    for method in ("gopd", "sdpo", "grpo"):
        with pytest.raises(ConfigError, match="temperature=0.7 with method"):
            RunConfig(method=method, temperature=0.7)
    RunConfig(method="chord", mu=0.5, temperature=1.0, samples_per_prompt=2)
    RunConfig(method="sft", temperature=0.7)  # no student samples in the update
    with pytest.raises(ConfigError, match="loss_agg must be one of"):
        RunConfig(loss_agg="sum")


def test_the_evaluation_seed_is_fixed_across_training_seeds(tmp_path):
    """Before training both runs hold the same student: with one ``eval_seed`` their sampled accuracy is the same
    number whatever the training seed; another ``eval_seed`` draws other samples."""
    from gopd_lab.runio import read_jsonl
    from gopd_lab.world.zoo import model_path

    def first_eval(name, **kw):
        cfg = RunConfig(
            method="sft", student=str(model_path("student-base")), tasks="add", steps=1, batch_size=2, lr=1e-6,
            max_new_tokens=6, eval_k=2, eval_limit=40, device="cpu", out_dir=str(tmp_path / name), **kw,
        )  # fmt: skip
        train(cfg, progress=False)
        return [r for r in read_jsonl(tmp_path / name / "eval.jsonl") if r["step"] == 0][0]["mean_acc"]

    a, b = first_eval("a", seed=0, eval_seed=5), first_eval("b", seed=1, eval_seed=5)
    c = first_eval("c", seed=0, eval_seed=6)
    assert a == b and a != c
