"""Task.from_dataset: a Hugging Face ``datasets.Dataset`` / ``DatasetDict`` becomes a task (in memory, no hub)."""

import datasets  # the datasets extra, which make setup installs
import pytest

from gopd_lab.config import RunConfig
from gopd_lab.loop.train import train
from gopd_lab.tasks import Task, load_tasks, register_task

QUESTIONS = [f"{a}+{b}=" for a in range(1, 6) for b in range(1, 5)]  # 20 distinct prompts
ANSWERS = [a + b for a in range(1, 6) for b in range(1, 5)]  # numbers: they become text


def test_a_dataset_is_split_by_test_size_and_seed():
    ds = datasets.Dataset.from_dict({"question": QUESTIONS, "answer": ANSWERS, "source": ["x"] * 20})
    task = Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=0.25, seed=3)
    assert (task.domain, len(task.train), len(task.test)) == ("sums", 15, 5)
    assert sorted(e.prompt for e in task.train + task.test) == sorted(QUESTIONS)
    assert task.answer("3+4=") == "7" and task.score("3+4=", " 7 ") == 1.0 and task.score("3+4=", "8") == 0.0
    assert task.feedback("3+4=", "8") == "expected 7, got 8"
    again = Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=0.25, seed=3)
    other = Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=0.25, seed=4)
    assert [e.prompt for e in again.test] == [e.prompt for e in task.test] != [e.prompt for e in other.test]
    assert len(Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=4).test) == 4
    assert len(Task.from_dataset(ds, domain="sums", prompt_field="question").test) == 2  # default 0.1


def test_a_dataset_dict_keeps_its_train_and_test_splits():
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": QUESTIONS[:16], "answer": ANSWERS[:16]}),
            "test": datasets.Dataset.from_dict({"prompt": QUESTIONS[16:], "answer": ANSWERS[16:]}),
        }
    )
    task = Task.from_dataset(dd, domain="sums")
    assert [e.prompt for e in task.train] == QUESTIONS[:16] and [e.prompt for e in task.test] == QUESTIONS[16:]
    with pytest.raises(ValueError, match="has its own 'test' split"):
        Task.from_dataset(dd, domain="sums", test_size=0.2)
    only_train = datasets.DatasetDict({"train": dd["train"]})
    assert len(Task.from_dataset(only_train, domain="sums", test_size=4).test) == 4
    with pytest.raises(ValueError, match="needs a 'train' split"):
        Task.from_dataset(datasets.DatasetDict({"validation": dd["test"]}), domain="sums")


def test_bad_columns_and_values_name_the_fix():
    ds = datasets.Dataset.from_dict({"question": QUESTIONS, "answer": ANSWERS})
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\].*\['question', 'answer'\].*prompt_field"):
        Task.from_dataset(ds, domain="sums")
    with pytest.raises(ValueError, match="test_size"):
        Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=1.5)
    with pytest.raises(ValueError, match="verifier must be one of"):
        Task.from_dataset(ds, domain="sums", prompt_field="question", verifier="fuzzy")
    listy = datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": [[1], [2]]})
    with pytest.raises(ValueError, match="'answer' must be text or a number"):
        Task.from_dataset(listy, domain="x")


def test_math_verifier_checks_final_answers():
    ds = datasets.Dataset.from_dict(
        {"problem": ["Half of 3?", "Twice 9?"], "solution": ["It is $\\boxed{\\frac{3}{2}}$.", "#### 18"]}
    )
    task = Task.from_dataset(
        ds, domain="math", prompt_field="problem", answer_field="solution", test_size=0, verifier="math"
    )
    assert task.score("Half of 3?", "so the answer is \\boxed{1.5}") == 1.0
    assert task.score("Twice 9?", "9 * 2 = 18") == 1.0 and task.score("Twice 9?", "#### 19") == 0.0
    assert task.feedback("Twice 9?", "#### 19") == "expected 18, got 19"


def test_a_dataset_task_trains_through_the_registry(tiny_dirs, tmp_path):
    ds = datasets.Dataset.from_dict({"prompt": QUESTIONS, "answer": ANSWERS})
    register_task("hf-sums", lambda: Task.from_dataset(ds, domain="hf-sums", test_size=4))
    assert list(load_tasks(["hf-sums"])) == ["hf-sums"]
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        tasks="hf-sums",
        steps=1,
        batch_size=2,
        max_new_tokens=3,
        eval_k=2,
        out_dir=str(tmp_path / "run"),
    )
    train(cfg, progress=False)
    evals = (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
    assert len(evals) == 2 and '"domain": "hf-sums"' in evals[0] and '"n": 4' in evals[0]
