"""The chain domain: its format, step checker, splits and slip; credit shares; chain metrics; a tiny chain build."""

import json

import pytest
import torch

from gopd_lab.experiments import credit
from gopd_lab.experiments.chain_eval import chain_metrics
from gopd_lab.tasks import get_task
from gopd_lab.tasks.chain import (
    chain,
    chain_dir,
    chain_verifier,
    check_steps,
    generate_sets,
    has_carry,
    operands,
    step_spans,
    strata,
    stratum,
    with_carry_slip,
)
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer, char_vocab, check_text

RIGHT = "7+5+0=12,4+8+1=13,3+0+1=4>432"  # 347+85


def test_chain_writes_columns_right_to_left_with_carries_then_the_answer():
    assert chain(347, 85) == RIGHT
    assert chain(38, 45) == "8+5+0=13,3+4+1=8>83"
    assert chain(38, 45, drop_carry=True) == "8+5+0=13,3+4+0=7>73"  # the slip: first carry dropped, then consistent
    assert chain(9999, 9999) == "9+9+0=18,9+9+1=19,9+9+1=19,9+9+1=19>19998"  # 41 characters, the longest
    assert len(chain(9999, 9999)) == 41 and len(chain(10, 10)) == 18
    assert not has_carry(12, 34) and chain(12, 34, drop_carry=True) == chain(12, 34)


def test_step_checker_finds_the_dropped_carry_and_tiles_the_completion():
    slipped = "7+5+0=12,4+8+0=12,3+0+1=4>422"
    check = check_steps("347+85=", slipped)
    assert check.first_wrong_token == 13 and slipped[13] == "0"  # the carry digit of column 2
    assert check.first_wrong_step == 1 and check.steps == [(0, 9), (9, 18), (18, 25), (25, 30)]  # eos at 29
    assert check_steps("347+85=", RIGHT) == type(check)(check.steps, None, None)
    early = check_steps("347+85=", RIGHT[:17])  # stopped after column 2: wrong at its <eos>
    assert early.first_wrong_token == 17 and early.first_wrong_step == 1
    on = check_steps("347+85=", RIGHT + "1")  # ran past the answer: wrong where <eos> should be
    assert on.first_wrong_token == len(RIGHT) and on.first_wrong_step == 3
    assert check_steps("347+85=", RIGHT[:10], eos=False).first_wrong_token is None  # unfinished, nothing wrong yet
    for text in ("", "garbage", "1+2,3>", ">>5"):
        spans = step_spans(text)
        assert spans[0][0] == 0 and spans[-1][1] == len(text) + 1
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_chain_verifier_reads_only_the_final_answer():
    assert chain_verifier(RIGHT, RIGHT)
    assert chain_verifier("anything>432", RIGHT)  # a final-answer check, the step checker is the step view
    assert not chain_verifier("7+5+0=12,4+8+0=12,3+0+1=4>422", RIGHT)
    assert not chain_verifier("7+5+0=12", RIGHT) and not chain_verifier(">0432", RIGHT)


def test_committed_sets_are_disjoint_stratified_and_regenerate_from_their_seed():
    sets = {s: [json.loads(x) for x in open(chain_dir() / f"chain_{s}.jsonl")] for s in ("train", "test", "rl")}
    prompts = {s: {r["prompt"] for r in rows} for s, rows in sets.items()}
    assert len(prompts["test"]) >= 1000 and len(prompts["train"]) == len(prompts["rl"]) == 4000
    assert not (
        prompts["train"] & prompts["test"] or prompts["train"] & prompts["rl"] or prompts["test"] & prompts["rl"]
    )
    counts = {k: 0 for k in strata()}
    for p in prompts["test"]:
        counts[stratum(p)] += 1
    assert set(counts.values()) == {112}
    fresh = generate_sets(0)
    assert [e.prompt for e in fresh["test"]] == [r["prompt"] for r in sets["test"]]
    for rows in sets.values():
        for r in rows:
            assert r["answer"] == chain(*operands(r["prompt"])) and 18 <= len(r["answer"]) <= 41
            check_text(r["prompt"] + r["answer"])  # the character tokenizer needs no new character
    assert len(char_vocab()) == 104  # every existing id kept: the alphabet is unchanged
    assert get_task("chain-rl").test == get_task("chain").test


def test_carry_slip_drops_the_first_carry_in_its_share_of_chains():
    task = get_task("chain")
    slipped = with_carry_slip(task, 0.6, seed=5)
    carry = [(e, s) for e, s in zip(task.train, slipped.train) if has_carry(*operands(e.prompt))]
    changed = [s for e, s in carry if s.answer != e.answer]
    assert 0.55 < len(changed) / len(carry) < 0.65
    assert all(s.answer == chain(*operands(s.prompt), drop_carry=True) for s in changed)
    assert slipped.test == task.test


def test_negative_share_and_windows():
    values = [0.5, -1.0, -3.0, 0.0, -1.0]
    assert credit.negative_share(values, range(1, 3)) == pytest.approx(4 / 5)
    assert credit.negative_share([0.1, 0.2], range(0, 1)) is None
    steps = [(0, 9), (9, 18), (18, 25)]
    assert credit.window(steps, 1, 13, 25) == range(8, 19)
    assert credit.window(steps, 1, 13, 25, "token") == range(12, 15)
    assert credit.window(steps, 0, 0, 25, "token") == range(0, 2)
    lo, hi = credit.bootstrap_mean(torch.linspace(0, 1, 50).numpy(), n_boot=200)
    assert lo < 0.5 < hi


def test_credit_on_tiny_models_exopd_scales_opd_and_grpo_is_flat():
    tok = build_char_tokenizer()
    base, teacher = tiny_model(seed=0, tokenizer=tok), tiny_model(seed=1, tokenizer=tok)
    task = get_task("chain")
    samples = credit.credit_samples(base, teacher, tok, task, k=2, limit=4, seed=0, max_new_tokens=12)
    assert len(samples) == 8
    for s in samples:
        assert len(s.tokens) == len(s.advantages["opd"]) == len(s.advantages["grpo"])
        assert s.advantages["exopd"] == pytest.approx([2 * a for a in s.advantages["opd"]], abs=1e-5)
        assert len(set(s.advantages["grpo"])) <= 1
    s = samples[0]
    s.correct, s.advantages["grpo"] = False, [-1.0] * len(s.tokens)
    table = credit.shares([s])
    grpo = table[table.method == "grpo"].iloc[0]
    assert grpo.share == pytest.approx(grpo.window / grpo.length)  # an even spread by construction
    summary = credit.summarise(table, n_boot=50)
    assert set(summary.method) <= set(credit.METHODS) and (summary.lo <= summary.hi).all()


def test_chain_metrics_of_a_tiny_model():
    tok = build_char_tokenizer()
    m = chain_metrics(tiny_model(seed=0, tokenizer=tok), tok, get_task("chain"), limit=6, max_new_tokens=10)
    assert m["n"] == 6 and 0 <= m["greedy_acc"] <= 1 and 1 <= m["mean_len"] <= 11
    assert all(r is None or 0 <= r <= 1 for r in m["error_rate"].values())
    assert m["reached"]["column 1"] == 6


def test_mistake_kind_names_the_dropped_carry():
    from gopd_lab.tasks.chain import mistake_kind

    assert mistake_kind("347+85=", "7+5+0=12,4+8+0=12,3+0+1=4>422") == "dropped carry"
    assert mistake_kind("347+85=", "7+5+0=12,4+8+1=14,3+0+1=4>442") == "column"
    assert mistake_kind("347+85=", RIGHT[:-1] + "3") == "answer"
    assert mistake_kind("347+85=", RIGHT) is None


@pytest.mark.slow
def test_a_scaled_down_chain_build_records_its_slip_tokens_and_training_files(tmp_path):
    from gopd_lab.experiments import zoo_build
    from gopd_lab.world import zoo

    entries = zoo_build.build(
        tmp_path / "zoo", recipes=zoo.RECIPES_CHAIN, work=tmp_path / "work", scale=0.005, eval_limit=4, progress=False
    )
    assert list(entries) == ["chain-sft", "chain-base", "chain-teacher", "chain-teacher-nokl"]
    base, teacher, nokl = (entries[n] for n in ("chain-base", "chain-teacher", "chain-teacher-nokl"))
    assert base["recipe"]["init"] == "chain-sft"
    assert base["recipe"]["carry_slip"] == zoo.CHAIN_SLIP and base["recipe"]["max_new_tokens"] == 42
    assert [f["path"] for f in base["train_data"]] == ["data/chain/chain_train.jsonl"]
    assert [f["path"] for f in teacher["train_data"]] == ["data/chain/chain_rl.jsonl"]
    assert teacher["recipe"]["kl_coef"] == zoo.CHAIN_BETA and "kl_coef" not in nokl["recipe"]
    assert set(base["accuracy"]) == {"chain"} and base["accuracy"]["chain"]["n"] == 4
    assert base["architecture"]["vocab_size"] == 104  # the character tokenizer, unchanged
    again = zoo_build.build(
        tmp_path / "again",
        recipes=zoo.RECIPES_CHAIN[:1],
        work=tmp_path / "w2",
        scale=0.005,
        eval_limit=4,
        progress=False,
    )
    assert again["chain-sft"]["sha256"] == entries["chain-sft"]["sha256"]  # deterministic
