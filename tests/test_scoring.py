"""Scoring and sampling on a tiny random Qwen2 against naive full-sequence computations."""

import pytest
import torch

from gopd_lab.config import ConfigError
from gopd_lab.lm.logprobs import Positions, full_logprobs, student_forward, student_kl_forward, token_logprobs
from gopd_lab.lm.rollout import Prompts, Rollout, encode_prompts, left_pad, position_ids_from_mask, sample
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

PROMPTS = ["12+7=", "x", "hello world, 3*4=", "ab"]
# completion lengths (EOS included); None = no EOS, runs to the full width
LENGTHS = [None, 3, 1, 6]
WIDTH = 7


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def sharp_model(tok, seed=3, **kwargs):
    """A tiny random Qwen2 with larger weights than the default init, so that greedy decoding does not just
    repeat one token and the log-probs are far from uniform (bugs in positions or masks then show)."""
    model = tiny_model(seed=seed, tokenizer=tok, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def model(tok):
    return sharp_model(tok)


def make_rollout(tok, prompts=PROMPTS, lengths=LENGTHS, width=WIDTH, seed=0) -> Rollout:
    """Left-padded prompts, right-padded completions that stop at EOS at different positions."""
    g = torch.Generator().manual_seed(seed)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    prompt_ids, prompt_mask = left_pad([tok(p)["input_ids"] for p in prompts], pad)
    B = len(prompts)
    comp = torch.full((B, width), pad, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, n in enumerate(lengths):
        n_tok = width if n is None else n
        comp[i, :n_tok] = torch.randint(4, len(tok), (n_tok,), generator=g)
        if n is not None:
            comp[i, n - 1] = eos
        mask[i, :n_tok] = 1
    return Rollout(prompt_ids, prompt_mask, comp, mask, list(prompts), [""] * B, ["default"] * B)


def naive_full(model, ro: Rollout) -> torch.Tensor:
    """``log_softmax(model(ids, mask, pos).logits)`` at the positions predicting each completion token, (B, C, V)."""
    ids, mask = ro.input_ids, ro.attention_mask
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    P = ro.prompt_ids.shape[1]
    return torch.log_softmax(logits.float(), -1)[:, P - 1 : -1]  # (B, C, V)


def naive_lp(model, ro: Rollout) -> torch.Tensor:
    lp = naive_full(model, ro).gather(-1, ro.completion_ids[..., None]).squeeze(-1)  # (B, C)
    return lp * ro.completion_mask


def test_hand_built_rollout_shape(tok):
    ro = make_rollout(tok)
    assert ro.completion_mask.sum(1).tolist() == [WIDTH, 3, 1, 6]
    assert ro.prompt_mask.sum(1).tolist() == [len(p) for p in PROMPTS]
    assert (ro.prompt_ids[:, -1] != tok.pad_token_id).all()  # left padded: every prompt ends at the last column


@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_token_logprobs_equals_naive(model, tok, chunk):
    ro = make_rollout(tok)
    with torch.no_grad():
        expected = naive_lp(model, ro)
    lp = token_logprobs(model, ro, chunk_tokens=chunk)
    assert lp.dtype == torch.float32 and lp.shape == ro.completion_mask.shape
    assert torch.allclose(lp, expected, atol=1e-5)
    assert torch.all(lp[ro.completion_mask == 0] == 0)
    assert torch.all(lp[ro.completion_mask == 1] < 0)


def test_scoring_a_row_alone_equals_scoring_it_in_a_padded_batch(model, tok):
    ro = make_rollout(tok)
    batch_lp = token_logprobs(model, ro, chunk_tokens=3)
    for i in range(len(ro)):
        n = int(ro.completion_mask[i].sum())
        p = int(ro.prompt_mask[i].sum())
        alone = Rollout(
            ro.prompt_ids[i : i + 1, -p:],
            ro.prompt_mask[i : i + 1, -p:],
            ro.completion_ids[i : i + 1, :n],
            ro.completion_mask[i : i + 1, :n],
            [ro.prompts[i]],
            [""],
            ["default"],
        )
        assert alone.prompt_mask.all()  # no padding at all
        lp = token_logprobs(model, alone)
        assert torch.allclose(lp[0], batch_lp[i, :n], atol=1e-5), i
        # also through Rollout.select (keeps the batch padding)
        assert torch.allclose(token_logprobs(model, ro.select([i]))[0], batch_lp[i], atol=1e-5)


def test_positions_are_row_major_valid_positions(tok):
    ro = make_rollout(tok)
    pos = Positions.of(ro)
    assert len(pos) == int(ro.completion_mask.sum())
    expected = [(b, c) for b in range(len(ro)) for c in range(WIDTH) if ro.completion_mask[b, c]]
    assert list(zip(pos.b.tolist(), pos.c.tolist())) == expected


@pytest.mark.parametrize("chunk", [2, 0])
def test_full_logprobs_equals_naive_rows(model, tok, chunk):
    ro = make_rollout(tok)
    pos = Positions.of(ro)
    with torch.no_grad():
        expected = naive_full(model, ro)[pos.b, pos.c]  # (N, V)
    logp = full_logprobs(model, ro, chunk_tokens=chunk)
    assert logp.shape == (len(pos), len(tok)) and logp.dtype == torch.float32
    assert torch.allclose(logp, expected, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 0])
def test_with_rank_equals_naive_rank(model, tok, chunk):
    ro = make_rollout(tok)
    with torch.no_grad():
        full = naive_full(model, ro)
    lp_tok = full.gather(-1, ro.completion_ids[..., None])  # (B, C, 1)
    naive_rank = (full > lp_tok).sum(-1) * ro.completion_mask  # (B, C)
    lp, rank = token_logprobs(model, ro, chunk_tokens=chunk, with_rank=True)
    assert torch.equal(rank, naive_rank)
    assert torch.allclose(lp, naive_lp(model, ro).detach(), atol=1e-5)
    assert rank[ro.completion_mask == 1].max() > 0  # random tokens are rarely the argmax
    # the argmax token has rank 0
    argmax_ro = make_rollout(tok)
    argmax_ro.completion_ids = torch.where(ro.completion_mask.bool(), full.argmax(-1), ro.completion_ids)
    _, rank0 = token_logprobs(model, argmax_ro, with_rank=True)
    # changing a token changes later states, so only the first token of each row is the naive argmax
    assert torch.all(rank0[:, 0] == 0)


def _param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk,full", [(2, False), (0, False), (2, True), (0, True)])
def test_student_forward_equals_naive_values_and_gradients(tok, chunk, full):
    model = sharp_model(tok, seed=4)
    model.train()
    ro = make_rollout(tok, seed=1)
    weights = torch.randn(ro.completion_mask.shape, generator=torch.Generator().manual_seed(5)) * ro.completion_mask

    model.zero_grad(set_to_none=True)
    out = student_forward(model, ro, full=full, chunk_tokens=chunk)
    loss = (out.lp * weights).sum()
    if full:
        pos = out.positions
        loss = loss + (out.logp.exp() * weights[pos.b, pos.c][:, None] * torch.linspace(0, 1, out.logp.shape[1])).sum()
    loss.backward()
    got = _param_grads(model)

    model.zero_grad(set_to_none=True)
    full_naive = naive_full(model, ro)
    lp_naive = full_naive.gather(-1, ro.completion_ids[..., None]).squeeze(-1) * ro.completion_mask
    loss_naive = (lp_naive * weights).sum()
    pos = Positions.of(ro)
    if full:
        rows = full_naive[pos.b, pos.c]
        loss_naive = (
            loss_naive + (rows.exp() * weights[pos.b, pos.c][:, None] * torch.linspace(0, 1, rows.shape[1])).sum()
        )
    loss_naive.backward()
    want = _param_grads(model)

    assert torch.allclose(out.lp.detach(), lp_naive.detach(), atol=1e-5)
    assert out.lp.requires_grad
    if full:
        assert torch.allclose(out.logp.detach(), full_naive[pos.b, pos.c].detach(), atol=1e-5)
    else:
        assert out.logp is None
    naive_entropy = -(full_naive.exp() * full_naive).sum(-1) * ro.completion_mask
    assert torch.allclose(out.entropy, naive_entropy.detach(), atol=1e-4)
    assert not out.entropy.requires_grad
    assert set(got) == set(want) and len(got) > 5
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-3)
        assert torch.allclose(got[name], want[name], atol=1e-5 * float(scale) + 1e-7), name


@pytest.mark.parametrize("chunk", [1, 3, 0])
@pytest.mark.parametrize("tied", [True, False])
def test_fused_full_kl_equals_full_loss_values_and_gradients(tok, chunk, tied):
    """student_kl_forward (head + KL fused, gradients formed in the forward) = full_loss on student_forward."""
    from gopd_lab.objectives import full_loss, target_logprobs

    model = sharp_model(tok, seed=6, tie_word_embeddings=tied)
    model.train()
    ro = make_rollout(tok, seed=2)
    pos = Positions.of(ro)
    g = torch.Generator().manual_seed(7)
    teacher = torch.log_softmax(torch.randn(len(pos), len(tok), generator=g) * 2, -1)
    reference = torch.log_softmax(torch.randn(len(pos), len(tok), generator=g) * 2, -1)
    target = target_logprobs(teacher, reference, 1.25)  # a G-OPD target at λ = 1.25

    model.zero_grad(set_to_none=True)
    out = student_kl_forward(model, ro, target, chunk_tokens=chunk)
    (out.kl_loss * 0.7).backward()  # an incoming gradient other than 1 (e.g. the data-parallel share)
    got = _param_grads(model)

    model.zero_grad(set_to_none=True)
    ref = student_forward(model, ro, full=True, chunk_tokens=chunk)
    want_loss, _ = full_loss(ref.logp, target, torch.ones(len(pos)))
    (want_loss * 0.7).backward()
    want = _param_grads(model)

    assert out.kl_loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(out.lp, ref.lp.detach(), atol=1e-5) and not out.lp.requires_grad
    assert torch.allclose(out.entropy, ref.entropy, atol=1e-5)
    assert set(got) == set(want) and len(got) > 5
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-3)
        assert torch.allclose(got[name], want[name], atol=1e-5 * float(scale) + 1e-7), name


def test_fused_full_kl_declines_a_head_with_a_bias(tok):
    model = sharp_model(tok)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
    ro = make_rollout(tok)
    assert student_kl_forward(model, ro, torch.zeros(len(Positions.of(ro)), len(tok))) is None


def test_scores_are_float32_for_a_bfloat16_model(tok):
    model = sharp_model(tok).to(torch.bfloat16)
    ro = make_rollout(tok)
    lp = token_logprobs(model, ro)
    assert lp.dtype == torch.float32
    with torch.no_grad():
        expected = naive_lp(model, ro)
    assert torch.allclose(lp, expected, atol=0.1)


# --------------------------------------------------------------------------------------- sampling


def _prompts(tok, texts=PROMPTS):
    return encode_prompts(tok, texts)


def test_sampling_stops_after_eos_and_pads_with_pad_id(model, tok):
    prompts = _prompts(tok)

    def gen():
        return torch.Generator().manual_seed(11)

    free = sample(model, prompts, max_new_tokens=12, generator=gen(), pad_token_id=tok.pad_token_id)
    assert free.completion_mask.all()  # no EOS given: every token is kept
    # use a token that the free run emits mid-way in some rows as the "EOS"
    firsts = {}
    for i in range(len(prompts)):
        for c, t in enumerate(free.completion_ids[i].tolist()):
            firsts.setdefault(t, {}).setdefault(i, c)
    eos = max(firsts, key=lambda t: (len(firsts[t]), -max(firsts[t].values())))
    assert any(c < 11 for c in firsts[eos].values())

    pad = 99  # not the tokenizer's pad id: the sampler must write the pad id it is given
    ro = sample(model, prompts, max_new_tokens=12, generator=gen(), eos_token_id=eos, pad_token_id=pad, tokenizer=tok)
    for i in range(len(prompts)):
        stop = firsts[eos].get(i)
        n = 12 if stop is None else stop + 1
        assert ro.completion_mask[i, :n].all() and not ro.completion_mask[i, n:].any(), i
        assert torch.equal(ro.completion_ids[i, :n], free.completion_ids[i, :n]), i  # same draws until EOS
        assert torch.all(ro.completion_ids[i, n:] == pad), i
        if stop is not None:
            assert ro.completion_ids[i, stop] == eos
        assert ro.completions[i] == tok.decode(ro.completion_ids[i, :n].tolist(), skip_special_tokens=True)
    assert ro.prompt_mask.sum(1).tolist() == [len(p) for p in prompts.ids]


def test_sampling_loop_breaks_when_every_row_is_done(model, tok):
    prompts = _prompts(tok, ["1+1="])
    eos = int(sample(model, prompts, max_new_tokens=1, greedy=True).completion_ids[0, 0])
    ro = sample(model, prompts, max_new_tokens=20, greedy=True, eos_token_id=eos)
    assert ro.completion_ids.shape == (1, 1) and ro.completion_mask.tolist() == [[1]]


def _greedy_no_cache(model, ids: list[int], steps: int, eos: int | None = None) -> list[int]:
    seq = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=seq).logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return out


def test_greedy_sampling_equals_stepwise_argmax_without_cache(model, tok):
    prompts = _prompts(tok)
    steps = 10
    ro = sample(model, prompts, max_new_tokens=steps, greedy=True, pad_token_id=tok.pad_token_id)
    refs = [_greedy_no_cache(model, ids, steps) for ids in prompts.ids]
    for i, ref in enumerate(refs):
        assert ro.completion_ids[i].tolist() == ref, i
    # with an EOS that one row hits early: that row stops, the others run on unchanged
    eos = refs[2][3]
    ro = sample(model, prompts, max_new_tokens=steps, greedy=True, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    for i, ids in enumerate(prompts.ids):
        ref = _greedy_no_cache(model, ids, steps, eos=eos)
        n = len(ref)
        assert ro.completion_ids[i, :n].tolist() == ref, i
        assert int(ro.completion_mask[i].sum()) == n
        assert torch.all(ro.completion_ids[i, n:] == tok.pad_token_id)


def test_sampled_rollout_scores_like_naive(model, tok):
    """The mask the sampler writes is the one scoring uses: sample, then score against naive."""
    prompts = _prompts(tok)
    ro = sample(
        model,
        prompts,
        max_new_tokens=6,
        generator=torch.Generator().manual_seed(2),
        eos_token_id=int(sample(model, prompts, max_new_tokens=1, greedy=True).completion_ids[1, 0]),
    )
    with torch.no_grad():
        assert torch.allclose(token_logprobs(model, ro), naive_lp(model, ro), atol=1e-5)


def test_sample_restores_training_mode(tok):
    model = tiny_model(seed=3, tokenizer=tok).train()
    sample(model, _prompts(tok, ["ab"]), max_new_tokens=2, greedy=True)
    assert model.training


def test_prompt_longer_than_context_raises(tok):
    model = tiny_model(seed=3, tokenizer=tok, max_positions=32)
    long = Prompts([[5] * 40, [6] * 3], ["x" * 40, "y" * 3], ["default"] * 2)
    with pytest.raises(ConfigError, match="context"):
        sample(model, long, max_new_tokens=4, max_context=model.config.max_position_embeddings)
    # prompt fits but prompt + max_new_tokens does not
    fits = Prompts([[5] * 30], ["x" * 30], ["default"])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        sample(model, fits, max_new_tokens=4, max_context=32)
    ro = sample(model, fits, max_new_tokens=2, max_context=32, greedy=True)
    assert ro.completion_ids.shape == (1, 2)


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=7)
    assert ids.tolist() == [[1, 2, 3], [7, 7, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_train_rejects_a_prompt_longer_than_the_students_context(tiny_dirs, tmp_path):
    from gopd_lab.config import RunConfig
    from gopd_lab.loop.train import train

    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=["1" * 130, "2+2="],
        batch_size=2,
        max_new_tokens=4,
        steps=1,
        out_dir=str(tmp_path / "run"),
    )
    with pytest.raises(ConfigError, match="context of 128"):
        train(cfg, progress=False)
