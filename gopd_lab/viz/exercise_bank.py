"""Every exercise of the course, by id (``<notebook>-<name>``): ``course.exercise(id).check(answer, **context)``.

Three lists: value exercises (compute a number from the notebook's values), implement-the-line exercises
(a ``lambda`` judged on random trees against the package's own function) and predictions (written before the
cell that shows the outcome; the verdict reads the outcome off the data). Each lists the wrong answers it must
reject; ``tests/test_course.py`` checks each against its solution and every one of them.
"""

from __future__ import annotations

from gopd_lab.viz import exercise_oracles as oracle
from gopd_lab.viz.exercises import Exercise

__all__ = ["EXERCISES", "exercise"]

_EXERCISES = [
    Exercise(
        id="01-advantage",
        answer_name="answer_advantage",
        expected=lambda record, t: oracle.advantage_at(record, t, 2.0),
        solution=(
            'answer_advantage = 2.0 * record["lp_teacher"][t] + (1 - 2.0) * record["lp_reference"][t] '
            '- record["lp_student"][t]'
        ),
        wrong={
            "0": "0.0",
            "the value the run trained with, at its own λ": (
                'record["lam"] * record["lp_teacher"][t] + (1 - record["lam"]) * record["lp_reference"][t] '
                '- record["lp_student"][t]'
            ),
            "the λ = 1 (OPD) value, where the reference cancels": 'record["lp_teacher"][t] - record["lp_student"][t]',
            "the sign-flipped value": (
                '-(2.0 * record["lp_teacher"][t] - record["lp_reference"][t] - record["lp_student"][t])'
            ),
        },
        hints=(
            "A_t is the reward scaled by λ, minus how far the student already moved from the reference.",
            "the reward is ℓ^T − ℓ^R; the student's own term is ℓ^θ − ℓ^R; at λ = 2 the reference does not cancel.",
            "A_t = λ·(ℓ^T_t − ℓ^R_t) − (ℓ^θ_t − ℓ^R_t), with λ = 2 and t = t.",
        ),
        why="A_t = λ·(ℓ^T − ℓ^R) − (ℓ^θ − ℓ^R) = 2·ℓ^T − ℓ^R − ℓ^θ at λ = 2",
        sample=lambda seed: {"record": (r := oracle.record(seed)), "t": oracle.largest_gap(r)},
    ),
    Exercise(
        id="02-reverse-kl",
        answer_name="answer_reverse_kl",
        expected=lambda lp_student, scored, valid: float((lp_student - scored.lp_teacher)[valid].mean()),
        solution="answer_reverse_kl = float((lp_student - scored.lp_teacher)[valid].mean())",
        wrong={
            "0": "0.0",
            "the sign-flipped value, mean(ℓ^T − ℓ^θ)": "float((scored.lp_teacher - lp_student)[valid].mean())",
            "the mean over every position, padding included": "float((lp_student - scored.lp_teacher).mean())",
            "a sum, not a mean": "float((lp_student - scored.lp_teacher)[valid].sum())",
        },
        hints=(
            "the reverse KL is an expectation under the student, and these tokens were sampled by it.",
            "per token it is the student's log-prob minus the teacher's; padding is not a token.",
            "mean over valid tokens of ℓ^θ_t − ℓ^T_t: index both (B, C) tensors with valid, then .mean().",
        ),
        why="on the student's own samples, mean(ℓ^θ − ℓ^T) over valid tokens estimates the reverse KL; "
        "it is −mean(A_t) at λ = 1",
        sample=lambda seed: {k: v for k, v in oracle.batch(seed).items() if k != "advantages"},
    ),
    Exercise(
        id="03-log-z",
        answer_name="answer_log_z",
        expected=lambda teacher, reference, seq: oracle.log_z(teacher, reference, 1.5),
        solution='answer_log_z = float(torch.logsumexp(1.5 * seq["teacher"] + (1 - 1.5) * seq["reference"], 0))',
        wrong={
            "0": "0.0",
            "log Z at λ = 1 (always 0)": 'float(torch.logsumexp(seq["teacher"], 0))',
            "log Z at λ = 2": 'float(torch.logsumexp(2.0 * seq["teacher"] - seq["reference"], 0))',
            "the reference left out": 'float(torch.logsumexp(1.5 * seq["teacher"], 0))',
            "the sign-flipped value": 'float(-torch.logsumexp(1.5 * seq["teacher"] - 0.5 * seq["reference"], 0))',
            "a log of a mean, not of a sum": (
                'float(torch.logsumexp(1.5 * seq["teacher"] - 0.5 * seq["reference"], 0)) '
                '- float(torch.log(torch.tensor(len(seq["teacher"]))))'
            ),
        },
        hints=(
            "Step 4: the objective at its maximiser is the log of the normaliser Z_λ.",
            "Z_λ sums π_R(a)^(1−λ)·π_T(a)^λ over every completion a; work in log space (torch.logsumexp).",
            "log Z_λ = logsumexp over a of λ·log π_T(a) + (1 − λ)·log π_R(a), with λ = 1.5.",
        ),
        why="J at the optimum is log Z_λ = log Σ_a π_R(a)^(1−λ)·π_T(a)^λ (Step 4)",
        sample=oracle.tree,
    ),
    Exercise(
        id="03-token-optimum",
        answer_name="answer_root",
        expected=lambda teacher, reference: oracle.root_optimum(teacher, reference, 2.0),
        solution="answer_root = torch.softmax(2.0 * teacher.log_probs()[0] + (1 - 2.0) * reference.log_probs()[0], -1)",
        wrong={
            "the teacher's own distribution (λ = 1)": "teacher.log_probs()[0].exp()",
            "unnormalised": "(2.0 * teacher.log_probs()[0] - reference.log_probs()[0]).exp()",
            "λ and 1 − λ swapped": "torch.softmax(-teacher.log_probs()[0] + 2.0 * reference.log_probs()[0], -1)",
            "the sequence-level optimum's root": (
                "exact.sequence_level_optimum(teacher, reference, 2.0).log_probs()[0].exp().detach()"
            ),
        },
        hints=(
            "the token-level optimum is normalised at each state on its own, with no look-ahead.",
            "combine the two rows of log-probabilities at state 0 linearly, then normalise (softmax).",
            "softmax(λ·log π_T(·|0) + (1 − λ)·log π_R(·|0)) with λ = 2: row 0 of the (S, K) tables.",
        ),
        why="π_tok(·|s) ∝ π_R(·|s)^(1−λ)·π_T(·|s)^λ, normalised at the state itself (Step 5)",
        rtol=1e-3,
        atol=1e-6,
        sample=lambda seed: {k: v for k, v in oracle.tree(seed).items() if k != "seq"},
    ),
    Exercise(
        id="05-reward",
        answer_name="answer_reward_gap",
        expected=lambda lp, valid: float((lp["zoo:big-base"] - lp["zoo:student-base"])[valid].mean()),
        solution=(
            'answer_reward_gap = float(\n    ((lp["zoo:big-teacher"] - lp["zoo:student-base"]) '
            '- (lp["zoo:big-teacher"] - lp["zoo:big-base"]))[valid].mean()\n)'
        ),
        wrong={
            "0": "0.0",
            "the reward with big-base as reference alone": (
                'float((lp["zoo:big-teacher"] - lp["zoo:big-base"])[valid].mean())'
            ),
            "the sign-flipped value (big-base minus student)": (
                'float((lp["zoo:student-base"] - lp["zoo:big-base"])[valid].mean())'
            ),
            "the mean over every position, padding included": (
                'float((lp["zoo:big-base"] - lp["zoo:student-base"]).mean())'
            ),
        },
        hints=(
            "write both rewards out: what is left of the teacher's term in their difference?",
            "the signed reward is ℓ^T − ℓ^R; the student's reward minus big-base's; only valid tokens count.",
            "mean over valid tokens of (ℓ^T − ℓ^student) − (ℓ^T − ℓ^big-base) = ℓ^big-base − ℓ^student.",
        ),
        why="the teacher terms cancel: the difference of the two rewards is ℓ^base − ℓ^student, the capacity gap "
        "between the big and the small base that reward correction removes",
        sample=oracle.three_models,
    ),
    Exercise(
        id="06-wrong-teacher",
        answer_name="answer_wrong_teacher",
        expected=lambda models, rollout, rows, scored: oracle.wrong_teacher_gap(models, rollout, rows, scored),
        solution=(
            'mul_rows = rollout.select(rows["mul"])\nmul_valid = mul_rows.completion_mask.bool()\n'
            "answer_wrong_teacher = float(\n"
            '    token_logprobs(models.teacher_for("add"), mul_rows)[mul_valid].mean()\n'
            '    - scored.lp_teacher[rows["mul"]][mul_valid].mean()\n)'
        ),
        wrong={
            "0": "0.0",
            "the right teacher's mean alone": 'float(scored.lp_teacher[rows["mul"]].mean())',
            "the sign-flipped value": (
                'float(scored.lp_teacher[rows["mul"]][rollout.select(rows["mul"]).completion_mask.bool()].mean()'
                ' - token_logprobs(models.teacher_for("add"), rollout.select(rows["mul"]))'
                '[rollout.select(rows["mul"]).completion_mask.bool()].mean())'
            ),
        },
        hints=(
            "score the same mul tokens twice: once by the add teacher, once (already done) by the mul teacher.",
            'token_logprobs(models.teacher_for("add"), rollout.select(rows["mul"])) is (rows, C); mask it.',
            "mean of the add teacher's ℓ over the mul rows' real tokens − mean of scored.lp_teacher over the same.",
        ),
        why="each teacher is the expert of its own domain: routing mul rows to teacher-add scores the same tokens "
        "with a model that knows less about them, a different (here lower) signal than the one G-OPD uses",
        sample=oracle.two_teachers,
    ),
    # ---------------------------------------------------------------- implement-the-line, judged on random trees
    Exercise(
        id="03-implement-advantage",
        answer_name="my_advantage",
        kind="function",
        expected=oracle.gopd_advantages,
        solution="my_advantage = lambda lp_student, lp_teacher, lp_reference, lam: (\n"
        "    lam * (lp_teacher - lp_reference) - (lp_student - lp_reference)\n)",
        wrong={
            "the λ = 1 advantage whatever λ": "lambda lp_student, lp_teacher, lp_reference, lam: lp_teacher - lp_student",
            "λ on the whole advantage": (
                "lambda lp_student, lp_teacher, lp_reference, lam: lam * (lp_teacher - lp_student)"
            ),
            "the sign-flipped advantage": (
                "lambda lp_student, lp_teacher, lp_reference, lam: "
                "-(lam * (lp_teacher - lp_reference) - (lp_student - lp_reference))"
            ),
        },
        hints=(
            "the advantage is the integrand of J_λ (Step 2): a scaled reward minus a KL term, per token.",
            "the reward is ℓ^T − ℓ^R, scaled by λ; the KL term is ℓ^θ − ℓ^R, not scaled.",
            "A_t = λ·(ℓ^T_t − ℓ^R_t) − (ℓ^θ_t − ℓ^R_t).",
        ),
        why="your A_t matches gopd_advantages on every token of three random trees (λ = 0.5, 1.25, 2)",
        rtol=1e-4,
        atol=1e-5,
        sample=lambda seed: {},
        trials=oracle.token_trials,
    ),
    Exercise(
        id="03-implement-optimum",
        answer_name="my_optimum",
        kind="function",
        expected=oracle.sequence_optimum,
        solution="my_optimum = lambda teacher, reference, lam: torch.softmax(\n"
        "    lam * exact.sequence_logprobs(teacher) + (1 - lam) * exact.sequence_logprobs(reference), 0\n)",
        wrong={
            "the teacher whatever λ": "lambda teacher, reference, lam: exact.sequence_logprobs(teacher).exp()",
            "unnormalised": (
                "lambda teacher, reference, lam: (lam * exact.sequence_logprobs(teacher) "
                "+ (1 - lam) * exact.sequence_logprobs(reference)).exp()"
            ),
            "the token-level optimum": (
                "lambda teacher, reference, lam: "
                "exact.sequence_logprobs(exact.token_level_optimum(teacher, reference, lam)).exp()"
            ),
            "λ and 1 − λ swapped": (
                "lambda teacher, reference, lam: torch.softmax((1 - lam) * exact.sequence_logprobs(teacher) "
                "+ lam * exact.sequence_logprobs(reference), 0)"
            ),
        },
        hints=(
            "Step 4: the optimum over whole sequences is a geometric mix of two distributions, normalised.",
            "exact.sequence_logprobs(p) gives log p(a) of every completion; mix them linearly, then normalise.",
            "π*_λ(a) = softmax over a of λ·log π_T(a) + (1 − λ)·log π_R(a).",
        ),
        why="your π*_λ = π_R^(1−λ)·π_T^λ / Z_λ matches exact.sequence_level_optimum on three random trees",
        rtol=1e-3,
        atol=1e-6,
        sample=lambda seed: {},
        trials=oracle.tree_trials,
    ),
    Exercise(
        id="02-implement-loss",
        answer_name="my_loss",
        kind="function",
        expected=oracle.package_sampled_gradient,
        solution="my_loss = lambda lp_student, advantages, mask: -(lp_student * advantages * mask).sum() / mask.sum()",
        wrong={
            "the sign-flipped loss (gradient ascent on −J)": (
                "lambda lp_student, advantages, mask: (lp_student * advantages * mask).sum() / mask.sum()"
            ),
            "padding included": "lambda lp_student, advantages, mask: -(lp_student * advantages).mean()",
            "a sum, not a mean over tokens": (
                "lambda lp_student, advantages, mask: -(lp_student * advantages * mask).sum()"
            ),
            "the advantage alone (no gradient through ℓ^θ)": (
                "lambda lp_student, advantages, mask: -(advantages * mask).sum() / mask.sum() + 0 * lp_student.sum()"
            ),
        },
        hints=(
            "the loss is a policy gradient: each sampled token's log-prob, weighted by its (fixed) advantage.",
            "weight ℓ^θ_t by A_t, average over the real tokens only (mask), and minimise: mind the sign.",
            "L = −(1/N)·Σ_t mask_t·A_t·ℓ^θ_t, N = mask.sum().",
        ),
        why="your loss has the gradient of sampled_loss with respect to ℓ^θ on three random batches",
        rtol=1e-4,
        atol=1e-6,
        sample=lambda seed: {},
        trials=oracle.loss_trials,
        judge=oracle.sampled_gradient,
    ),
]


# ---------------------------------------------------------------- predict, then run: the outcome is read off the data
_PREDICTIONS = [
    Exercise(
        id="01-predict-colour",
        answer_name="prediction_colour",
        kind="choice",
        options=("redder", "bluer", "unchanged"),
        expected=lambda record, t: oracle.colour_outcome(record, t),
        solution='prediction_colour = "redder" if record["lp_teacher"][t] > record["lp_reference"][t] else "bluer"',
        wrong={
            "the rule the wrong way round": (
                '"bluer" if record["lp_teacher"][t] > record["lp_reference"][t] else "redder"'
            ),
            "unchanged": '"unchanged"',
        },
        hints=(
            "write A_t at λ = 2 minus A_t at the run's λ: which terms are left?",
            "only the reward ℓ^T − ℓ^R is scaled by λ; the student's term does not move.",
            "A_t(2) − A_t(1.25) = 0.75·(ℓ^T_t − ℓ^R_t): redder exactly where the teacher beats the reference.",
        ),
        why="raising λ scales the reward ℓ^T − ℓ^R: tokens the teacher likes more than the reference get redder, "
        "the others bluer",
        sample=lambda seed: {"record": (r := oracle.record(seed)), "t": oracle.largest_gap(r)},
    ),
    Exercise(
        id="02-predict-update",
        answer_name="prediction_update",
        kind="choice",
        options=("up", "down", "unchanged"),
        expected=lambda advantages, after, valid: oracle.update_outcome(advantages, after, valid),
        solution='prediction_update = "down"',
        wrong={"up": '"up"', "unchanged": '"unchanged"'},
        hints=(
            "the update raises the log-prob of tokens with A_t > 0 and lowers those with A_t < 0.",
            "at λ = 1 the advantage is the gap ℓ^T_t − ℓ^θ_t: raising ℓ^θ_t where it is below ℓ^T_t shrinks it.",
            "on a fixed batch the loss has the gradient of ½·mean(A_t²): a small step lowers it.",
        ),
        why="one small step moves ℓ^θ towards ℓ^T on the tokens the student sampled",
        sample=lambda seed: {
            "advantages": (b := oracle.batch(seed))["advantages"],
            "after": 0.7 * b["advantages"],
            "valid": b["valid"],
        },
    ),
    Exercise(
        id="03-predict-optima",
        answer_name="prediction_optima",
        kind="choice",
        options=("equal", "apart"),
        expected=lambda optima_gap: (
            "apart" if optima_gap[2.0] > 1e-6 else "equal",
            f"at λ = 2 the sequence-level optimum is KL = {optima_gap[2.0]:.4f} nats from the token-level one",
        ),
        solution='prediction_optima = "apart"',
        wrong={"equal": '"equal"'},
        hints=(
            "compare the two recursions: which one looks ahead to the states a token leads to?",
            "the sequence-level optimum weights each token by Z of the state it leads to; the token level does not.",
            "π*(a|s) = g(s, a)·Z(s·a) / Z(s): equal to the token level only where every Z(s·a) is the same (λ = 1).",
        ),
        why="the sequence-level optimum also weighs where a token leads (Z(s·a)), which the token level ignores; "
        "at λ = 1 every Z is 1 and they meet",
        sample=lambda seed: {"optima_gap": oracle.optima_gap(oracle.tree(seed), 2.0)},
    ),
    Exercise(
        id="04-predict-scale",
        answer_name="prediction_scale",
        kind="choice",
        options=("the same", "1.25 times", "0.25 times"),
        expected=lambda before: oracle.scale_outcome(before),
        solution='prediction_scale = "1.25 times"',
        wrong={"the same": '"the same"', "0.25 times": '"0.25 times"'},
        hints=(
            "before training, how does the reference (the student's initial weights) differ from the student?",
            "when the reference is the student, the student's own term ℓ^θ − ℓ^R is 0.",
            "A_t = λ·(ℓ^T − ℓ^R) − (ℓ^θ − ℓ^R) = λ·(ℓ^T − ℓ^θ) when ℓ^R = ℓ^θ: λ times the OPD value.",
        ),
        why="at step 0 the reference is the student, so A_t = λ·(ℓ^T − ℓ^θ): ExOPD starts as OPD with a larger step",
        sample=lambda seed: {"before": [oracle.record(seed + i, same_reference=True) for i in range(3)]},
    ),
    Exercise(
        id="05-predict-reference",
        answer_name="prediction_reference",
        kind="choice",
        options=("the student", "big-base"),
        expected=lambda lp, valid: oracle.reference_outcome(lp, valid),
        solution='prediction_reference = "big-base"',
        wrong={"the student": '"the student"'},
        hints=(
            "the probe's tokens were sampled by the student itself: who finds them most likely?",
            "the reward is ℓ^T − ℓ^R: a reference that likes these tokens more hands out less.",
            "ℓ^student > ℓ^big-base on the student's own samples, so ℓ^T − ℓ^big-base > ℓ^T − ℓ^student.",
        ),
        why="on its own samples the student is its own best predictor, so subtracting ℓ^student leaves the "
        "smaller reward; big-base, stronger but not the sampler, hands out more (in sign, not in size)",
        sample=lambda seed: oracle.three_models(seed, student_sampled=True),
    ),
    Exercise(
        id="06-predict-routing",
        answer_name="prediction_routing",
        kind="choice",
        options=("unchanged", "changed"),
        expected=lambda models, rollout, rows, scored: oracle.routing_outcome(models, rollout, rows, scored),
        solution='prediction_routing = "unchanged"',
        wrong={"changed": '"changed"'},
        hints=(
            "which model reads an add row when the batch is scored?",
            "each row is scored by the teacher of its own domain, in its own forward pass.",
            "the add rows' ℓ^T are teacher-add's log-probs of those rows alone: the mul teacher never sees them.",
        ),
        why="a multi-teacher batch routes each row to its own domain's teacher; the others never read it",
        sample=oracle.two_teachers,
    ),
    Exercise(
        id="08-predict-feedback",
        answer_name="prediction_feedback",
        kind="choice",
        options=("all zero", "not zero"),
        expected=lambda plain, lp_student, student_view: oracle.feedback_outcome(plain, lp_student, student_view),
        solution='prediction_feedback = "all zero"',
        wrong={"not zero": '"not zero"'},
        hints=(
            "without feedback, what does the self-teacher see that the student does not?",
            "with the template \"{prompt}\" the self-teacher's input is the student's own: the same model, the same context.",
            "ℓ^T_t is then the student's ℓ^θ_t on every token, so A_t = ℓ^T_t − ℓ^θ_t is 0.",
        ),
        why="SDPO's self-teacher is the student plus the feedback; without feedback it is the student and A_t is 0",
        sample=oracle.plain_self_teacher,
    ),
    Exercise(
        id="07-predict-paired",
        answer_name="prediction_paired",
        kind="choice",
        options=("above 0", "contains 0", "below 0"),
        expected=lambda diffs, metric: oracle.interval_outcome(diffs, "lam", 1.25, f"eval_add_{metric}"),
        solution='prediction_paired = "above 0"',
        wrong={"contains 0": '"contains 0"', "below 0": '"below 0"'},
        hints=(
            "notebook 03's headroom curve of teacher-add rises above λ = 1: there is something to find past it.",
            "teacher-add was trained with a KL penalty to student-base, like the clean RL teacher of notebook 03.",
            "a KL-regularised teacher's λ-target improves on it for λ > 1, and pairing the seeds removes "
            "the noise the arms share.",
        ),
        why="teacher-add's KL penalty leaves headroom above λ = 1, and the paired interval is tight enough to see it",
        sample=lambda seed: oracle.committed_lam_sweep(),
    ),
    Exercise(
        id="09-predict-reopd",
        answer_name="prediction_reopd",
        kind="choice",
        options=("more", "less", "the same"),
        expected=lambda diff: oracle.reopd_outcome(diff),
        solution='prediction_reopd = "less"',
        wrong={"more": '"more"', "the same": '"the same"'},
        hints=(
            "REOPD extrapolates only where student and teacher already agree (q_t near 1).",
            "where they agree, A_t is small whatever λ; the tokens where extrapolation would move the student most "
            "get λ_t near 1.",
            "the same mean λ_t, spent on the tokens with the least signal, moves the student less than λ = 1.25 "
            "on every token.",
        ),
        why="REOPD spends its extrapolation where the signal is small; on a teacher with headroom the plain "
        "λ = 1.25 gains more",
        sample=lambda seed: oracle.committed_lineage(),
    ),
]


EXERCISES: dict[str, Exercise] = {ex.id: ex for ex in _EXERCISES + _PREDICTIONS}
"""Every exercise of the course by id (``<notebook>-<name>``)."""


def exercise(ex_id: str) -> Exercise:
    """The exercise ``ex_id`` (a notebook's check cell: ``course.exercise(id).check(answer, **context)``)."""
    if ex_id not in EXERCISES:
        raise KeyError(f"no exercise {ex_id!r}; the course has {sorted(EXERCISES)}")
    return EXERCISES[ex_id]
