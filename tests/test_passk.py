"""pass@k: the unbiased estimator (Chen et al., 2021) against hand-computed values, and its column in evaluate."""

from collections import defaultdict

import pytest

from gopd_lab.loop.evaluate import evaluate, pass_at_k
from gopd_lab.tasks import make_task
from gopd_lab.world.tiny import build_char_tokenizer, tiny_model


def test_pass_at_k_hand_computed():
    # 1 - C(n - c, k) / C(n, k)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2)=3, C(5,2)=10
    assert pass_at_k(5, 1, 3) == pytest.approx(1 - 4 / 10)  # C(4,3)=4, C(5,3)=10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: any correct sample
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # k = 1 is the mean accuracy
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every k-subset holds a correct sample
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            pass_at_k(*bad)


def test_evaluate_reports_pass_at_k_from_the_same_samples_as_mean_at_k():
    """A verifier that records each call: pass@k per prompt is recomputed from its k sampled verdicts."""
    calls = defaultdict(list)

    def even_length(completion: str, answer: str) -> bool:
        ok = len(completion) % 2 == 0
        calls[answer].append(ok)
        return ok

    prompts = [f"{a}+{b}=" for a in range(1, 9) for b in (3, 7)]
    task = make_task("t", train=[], test=[(p, f"answer {i}") for i, p in enumerate(prompts)], verifier=even_length)
    tok, model = build_char_tokenizer(), tiny_model(seed=0)
    k = 4
    row = evaluate(model, tok, {"t": task}, k=k, pass_k=2, max_new_tokens=5, seed=1).iloc[0]
    sampled = {answer: verdicts[-k:] for answer, verdicts in calls.items()}  # the greedy verdict comes first
    assert all(len(v) == k + 1 for v in calls.values())
    expected_pass = sum(pass_at_k(k, sum(v), 2) for v in sampled.values()) / len(prompts)
    expected_mean = sum(sum(v) for v in sampled.values()) / (k * len(prompts))
    assert 0 < expected_mean < 1, "the test needs a mix of right and wrong samples"
    assert row.pass_acc == pytest.approx(expected_pass) and row.mean_acc == pytest.approx(expected_mean)
    assert row.pass_acc > row.mean_acc
    calls.clear()
    same = evaluate(model, tok, {"t": task}, k=k, pass_k=1, max_new_tokens=5, seed=1).iloc[0]
    assert same.pass_acc == pytest.approx(same.mean_acc) == pytest.approx(expected_mean)  # pass@1 = mean@k
    with pytest.raises(ValueError, match="pass_k must be in"):
        evaluate(model, tok, {"t": task}, k=2, pass_k=3)


def test_sweep_report_puts_pass_at_k_beside_mean_at_k(tmp_path):
    """sweeps/report.py: mean ± std over seeds of each eval column, pass@4 next to mean@4."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("report", Path(__file__).parents[1] / "sweeps" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    root = tmp_path / "lam"
    for seed, (mean, pass_) in enumerate([(0.5, 0.7), (0.6, 0.8)]):
        d = root / f"lam=1.25,seed={seed}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"lam": 1.25, "seed": seed}))
        (d / "point.json").write_text(json.dumps({"status": "ok", "wall_seconds": 1.0}))
        (d / "summary.json").write_text(json.dumps({"final": {"loss": 0.1}}))
        row = {"step": 2, "domain": "add", "greedy_acc": 0.5, "mean_acc": mean, "pass_acc": pass_, "n": 8}
        (d / "eval.jsonl").write_text(json.dumps(row) + "\n")
    text = report.table("lam", ["lam"], root=tmp_path)
    head, _, row = text.splitlines()[2:5]
    assert head == "| lam | add greedy | add mean@4 | add pass@4 | seeds |"
    assert row == "| 1.25 | 0.500 ± 0.000 | 0.550 ± 0.071 | 0.750 ± 0.071 | 2 |"  # std of (0.7, 0.8) = 0.0707
