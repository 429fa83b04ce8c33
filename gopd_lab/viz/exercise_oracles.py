"""The oracles and random contexts of the course's exercises (:mod:`gopd_lab.viz.exercise_bank`).

An oracle computes an exercise's expected answer from a notebook's values with package code (``gopd_advantages``,
the exact optima of :mod:`gopd_lab.lm.exact`, ``sampled_loss``); an outcome reads a prediction's answer and the
evidence shown with it off the data; a context (``record``, ``batch``, ``tree``, …) is a dict of random values
with the shapes of a notebook's, on which the tests check every exercise against its solution and wrong answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any


# ----------------------------------------------------------------------------- random contexts for the tests
def record(seed: int, lam: float = 1.25, *, same_reference: bool = False) -> dict[str, Any]:
    """A logged sample with random log-probs (the fields the exercises read); ``same_reference``: the reference
    is the student itself (step 0 of a run with ``reference="student"``)."""
    import torch

    from gopd_lab.objectives.advantages import gopd_advantages

    g = torch.Generator().manual_seed(seed)
    n = 5
    lp = {k: -torch.rand(n, generator=g) * 3 for k in ("lp_student", "lp_teacher", "lp_reference")}  # (n,) each
    if same_reference:
        lp["lp_reference"] = lp["lp_student"].clone()
    advantage = gopd_advantages(lp["lp_student"][None], lp["lp_teacher"][None], lp["lp_reference"][None], lam=lam)
    record = {k: v.tolist() for k, v in lp.items()}
    return {**record, "advantage": advantage[0].tolist(), "lam": lam, "tokens": [str(i) for i in range(n)]}


def batch(seed: int) -> dict[str, Any]:
    """``lp_student``, ``scored.lp_teacher`` and ``valid`` of a random (B, C) batch, and its λ = 1 advantages."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, C = 4, 6
    lp_student, lp_teacher = -torch.rand(B, C, generator=g) * 3, -torch.rand(B, C, generator=g) * 3  # (B, C)
    valid = torch.rand(B, C, generator=g) > 0.3  # (B, C)
    valid[:, 0] = True
    return {
        "lp_student": lp_student,
        "scored": SimpleNamespace(lp_teacher=lp_teacher),
        "valid": valid,
        "advantages": lp_teacher - lp_student,  # (B, C) λ = 1
    }


def tree(seed: int) -> dict[str, Any]:
    """Notebook 03's context on a random tree: ``teacher``, ``reference`` and their sequence log-probs ``seq``."""
    from gopd_lab.lm import exact

    teacher = exact.random_policy(3, 3, seed=2 * seed + 1, scale=1.0)
    reference = exact.random_policy(3, 3, seed=2 * seed + 2, scale=1.0)
    seq = {n: exact.sequence_logprobs(p).detach() for n, p in (("teacher", teacher), ("reference", reference))}
    return {"teacher": teacher, "reference": reference, "seq": seq}


def three_models(seed: int, *, student_sampled: bool = False) -> dict[str, Any]:
    """Notebook 05's context: ``lp`` of three models on a random (B, C) batch and its ``valid`` mask;
    ``student_sampled``: the student finds the tokens likelier than big-base does (they are its own samples)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    names = ("zoo:big-teacher", "zoo:student-base", "zoo:big-base")
    lp = {n: -torch.rand(4, 6, generator=g) * 3 for n in names}  # (B, C) each
    if student_sampled:
        lp["zoo:student-base"] = lp["zoo:big-base"] + 0.5
    valid = torch.rand(4, 6, generator=g) > 0.3  # (B, C)
    valid[:, 0] = True
    return {"lp": lp, "valid": valid}


def two_teachers(seed: int) -> dict[str, Any]:
    """Notebook 06's context on a random tree: two tabular teachers, a rollout, its mul rows and their scores."""
    import torch

    from gopd_lab.lm import exact
    from gopd_lab.lm.logprobs import token_logprobs

    teachers = {d: exact.random_policy(3, 2, seed=10 * seed + i, scale=1.5) for i, d in enumerate(("add", "mul"))}
    rollout = exact.enumerated_rollout(3, 2)
    rows = {"add": list(range(0, 9, 2)), "mul": list(range(1, 9, 2))}
    lp_teacher = torch.zeros(9, 2)  # (B, C): each row scored by its own domain's teacher
    for d, r in rows.items():
        lp_teacher[r] = token_logprobs(teachers[d], rollout.select(r))
    return {
        "models": SimpleNamespace(teacher_for=teachers.__getitem__),
        "rollout": rollout,
        "rows": rows,
        "scored": SimpleNamespace(lp_teacher=lp_teacher),
    }


def tree_trials(seed: int) -> list[tuple]:
    """Arguments ``(teacher, reference, lam)`` on three random trees, λ below, at and above 1."""
    from gopd_lab.lm import exact

    return [
        (exact.random_policy(3, 3, seed=seed + 7 * i, scale=1.5), exact.random_policy(3, 3, seed=seed + 7 * i + 3), lam)
        for i, lam in enumerate((0.5, 1.5, 2.0))
    ]


def token_trials(seed: int) -> list[tuple]:
    """Arguments ``(lp_student, lp_teacher, lp_reference, lam)``: every token of every completion of a random tree."""
    from gopd_lab.lm import exact
    from gopd_lab.lm.logprobs import token_logprobs

    every = exact.enumerated_rollout(3, 3)
    out = []
    for i, lam in enumerate((0.5, 1.25, 2.0)):
        policies = [exact.random_policy(3, 3, seed=seed + 11 * i + j, scale=1.5) for j in range(3)]
        out.append((*(token_logprobs(p, every) for p in policies), lam))  # (K^H, H) each
    return out


def loss_trials(seed: int) -> list[tuple]:
    """Arguments ``(lp_student, advantages, mask)`` of the sampled estimator on random (B, C) batches."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        lp = -torch.rand(4, 5, generator=g) * 3  # (B, C)
        mask = torch.rand(4, 5, generator=g) > 0.3  # (B, C)
        mask[:, 0] = True
        out.append((lp, torch.randn(4, 5, generator=g), mask.float()))
    return out


def advantage_at(record: Mapping[str, Any], t: int, lam: float) -> float:
    import torch

    from gopd_lab.objectives.advantages import gopd_advantages

    lp = {k: torch.tensor([record[k][t]]) for k in ("lp_student", "lp_teacher", "lp_reference")}
    return float(gopd_advantages(lp["lp_student"], lp["lp_teacher"], lp["lp_reference"], lam=lam)[0])


def largest_gap(record: Mapping[str, Any]) -> int:
    """The token where the teacher and the reference disagree most (where λ matters most)."""
    gaps = [abs(t - r) for t, r in zip(record["lp_teacher"], record["lp_reference"])]
    return gaps.index(max(gaps))


def log_z(teacher: Any, reference: Any, lam: float) -> float:
    from gopd_lab.lm import exact

    return exact.gopd_objective(exact.sequence_level_optimum(teacher, reference, lam), teacher, reference, lam)


def root_optimum(teacher: Any, reference: Any, lam: float) -> Any:
    from gopd_lab.lm import exact

    return exact.token_level_optimum(teacher, reference, lam).log_probs()[0].exp().detach()


def sequence_optimum(teacher: Any, reference: Any, lam: float) -> Any:
    from gopd_lab.lm import exact

    return exact.sequence_logprobs(exact.sequence_level_optimum(teacher, reference, lam)).detach().exp()


def gopd_advantages(lp_student: Any, lp_teacher: Any, lp_reference: Any, lam: float) -> Any:
    from gopd_lab.objectives.advantages import gopd_advantages

    return gopd_advantages(lp_student, lp_teacher, lp_reference, lam=lam)


def sampled_gradient(loss_fn: Callable[..., Any], lp: Any, advantages: Any, mask: Any) -> Any:
    """The gradient of ``loss_fn``'s loss with respect to the student's log-probs (what the update follows)."""
    leaf = lp.clone().requires_grad_(True)
    out = loss_fn(leaf, advantages, mask)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return leaf.grad


def package_sampled_gradient(lp: Any, advantages: Any, mask: Any) -> Any:
    from gopd_lab.objectives.sampled import sampled_loss

    return sampled_gradient(sampled_loss, lp, advantages, mask)


def colour_outcome(record: Mapping[str, Any], t: int) -> tuple[str, str]:
    lam = float(record["lam"])
    before, after = advantage_at(record, t, lam), advantage_at(record, t, 2.0)
    outcome = "redder" if after > before + 1e-9 else "bluer" if after < before - 1e-9 else "unchanged"
    return outcome, f"token t's A_t goes from {before:+.4f} (λ = {lam:g}) to {after:+.4f} (λ = 2)"


def update_outcome(advantages: Any, after: Any, valid: Any) -> tuple[str, str]:
    first, second = float((advantages[valid] ** 2).mean()), float((after[valid] ** 2).mean())
    outcome = "down" if second < first else "up" if second > first else "unchanged"
    return outcome, f"mean A_t² on the batch went from {first:.4f} to {second:.4f}"


def optima_gap(tree: Mapping[str, Any], lam: float) -> dict[float, float]:
    from gopd_lab.lm import exact

    teacher, reference = tree["teacher"], tree["reference"]
    return {
        lam: exact.sequence_kl(
            exact.sequence_level_optimum(teacher, reference, lam), exact.token_level_optimum(teacher, reference, lam)
        )
    }


def scale_outcome(before: list[Mapping[str, Any]]) -> tuple[str, str]:
    from gopd_lab.viz.tokens import token_values

    ratios = [
        a / b
        for r in before
        for a, b in zip(token_values(r, "advantage", lam=1.25), token_values(r, "advantage", lam=1.0))
        if abs(b) > 1e-4
    ]
    if not ratios:
        return "the same", "every A_t here is 0"
    low, high = min(ratios), max(ratios)
    named = {"the same": 1.0, "1.25 times": 1.25, "0.25 times": 0.25}
    outcome = next((k for k, v in named.items() if abs(low - v) < 1e-3 and abs(high - v) < 1e-3), "none of these")
    return outcome, f"A_t(λ = 1.25) / A_t(λ = 1) is between {low:.4f} and {high:.4f} on {len(ratios)} tokens"


def reference_outcome(lp: Mapping[str, Any], valid: Any) -> tuple[str, str]:
    teacher = lp["zoo:big-teacher"]
    by_student = float((teacher - lp["zoo:student-base"])[valid].mean())
    by_base = float((teacher - lp["zoo:big-base"])[valid].mean())
    outcome = "the student" if by_student > by_base else "big-base"
    return outcome, f"mean ℓ^T − ℓ^R: {by_student:+.3f} with the student, {by_base:+.3f} with big-base"


def interval_outcome(diffs: Any, arm: str, value: Any, metric: str) -> tuple[str, str]:
    from gopd_lab.experiments.paired import format_interval

    row = diffs[(diffs[arm] == value) & (diffs.metric == metric)].iloc[0]
    outcome = "above 0" if row.ci_low > 0 else "below 0" if row.ci_high < 0 else "contains 0"
    return outcome, f"{arm} = {value} − OPD on {metric}: {format_interval(row)}"


def reopd_outcome(diff: Any) -> tuple[str, str]:
    mean4 = diff[diff.metric == "eval_add_mean_acc"].set_index("arm").diff_mean
    reopd, fixed = 100 * mean4["reopd"], 100 * mean4["fixed-1.25"]
    outcome = "more" if reopd > fixed + 0.05 else "less" if reopd < fixed - 0.05 else "the same"
    return outcome, f"mean@4 gain over OPD: REOPD {reopd:+.1f} points, fixed λ = 1.25 {fixed:+.1f} points"


def committed_lam_sweep() -> dict[str, Any]:
    """Notebook 07's context on the committed ``results/v2/lam``: its paired differences and the metric."""
    from gopd_lab.checkout import committed_sweep
    from gopd_lab.experiments.paired import paired_differences
    from gopd_lab.experiments.sweep import load_sweep

    results = load_sweep(committed_sweep("v2/lam"))
    metrics = ["eval_add_greedy_acc", "eval_add_mean_acc"]
    return {"diffs": paired_differences(results, arm="lam", baseline=1.0, metrics=metrics), "metric": "greedy_acc"}


def committed_lineage() -> dict[str, Any]:
    """Notebook 09's context on the committed ``results/v2/lineage.csv``: its paired differences."""
    import pandas as pd

    from gopd_lab.checkout import repo_path
    from gopd_lab.experiments.paired import paired_differences

    results = pd.read_csv(repo_path("results/v2/lineage.csv"))
    metrics = ["eval_add_greedy_acc", "eval_add_mean_acc"]
    return {"diff": paired_differences(results, arm="arm", baseline="fixed-1", metrics=metrics)}


def wrong_teacher_gap(models: Any, rollout: Any, rows: Mapping[str, Any], scored: Any) -> float:
    from gopd_lab.lm.logprobs import token_logprobs

    mul_rows = rollout.select(rows["mul"])
    mul_valid = mul_rows.completion_mask.bool()
    add_lp = token_logprobs(models.teacher_for("add"), mul_rows)  # (rows, C)
    return float(add_lp[mul_valid].mean() - scored.lp_teacher[rows["mul"]][mul_valid].mean())


def routing_outcome(models: Any, rollout: Any, rows: Mapping[str, Any], scored: Any) -> tuple[str, str]:
    """Whether the add rows' teacher log-probs are teacher-add's own scores of those rows alone."""
    from gopd_lab.lm.logprobs import token_logprobs

    own = token_logprobs(models.teacher_for("add"), rollout.select(rows["add"]))  # (rows, C)
    gap = float((own - scored.lp_teacher[rows["add"]]).abs().max())
    outcome = "unchanged" if gap < 1e-4 else "changed"
    return outcome, f"the add rows' ℓ^T differ from teacher-add's own scores of them by at most {gap:.1e}"


def feedback_outcome(plain: Any, lp_student: Any, student_view: Any) -> tuple[str, str]:
    """Whether a self-teacher without feedback gives A_t = ℓ^T − ℓ^θ = 0 on every real token."""
    valid = student_view.completion_mask.bool()  # (B, C)
    gap = float((plain.lp_teacher - lp_student)[valid].abs().max())
    outcome = "all zero" if gap < 1e-4 else "not zero"
    return outcome, f"without feedback the largest |A_t| is {gap:.1e}"


def plain_self_teacher(seed: int) -> dict[str, Any]:
    """Notebook 08's context: a self-teacher without feedback scores exactly the student's log-probs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lp_student = -torch.rand(4, 6, generator=g) * 3  # (B, C)
    mask = (torch.rand(4, 6, generator=g) > 0.3).float()  # (B, C)
    mask[:, 0] = 1
    return {
        "plain": SimpleNamespace(lp_teacher=lp_student * mask),
        "lp_student": lp_student,
        "student_view": SimpleNamespace(completion_mask=mask),
    }
