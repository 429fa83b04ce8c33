"""The token sampler (``rollout.sample_next``): inverse-CDF draws follow softmax(logits / T) exactly."""

import torch

from gopd_lab.lm.rollout import sample_next


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def _assert_close_to(freq: torch.Tensor, p: torch.Tensor, n: int) -> None:
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)


def test_draws_follow_the_softmax_at_each_temperature():
    logits = torch.tensor([2.0, 0.5, 0.0, -1.0, -3.0, 1.2])
    n = 200_000
    for temperature in (1.0, 0.7, 2.0):
        g = torch.Generator().manual_seed(int(temperature * 10))
        tokens = sample_next(logits.expand(n, -1), temperature=temperature, generator=g)
        _assert_close_to(_frequencies(tokens, 6), torch.softmax(logits.double() / temperature, -1), n)


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    n = 100_000
    tokens = sample_next(logits.expand(n, -1), top_p=0.75, generator=torch.Generator().manual_seed(0))
    _assert_close_to(_frequencies(tokens, 4), torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64), n)


def test_a_large_vocabulary_is_sampled_without_bias_towards_any_token():
    vocab, n = 4096, 400  # uniform logits: every token equally likely; rows are independent
    tokens = sample_next(torch.zeros(n * 50, vocab), generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = n * 50 / vocab
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert abs(chi2 - (vocab - 1)) < 6 * (2 * (vocab - 1)) ** 0.5  # chi-square with V - 1 degrees of freedom


def test_row_seeds_make_a_row_independent_of_its_batch():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(2))
    seeds = [11, 12, 13, 14, 15]
    together = sample_next(logits, row_seeds=seeds)
    alone = torch.cat([sample_next(logits[i : i + 1], row_seeds=[s]) for i, s in enumerate(seeds)])
    assert torch.equal(together, alone)
    assert torch.equal(sample_next(logits, row_seeds=seeds), together)  # a seed fixes the draw
