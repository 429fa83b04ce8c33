"""The G-OPD objectives (docs/math.md) against hand-computed values and naive formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from gopd_lab.objectives import (
    discounted_returns,
    full_loss,
    gopd_advantages,
    jsd_loss,
    sampled_loss,
    target_logprobs,
    topk_loss,
)

# ------------------------------------------------------------------------------------------ helpers


def _logp(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * scale, dim=-1)


def _naive_reverse_kl(logp_s, logp_t, mask):
    """``KL(p_s ‖ p_t)`` per state, averaged over valid states: written out the slow way."""
    p_s = logp_s.exp()
    kl = (p_s * (logp_s - logp_t)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def _naive_forward_kl(logp_s, logp_t, mask):
    kl = F.kl_div(logp_s, logp_t, log_target=True, reduction="none").sum(-1)  # KL(p_t ‖ p_s)
    return (kl * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------------ advantages

LP_S = torch.tensor([[-1.0, -2.0]])
LP_T = torch.tensor([[-0.5, -1.5]])
LP_R = torch.tensor([[-0.8, -3.0]])


def test_advantages_hand_computed_lam_1_25():
    # A = 1.25·(lp_T − lp_R) − (lp_S − lp_R)
    # t0: 1.25·(−0.5+0.8) − (−1.0+0.8) = 0.375 + 0.2 = 0.575
    # t1: 1.25·(−1.5+3.0) − (−2.0+3.0) = 1.875 − 1.0 = 0.875
    adv = gopd_advantages(LP_S, LP_T, LP_R, lam=1.25)
    assert torch.allclose(adv, torch.tensor([[0.575, 0.875]]), atol=1e-6)


def test_advantages_hand_computed_lam_0_5():
    # t0: 0.5·0.3 − (−0.2) = 0.35;  t1: 0.5·1.5 − 1.0 = −0.25
    adv = gopd_advantages(LP_S, LP_T, LP_R, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.35, -0.25]]), atol=1e-6)


def test_advantages_lam_1_is_teacher_minus_student_for_any_reference():
    other_ref = torch.tensor([[-7.0, -0.1]])
    a1 = gopd_advantages(LP_S, LP_T, LP_R, lam=1.0)
    a2 = gopd_advantages(LP_S, LP_T, other_ref, lam=1.0)
    a3 = gopd_advantages(LP_S, LP_T, None, lam=1.0)
    expected = torch.tensor([[0.5, 0.5]])  # lp_T − lp_S
    assert torch.allclose(a1, expected, atol=1e-6)
    assert torch.equal(a1, a2)
    assert torch.allclose(a3, expected, atol=1e-6)


@pytest.mark.parametrize("lam", [1.25, 0.5, torch.tensor([1.0, 2.0])])
def test_advantages_without_reference_only_at_lam_1(lam):
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        gopd_advantages(lp, lp, None, lam=lam)


@pytest.mark.parametrize("lam", [0.0, -1.0, torch.tensor([1.0, 0.0]), torch.tensor([-0.5, 1.0])])
def test_advantages_reject_non_positive_lam(lam):
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        gopd_advantages(lp, lp, lp, lam=lam)


def test_advantages_are_detached():
    lp_s = LP_S.clone().requires_grad_(True)
    adv = gopd_advantages(lp_s, LP_T, LP_R, lam=1.25)
    assert not adv.requires_grad


def test_masked_positions_are_zero():
    lp_s = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -5.0, -9.0]])
    lp_t = torch.tensor([[-0.5, -1.5, -0.1], [-2.0, -0.2, -0.3]])
    lp_r = torch.tensor([[-0.8, -3.0, -4.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    for gamma in (0.0, 0.5, 1.0):
        adv = gopd_advantages(lp_s, lp_t, lp_r, lam=1.25, gamma=gamma, mask=mask)
        assert torch.all(adv[mask == 0] == 0)
        assert torch.all(adv[mask == 1] != 0)
    adv = gopd_advantages(lp_s, lp_t, lp_r, lam=1.25, mask=mask)
    assert torch.allclose(adv[0, :2], torch.tensor([0.575, 0.875]), atol=1e-6)
    assert adv[1, 0].item() == pytest.approx(1.25 * (-2.0 + 1.0) - (-1.0 + 1.0))


def test_all_masked_row_gives_zero_advantage_not_nan():
    lp_s = torch.tensor([[-1.0, -2.0], [-50.0, 3.0]])  # row 1 holds padding garbage
    lp_t = torch.tensor([[-0.5, -1.5], [-80.0, 7.0]])
    lp_r = torch.tensor([[-0.8, -3.0], [-90.0, 1.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    for gamma in (0.0, 0.5, 1.0):
        adv = gopd_advantages(lp_s, lp_t, lp_r, lam=1.25, gamma=gamma, mask=mask)
        assert torch.isfinite(adv).all()
        assert torch.all(adv[1] == 0)


def test_gamma_1_is_reversed_cumsum_within_each_row():
    values = torch.tensor([[1.0, 2.0, 4.0, 8.0], [3.0, -1.0, 5.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    g = discounted_returns(values, 1.0, mask)
    assert torch.allclose(g, torch.tensor([[15.0, 14.0, 12.0, 8.0], [7.0, 4.0, 5.0, 0.0]]))
    # the same through gopd_advantages: lp_T − lp_S at λ = 1 with lp_S = 0
    adv = gopd_advantages(torch.zeros_like(values), values, None, lam=1.0, gamma=1.0, mask=mask)
    assert torch.allclose(adv, g)


def test_gamma_half_hand_computed():
    values = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 0: G2 = 4, G1 = 2 + 0.5·4 = 4, G0 = 1 + 0.5·4 = 3
    # row 1: G2 = 0 (masked), G1 = 2, G0 = 1 + 0.5·2 = 2
    g = discounted_returns(values, 0.5, mask)
    assert torch.allclose(g, torch.tensor([[3.0, 4.0, 4.0], [2.0, 2.0, 0.0]]))
    adv = gopd_advantages(torch.zeros_like(values), values, None, lam=1.0, gamma=0.5, mask=mask)
    assert torch.allclose(adv, g)


def test_gamma_does_not_leak_across_rows():
    values = torch.tensor([[1.0, 1.0], [10.0, 10.0]])
    g = discounted_returns(values, 1.0)
    assert torch.allclose(g, torch.tensor([[2.0, 1.0], [20.0, 10.0]]))


def test_per_sample_lam_tensor():
    lp_s = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])
    lp_t = torch.tensor([[-0.5, -1.5], [-0.5, -1.5], [-0.5, -1.5]])
    lp_r = torch.tensor([[-0.8, -3.0], [-0.8, -3.0], [-0.8, -3.0]])
    lam = torch.tensor([1.0, 1.25, 0.5])
    adv = gopd_advantages(lp_s, lp_t, lp_r, lam=lam)
    expected = torch.tensor([[0.5, 0.5], [0.575, 0.875], [0.35, -0.25]])
    assert torch.allclose(adv, expected, atol=1e-6)
    # each row equals the scalar-λ result for that row
    for i, lam_i in enumerate(lam.tolist()):
        assert torch.allclose(adv[i], gopd_advantages(lp_s[i : i + 1], lp_t[i : i + 1], lp_r[i : i + 1], lam=lam_i)[0])


# --------------------------------------------------------------------------- full / jsd / topk


def _states(B=3, C=4, V=7):
    logp_s = _logp(B, C, V, seed=1)
    logp_t = _logp(B, C, V, seed=2)
    logp_r = _logp(B, C, V, seed=3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)[:B, :C]
    return logp_s, logp_t, logp_r, mask


def test_full_loss_at_lam_1_is_reverse_kl_to_teacher():
    logp_s, logp_t, logp_r, mask = _states()
    target = target_logprobs(logp_t, logp_r, 1.0)
    loss, metrics = full_loss(logp_s, target, mask)
    expected = _naive_reverse_kl(logp_s, logp_t, mask)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["kl_to_target"] == pytest.approx(expected.item(), abs=1e-6)
    assert loss.item() > 0.05  # the inputs differ: a loss of 0 would also be "close" for a trivial bug


def test_full_loss_at_lam_not_1_is_kl_to_normalised_geometric_mixture():
    logp_s, logp_t, logp_r, mask = _states()
    lam = 1.25
    tgt = torch.log_softmax(lam * logp_t + (1 - lam) * logp_r, -1)
    loss, _ = full_loss(logp_s, target_logprobs(logp_t, logp_r, lam), mask)
    assert loss.item() == pytest.approx(_naive_reverse_kl(logp_s, tgt, mask).item(), abs=1e-6)


def test_full_loss_gradient_flows_to_student_only():
    logp_s, logp_t, _, mask = _states()
    logits = torch.randn(*logp_s.shape, requires_grad=True)
    target = logp_t.clone().requires_grad_(True)
    loss, _ = full_loss(torch.log_softmax(logits, -1), target, mask)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert target.grad is None
    # masked states get no gradient
    assert torch.all(logits.grad[mask == 0] == 0)


def test_jsd_beta_1_is_reverse_kl_and_beta_0_is_forward_kl():
    logp_s, logp_t, _, mask = _states()
    rev, _ = jsd_loss(logp_s, logp_t, mask, beta=1.0)
    fwd, _ = jsd_loss(logp_s, logp_t, mask, beta=0.0)
    full, _ = full_loss(logp_s, logp_t, mask)
    assert rev.item() == pytest.approx(_naive_reverse_kl(logp_s, logp_t, mask).item(), abs=1e-6)
    assert rev.item() == pytest.approx(full.item(), abs=1e-6)
    assert fwd.item() == pytest.approx(_naive_forward_kl(logp_s, logp_t, mask).item(), abs=1e-6)
    assert abs(fwd.item() - rev.item()) > 1e-3  # the two KLs differ on these inputs


def test_jsd_intermediate_beta_matches_mixture_formula():
    logp_s, logp_t, _, mask = _states()
    beta = 0.3
    p_s, p_t = logp_s.exp(), logp_t.exp()
    m = beta * p_t + (1 - beta) * p_s  # M = β·π_T + (1−β)·π_θ
    per_state = beta * (p_t * (logp_t - m.log())).sum(-1) + (1 - beta) * (p_s * (logp_s - m.log())).sum(-1)
    expected = (per_state * mask).sum() / mask.sum()
    loss, metrics = jsd_loss(logp_s, logp_t, mask, beta=beta)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["jsd"] == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_uniform_identical_inputs_is_zero(beta):
    uniform = torch.full((2, 3, 5), -math.log(5))
    loss, _ = jsd_loss(uniform, uniform.clone(), torch.ones(2, 3), beta=beta)
    assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_jsd_rejects_beta_outside_unit_interval(beta):
    logp_s, logp_t, _, mask = _states()
    with pytest.raises(ValueError):
        jsd_loss(logp_s, logp_t, mask, beta=beta)


@pytest.mark.parametrize("lam", [1.0, 1.25, 0.5])
def test_topk_with_k_equal_vocab_equals_full_loss(lam):
    logp_s, logp_t, logp_r, mask = _states()
    V = logp_s.shape[-1]
    values, index = logp_t.topk(V, dim=-1)
    full, _ = full_loss(logp_s, target_logprobs(logp_t, logp_r, lam), mask)
    topk, _ = topk_loss(logp_s, index, values, logp_r.gather(-1, index), lam, mask)
    assert topk.item() == pytest.approx(full.item(), abs=1e-5)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_with_k_below_vocab_is_finite_and_non_negative(k):
    logp_s, logp_t, logp_r, mask = _states()
    values, index = logp_t.topk(k, dim=-1)
    for lam, ref in ((1.0, None), (1.25, logp_r.gather(-1, index)), (0.5, logp_r.gather(-1, index))):
        loss, _ = topk_loss(logp_s, index, values, ref, lam, mask)
        assert torch.isfinite(loss)
        assert loss.item() >= 0
    # at λ = 1 it is a KL between two (k + 1)-bucket distributions, never more than the full KL
    loss, _ = topk_loss(logp_s, index, values, None, 1.0, mask)
    full, _ = full_loss(logp_s, logp_t, mask)
    assert loss.item() <= full.item() + 1e-6


def test_topk_gradient_reaches_student():
    logp_s, logp_t, _, mask = _states()
    logits = torch.randn(*logp_s.shape, requires_grad=True)
    values, index = logp_t.topk(3, dim=-1)
    loss, _ = topk_loss(torch.log_softmax(logits, -1), index, values, None, 1.0, mask)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("lam", [0.25, 0.5, 1.0, 1.25, 2.0])
def test_target_logprobs_is_normalised(lam):
    _, logp_t, logp_r, _ = _states()
    tgt = target_logprobs(logp_t, logp_r, lam)
    assert torch.allclose(torch.logsumexp(tgt, -1), torch.zeros(tgt.shape[:-1]), atol=1e-6)


def test_target_logprobs_at_lam_1_is_teacher():
    _, logp_t, logp_r, _ = _states()
    assert torch.allclose(target_logprobs(logp_t, logp_r, 1.0), logp_t, atol=1e-6)
    assert torch.allclose(target_logprobs(logp_t, None, 1.0), logp_t, atol=1e-6)


def test_target_logprobs_hand_computed():
    # two tokens: π_T = (0.8, 0.2), π_R = (0.5, 0.5), λ = 2 → ∝ (0.8²/0.5, 0.2²/0.5) = (1.28, 0.08)
    logp_t = torch.tensor([0.8, 0.2]).log()
    logp_r = torch.tensor([0.5, 0.5]).log()
    tgt = target_logprobs(logp_t, logp_r, 2.0).exp()
    assert torch.allclose(tgt, torch.tensor([1.28 / 1.36, 0.08 / 1.36]), atol=1e-6)


def test_target_logprobs_per_state_lam_tensor():
    _, logp_t, logp_r, _ = _states(B=2, C=1)
    lam = torch.tensor([1.0, 2.0])[:, None, None]  # (B, 1, 1)
    tgt = target_logprobs(logp_t, logp_r, lam)
    assert torch.allclose(tgt[0], logp_t[0], atol=1e-6)
    assert torch.allclose(tgt[1], target_logprobs(logp_t[1], logp_r[1], 2.0), atol=1e-6)


def test_target_logprobs_without_reference_only_at_lam_1():
    _, logp_t, _, _ = _states()
    with pytest.raises(ValueError):
        target_logprobs(logp_t, None, 1.25)


# -------------------------------------------------------------------------------- sampled loss


def test_sampled_loss_gradient_is_minus_advantage_over_n():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.5, 2.0], [3.0, 7.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, metrics = sampled_loss(lp, adv, mask)
    loss.backward()
    n = 3.0
    expected = -adv * mask / n
    assert torch.allclose(lp.grad, expected, atol=1e-7)
    # on-policy ρ = 1: the loss value is −mean(A) over valid tokens
    assert loss.item() == pytest.approx(-(0.5 - 1.5 + 3.0) / n)
    assert metrics["clip_frac"] == 0.0


def test_sampled_loss_does_not_backprop_into_advantages():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5, 1.0]], requires_grad=True)
    loss, _ = sampled_loss(lp, adv, torch.ones(1, 2))
    loss.backward()
    assert adv.grad is None


def test_sampled_loss_clip_hand_computed():
    # ratios 1.5, 0.9, 1.05, 0.5, 0.5, (masked 3.0); eps = 0.2 → clip range [0.8, 1.2]
    ratio = torch.tensor([[1.5, 0.9, 1.05, 0.5, 0.5, 3.0]])
    lp_old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -0.7, -1.0]])
    lp = (lp_old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, metrics = sampled_loss(lp, adv, mask, lp_old=lp_old, clip_eps=0.2)
    # |ρ − 1| > 0.2 at tokens 0, 3, 4 among the 5 valid ones
    assert metrics["clip_frac"] == pytest.approx(3 / 5)
    # min(ρA, clip(ρ)A): 1.2 (clipped), −0.9, 1.05, −0.8 (clipped), 0.5 (unclipped, pessimistic side)
    assert loss.item() == pytest.approx(-(1.2 - 0.9 + 1.05 - 0.8 + 0.5) / 5, abs=1e-6)
    loss.backward()
    # gradient −ρ·A/N where the unclipped branch is taken, 0 where clipped
    expected = torch.tensor([[0.0, 0.9 / 5, -1.05 / 5, 0.0, -0.5 / 5, 0.0]])
    assert torch.allclose(lp.grad, expected, atol=1e-6)
    assert metrics["approx_kl_old"] == pytest.approx(-float((ratio.log() * mask).sum() / 5), abs=1e-6)


def test_sampled_loss_ratio_one_without_clip_counts_nothing():
    lp = torch.tensor([[-1.0, -2.0]])
    loss, metrics = sampled_loss(lp, torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    assert metrics["clip_frac"] == 0.0
    assert loss.item() == pytest.approx(-1.0)


# ------------------------------------------------------------------------ all-masked rows in losses


def _with_garbage_row(x, fill):
    """Append a row of finite padding garbage (what scatter leaves at masked positions)."""
    return torch.cat([x, torch.full_like(x[:1], fill)], dim=0)


def test_all_masked_row_gives_no_nan_and_does_not_change_any_loss():
    logp_s, logp_t, logp_r, mask = _states(B=2)
    mask_g = torch.cat([mask, torch.zeros_like(mask[:1])], 0)  # (3, C): last row all masked
    logp_s_g, logp_t_g, logp_r_g = (_with_garbage_row(x, 0.0) for x in (logp_s, logp_t, logp_r))
    lp_s, lp_t, lp_r = (x[..., 0] for x in (logp_s, logp_t, logp_r))
    lp_s_g, lp_t_g, lp_r_g = (_with_garbage_row(x, 0.0) for x in (lp_s, lp_t, lp_r))

    adv = gopd_advantages(lp_s, lp_t, lp_r, lam=1.25, mask=mask)
    adv_g = gopd_advantages(lp_s_g, lp_t_g, lp_r_g, lam=1.25, mask=mask_g)
    assert torch.isfinite(adv_g).all() and torch.all(adv_g[-1] == 0)

    pairs = [
        (sampled_loss(lp_s, adv, mask)[0], sampled_loss(lp_s_g, adv_g, mask_g)[0]),
        (
            sampled_loss(lp_s, adv, mask, lp_old=lp_s - 0.3, clip_eps=0.2)[0],
            sampled_loss(lp_s_g, adv_g, mask_g, lp_old=lp_s_g - 0.3, clip_eps=0.2)[0],
        ),
        (
            full_loss(logp_s, target_logprobs(logp_t, logp_r, 1.25), mask)[0],
            full_loss(logp_s_g, target_logprobs(logp_t_g, logp_r_g, 1.25), mask_g)[0],
        ),
        (jsd_loss(logp_s, logp_t, mask, 0.5)[0], jsd_loss(logp_s_g, logp_t_g, mask_g, 0.5)[0]),
        (jsd_loss(logp_s, logp_t, mask, 0.0)[0], jsd_loss(logp_s_g, logp_t_g, mask_g, 0.0)[0]),
    ]
    values, index = logp_t.topk(3, -1)
    values_g, index_g = logp_t_g.topk(3, -1)
    pairs.append(
        (
            topk_loss(logp_s, index, values, logp_r.gather(-1, index), 1.25, mask)[0],
            topk_loss(logp_s_g, index_g, values_g, logp_r_g.gather(-1, index_g), 1.25, mask_g)[0],
        )
    )
    for clean, garbage in pairs:
        assert torch.isfinite(garbage)
        assert garbage.item() == pytest.approx(clean.item(), abs=1e-6)


def test_fully_masked_batch_gives_zero_losses_and_finite_gradients():
    logp_s, logp_t, logp_r, mask = _states()
    mask = torch.zeros_like(mask)
    logits = torch.randn(*logp_s.shape, requires_grad=True)
    lp_logits = torch.randn(*mask.shape, requires_grad=True)
    adv = gopd_advantages(lp_logits, logp_t[..., 0], logp_r[..., 0], lam=1.25, gamma=1.0, mask=mask)
    assert torch.all(adv == 0)
    values, index = logp_t.topk(3, -1)
    losses = [
        sampled_loss(lp_logits, adv, mask)[0],
        sampled_loss(lp_logits, adv, mask, lp_old=lp_logits.detach() - 1, clip_eps=0.2)[0],
        full_loss(torch.log_softmax(logits, -1), logp_t, mask)[0],
        topk_loss(torch.log_softmax(logits, -1), index, values, logp_r.gather(-1, index), 1.25, mask)[0],
        jsd_loss(torch.log_softmax(logits, -1), logp_t, mask, 0.5)[0],
    ]
    for loss in losses:
        assert torch.isfinite(loss) and loss.item() == 0.0
    sum(losses).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(lp_logits.grad).all()
