"""Task.from_dataset: a Hugging Face ``datasets.Dataset`` / ``DatasetDict`` becomes a task (in memory, no hub)."""

import json

import datasets  # the datasets extra, which make setup installs
import pytest
import yaml

from gopd_lab.cli import main
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.loop.train import train
from gopd_lab.tasks import Task, check_task_name, get_task, load_tasks, register_task
from gopd_lab.tasks.hfdata import parse_hf_name

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


# ------------------------------------------------------------------ datasets as users have them (issue 28)
def test_a_prompt_listed_with_two_answers_is_two_rows_not_a_refused_dataset():
    """Regression: a MetaMathQA-style dataset (one question, two rationales) raised 'two answers'."""
    ds = datasets.Dataset.from_dict(
        {
            "query": ["Twice 9?", "Twice 9?", "Half of 8?", "Half of 8?", "1+1?"],
            "response": ["9 + 9 = 18. #### 18", "2 * 9 = 18. #### 18", "8 / 2 = 4 #### 4", "#### 4", "#### 2"],
        }
    )
    task = Task.from_dataset(
        ds, domain="m", prompt_field="query", answer_field="response", verifier="math", test_size=1
    )
    rows = task.train + task.test
    assert len(rows) == 5 and task.answers("Twice 9?") == ["9 + 9 = 18. #### 18", "2 * 9 = 18. #### 18"]
    assert {e.prompt for e in task.train}.isdisjoint({e.prompt for e in task.test})  # a prompt's rows stay together
    assert task.score("Twice 9?", "#### 18", "2 * 9 = 18. #### 18") == 1.0 and task.score("Twice 9?", "17") == 0.0
    with pytest.raises(KeyError, match="no row with the answer"):
        task.score("Twice 9?", "18", "#### 19")


def test_each_row_is_checked_by_its_own_verifier():
    ds = datasets.Dataset.from_dict(
        {"prompt": ["say hi", "2*9?"], "answer": ["hi", "so #### 18"], "check": ["exact", "math"]}
    )
    task = Task.from_dataset(ds, domain="mix", verifier_field="check", test_size=0)
    assert task.score("say hi", "hi") == 1.0 and task.score("say hi", "hi!") == 0.0  # exact
    assert task.score("2*9?", "it is 18") == 1.0  # math: the final answer counts
    bad = datasets.Dataset.from_dict({"prompt": ["p"], "answer": ["a"], "check": ["fuzzy"]})
    with pytest.raises(ValueError, match="'check' must be one of"):
        Task.from_dataset(bad, domain="mix", verifier_field="check", test_size=0)


CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_chat_rows_go_through_the_tokenizers_chat_template(tiny_dirs):
    from gopd_lab.lm.models import load_tokenizer

    tok = load_tokenizer(tiny_dirs["student"])
    tok.chat_template = CHAT_TEMPLATE
    messages = [
        [
            {"role": "system", "content": "Add."},
            {"role": "user", "content": "2+2="},
            {"role": "assistant", "content": "4"},
        ],
        [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "7"}],
    ]
    task = Task.from_dataset(
        datasets.Dataset.from_dict({"messages": messages}), domain="chat", tokenizer=tok, test_size=0
    )
    prompt = "[system] Add.\n[user] 2+2=\n[assistant] "
    assert [e.prompt for e in task.train] == [prompt, "[user] 3+4=\n[assistant] "]
    assert task.answer(prompt) == "4" and task.score(prompt, " 4") == 1.0
    with pytest.raises(ConfigError, match="need a tokenizer for the chat template"):
        Task.from_dataset(datasets.Dataset.from_dict({"messages": messages}), domain="chat", test_size=0)


def test_the_datasets_own_validation_split_is_used_and_test_size_only_without_one():
    """Regression: a DatasetDict with a 'validation' split held out 10 % of train instead of using it."""
    part = {
        "train": datasets.Dataset.from_dict({"prompt": QUESTIONS[:12], "answer": ANSWERS[:12]}),
        "validation": datasets.Dataset.from_dict({"prompt": QUESTIONS[12:16], "answer": ANSWERS[12:16]}),
        "test": datasets.Dataset.from_dict({"prompt": QUESTIONS[16:], "answer": ANSWERS[16:]}),
    }
    task = Task.from_dataset(datasets.DatasetDict(part), domain="sums")
    assert len(task.train) == 12 and [e.prompt for e in task.test] == QUESTIONS[12:16]
    task = Task.from_dataset(datasets.DatasetDict(part), domain="sums", eval_split="test")
    assert [e.prompt for e in task.test] == QUESTIONS[16:]
    with pytest.raises(ValueError, match="has its own 'validation' split"):
        Task.from_dataset(datasets.DatasetDict(part), domain="sums", test_size=2)


def test_gsm8k_calculator_notes_are_stripped_as_the_jsonl_loader_does(tmp_path):
    """Regression: Task.from_dataset kept '<<48/2=24>>' in GSM8K answers (load_math_jsonl strips them)."""
    from gopd_lab.tasks import load_math_jsonl

    row = {"question": "Half of 48?", "answer": "48/2 = <<48/2=24>>24 apples.\n#### 24"}
    task = Task.from_dataset(datasets.Dataset.from_list([row]), domain="g", prompt_field="question", test_size=0)
    (tmp_path / "g.jsonl").write_text(json.dumps(row) + "\n")
    assert task.train[0].answer == load_math_jsonl(tmp_path / "g.jsonl", test_fraction=0).train[0].answer
    assert task.train[0].answer == "48/2 = 24 apples.\n#### 24"


@pytest.fixture
def saved_sums(tmp_path):
    """A DatasetDict written by save_to_disk (train + test, GSM8K-style columns)."""
    rows = {"question": QUESTIONS, "answer": [f"so #### {a}" for a in ANSWERS]}
    dd = datasets.Dataset.from_dict(rows).train_test_split(test_size=4, seed=0)
    dd.save_to_disk(str(tmp_path / "sums"))
    return tmp_path / "sums"


def test_an_hf_name_loads_a_saved_dataset_with_its_options(saved_sums):
    name = f"hf:{saved_sums}?prompt_field=question&verifier=math&domain=sums"
    task = get_task(name)
    assert (task.domain, len(task.train), len(task.test)) == ("sums", 16, 4)
    example = task.test[0]
    assert task.score(example.prompt, f"the answer is {example.answer.split()[-1]}") == 1.0
    assert get_task(f"hf:{saved_sums}?prompt_field=question").domain == "sums"  # the directory's name
    for bad, message in [
        (f"hf:{saved_sums}?prompt=question", "unknown key 'prompt'"),
        (f"hf:{saved_sums}?prompt_field=question&verifier=fuzzy", "verifier must be one of"),
        ("hf:./no/such/dir", "does not exist"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_task_name(bad)
    with pytest.raises(ConfigError, match=r"no column\(s\) \['prompt'\]"):
        get_task(f"hf:{saved_sums}")


def test_parse_hf_name_reads_a_hub_id_with_its_config():
    spec = parse_hf_name("hf:openai/gsm8k:main?prompt_field=question&test_size=0.2&seed=3&revision=abc")
    assert (spec.path, spec.config, spec.domain) == ("openai/gsm8k", "main", "gsm8k")
    assert spec.options == {"prompt_field": "question", "test_size": 0.2, "seed": 3} and spec.load == {
        "revision": "abc"
    }
    assert parse_hf_name("hf:./data/dir").path == "./data/dir" and parse_hf_name("hf:./data/dir").config is None


def test_an_hf_name_loads_local_json_files_through_load_dataset(tmp_path):
    folder = tmp_path / "jsonsums"
    folder.mkdir()
    for split, sl in (("train", slice(0, 15)), ("test", slice(15, 20))):
        lines = [json.dumps({"prompt": q, "answer": a}) for q, a in zip(QUESTIONS[sl], ANSWERS[sl])]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    task = get_task(f"hf:{folder}")
    assert (task.domain, len(task.train), len(task.test)) == ("jsonsums", 15, 5)
    assert task.answer(QUESTIONS[0]) == str(ANSWERS[0])


def test_an_hf_name_trains_from_the_cli_and_a_yaml_config(saved_sums, tiny_dirs, tmp_path):
    name = f"hf:{saved_sums}?prompt_field=question&verifier=math&domain=sums"
    common = ["--student", tiny_dirs["student"], "--teacher", tiny_dirs["teacher"], "--steps", "1"]
    common += ["--batch-size", "2", "--max-new-tokens", "3", "--eval-k", "0", "--eval-limit", "2"]
    assert main(["train", "--tasks", name, *common, "--out-dir", str(tmp_path / "cli")]) == 0
    evals = [json.loads(line) for line in (tmp_path / "cli" / "eval.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in evals} == {"sums"} and evals[0]["n"] == 2
    page = (tmp_path / "cli" / "report.html").read_text()  # the run's report holds the before/after table
    assert "greedy_acc @ step 0" in page and "greedy_acc @ step 1" in page and "<td>sums</td>" in page
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"tasks": [name], "out_dir": str(tmp_path / "yaml")}))
    assert RunConfig.load(tmp_path / "run.yaml").task_names == [name]
    assert main(["train", "--config", str(tmp_path / "run.yaml"), *common]) == 0
    assert (tmp_path / "yaml" / "eval.jsonl").is_file()


def test_an_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    """Regression: offline, load_dataset's ConnectionError reached the user as a traceback."""
    from gopd_lab.errors import DataError

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nobody/nothing' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="hf:nobody/nothing: could not load the dataset.*OfflineModeIsEnabled"):
        get_task("hf:nobody/nothing")


def test_an_hf_name_survives_a_sweeps_set_and_grid_values(saved_sums):
    """A sweep passes a task name to each point's RunConfig as a YAML scalar: the hf: name arrives whole."""
    from pathlib import Path

    from gopd_lab.experiments.sweep_grid import spec_from_cli

    name = f"hf:{saved_sums}?prompt_field=question&verifier=math"
    notebook = str(Path(__file__).parent / "notebooks" / "sweep_point.ipynb")
    spec = spec_from_cli(notebook, None, [f"tasks={name},add"], [])
    assert spec.grid["tasks"] == [name, "add"]
    spec = spec_from_cli(notebook, None, [], [f"tasks={name}"])
    assert spec.fixed["tasks"] == name and RunConfig(tasks=spec.fixed["tasks"]).task_names == [name]
