"""Tasks: verifiers, feedback, answer extraction, the arithmetic splits and the JSONL loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gopd_lab.tasks as tasks_module
from gopd_lab.runio import read_jsonl
from gopd_lab.tasks import (
    ARITH_TASKS,
    Example,
    Task,
    arith,
    available_tasks,
    get_task,
    load_tasks,
    make_task,
    register_task,
)
from gopd_lab.tasks.base import data_dir
from gopd_lab.tasks.mathjsonl import (
    answers_equal,
    extract_answer,
    extract_boxed,
    load_math_jsonl,
    math_feedback,
    math_verifier,
    normalize_answer,
    reference_answer,
)

MATH_SAMPLE = Path(__file__).parent / "data" / "math_sample.jsonl"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- arithmetic verifier and feedback -------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, correct",
    [
        ("46", "46", True),
        (" 46\n", "46", True),
        ("\t46  ", "46", True),
        ("-5", "-5", True),
        ("0", "0", True),
        ("046", "46", False),
        ("00", "0", False),
        ("-0", "0", False),
        ("+46", "46", False),
        ("5", "-5", False),
        ("45", "46", False),
        ("4 6", "46", False),
        ("46.", "46", False),
        ("46abc", "46", False),
        ("46\n46", "46", False),
        ("", "46", False),
        ("   ", "46", False),
        ("abc", "46", False),
    ],
)
def test_integer_verifier(completion: str, answer: str, correct: bool) -> None:
    assert arith.integer_verifier(completion, answer) is correct


@pytest.mark.parametrize(
    "completion, text",
    [
        ("45", "expected 46, got 45"),
        (" 45\n", "expected 46, got 45"),
        ("046", "expected 46, got 046"),
        ("", "expected 46, got no number"),
        ("abc", "expected 46, got no number"),
        ("1" * 40, "expected 46, got " + "1" * 24 + "..."),
    ],
)
def test_integer_feedback(completion: str, text: str) -> None:
    assert arith.integer_feedback(completion, "46") == text


def test_arith_task_scores_and_feedback() -> None:
    task = get_task("add")
    example = task.test[0]
    assert task.answer(example.prompt) == example.answer
    assert task.score(example.prompt, example.answer) == 1.0
    assert task.score(example.prompt, " " + example.answer + "\n") == 1.0
    assert task.score(example.prompt, "0" + example.answer) == 0.0
    assert task.feedback(example.prompt, example.answer) is None
    assert task.feedback(example.prompt, "") == f"expected {example.answer}, got no number"
    assert task.score(task.train[0].prompt, task.train[0].answer) == 1.0


def test_unknown_prompt_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="not a prompt of task 'add'"):
        get_task("add").score("1+1+1=", "3")


# --- the generated splits --------------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_dependent() -> None:
    first = arith.generate_splits(seed=3, n_train=300, n_test=50)
    assert first == arith.generate_splits(seed=3, n_train=300, n_test=50)
    assert first != arith.generate_splits(seed=4, n_train=300, n_test=50)


@pytest.mark.parametrize("domain", sorted(arith.DOMAINS))
def test_the_three_sets_are_disjoint_correct_and_sized(domain: str) -> None:
    sets = arith.generate_sets(domain, seed=0)
    assert [len(sets[k]) for k in ("train", "test", "rl")] == [arith.N_TRAIN, arith.N_TEST, arith.N_RL]
    prompts = {k: {e.prompt for e in v} for k, v in sets.items()}
    assert all(len(prompts[k]) == len(sets[k]) for k in sets)
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["rl"]
    assert not prompts["test"] & prompts["rl"]
    symbol = arith.DOMAINS[domain].symbol
    for example in [e for v in sets.values() for e in v]:
        a, b = example.prompt.removesuffix("=").split(symbol)
        assert example.answer == str(arith.DOMAINS[domain].apply(int(a), int(b)))
        assert example.domain == domain


@pytest.mark.parametrize("domain", sorted(arith.DOMAINS))
def test_the_test_set_has_the_distillation_sets_digit_count_composition(domain: str) -> None:
    from collections import Counter

    sets = arith.generate_sets(domain, seed=0)
    train = Counter(arith.digit_counts(domain, e.prompt) for e in sets["train"])
    test = Counter(arith.digit_counts(domain, e.prompt) for e in sets["test"])
    assert set(test) == set(train)
    for stratum, count in train.items():  # largest remainder: within one prompt of the exact share
        assert abs(test[stratum] - count * arith.N_TEST / arith.N_TRAIN) < 1


def test_stratum_quota_by_hand() -> None:
    assert arith.stratum_quota({(1, 1): 1, (1, 2): 1, (2, 2): 1}, 10) == {(1, 1): 4, (1, 2): 3, (2, 2): 3}
    assert arith.stratum_quota({(1, 1): 49, (2, 2): 3951}, 1000) == {(1, 1): 12, (2, 2): 988}


@pytest.mark.parametrize("domain", sorted(arith.DOMAINS))
def test_committed_v2_files_match_the_generator(domain: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPD_LAB_WORLD", "v2")
    sets = arith.generate_sets(domain, seed=0)
    task, rl = get_task(domain), get_task(f"{domain}-rl")
    assert task.train == sets["train"] and task.test == sets["test"]
    assert rl.train == sets["rl"] and rl.test == sets["test"] and rl.domain == domain


def test_world_v2_is_the_default_v1_has_no_rl_sets_and_unknown_worlds_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOPD_LAB_WORLD", raising=False)
    assert arith.world() == "v2" and arith.world_dir() == data_dir() / "arith" / "v2"
    assert len(get_task("add").test) == 1000
    monkeypatch.setenv("GOPD_LAB_WORLD", "v1")
    assert arith.world_dir() == data_dir() / "arith" and len(get_task("add").test) == 200
    with pytest.raises(FileNotFoundError, match="set it to v2"):
        get_task("add-rl")
    assert arith.use_world("v2") == "v2" and arith.world() == "v2"
    with pytest.raises(ValueError, match="world must be one of"):
        arith.use_world("v3")
    monkeypatch.setenv("GOPD_LAB_WORLD", "v3")
    with pytest.raises(ValueError, match="GOPD_LAB_WORLD must be one of"):
        get_task("add")


def test_write_splits_writes_every_file_and_no_temporary(tmp_path: Path) -> None:
    paths = arith.write_splits(tmp_path, seed=1, n_train=20, n_test=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert len(paths) == 3 * len(arith.DOMAINS)
    rows = read_jsonl(tmp_path / "mul_test.jsonl", strict=True)
    assert len(rows) == 5 and set(rows[0]) == {"prompt", "answer", "domain"}


def test_command_line_writes_the_splits(tmp_path: Path) -> None:
    arith.main(["--out", str(tmp_path), "--seed", "2", "--n-train", "10", "--n-test", "4"])
    task = arith.load_arith_task("add", tmp_path)
    assert (len(task.train), len(task.test)) == (10, 4)


def test_module_entry_point_runs_without_runpy_warning(tmp_path: Path) -> None:
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "gopd_lab.tasks.arith"]
    command += ["--out", str(tmp_path), "--n-train", "4", "--n-test", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and "RuntimeWarning" not in result.stderr, result.stderr
    assert len(list(tmp_path.iterdir())) == 3 * len(arith.DOMAINS)


def test_too_many_prompts_is_refused() -> None:
    with pytest.raises(ValueError, match="too many"):
        arith.generate_domain("mul", n_train=9800, n_test=200)


def test_data_dir_override_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPD_LAB_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="python -m gopd_lab.tasks.arith"):
        get_task("add")
    arith.write_splits(arith.world_dir(), seed=0, n_train=8, n_test=2)  # data/arith/v2 under the override
    assert arith.world_dir() == tmp_path / "arith" / "v2"
    assert len(get_task("mul").train) == 8


# --- Task, make_task, from_jsonl, registry ---------------------------------------------------------


def test_make_task_docstring_example() -> None:
    def ends_with(completion: str, answer: str) -> bool:
        return completion.strip().endswith(answer)

    parity = make_task(
        "parity",
        train=[("0110 is ", "even"), ("111 is ", "odd")],
        test=[("10101 is ", "odd")],
        verifier=ends_with,
    )
    assert parity.score("111 is ", "surely odd") == 1.0
    assert parity.feedback("10101 is ", "even") == "expected odd, got even"
    assert parity.test == [Example("10101 is ", "odd", "parity")]


def test_default_verifier_is_exact_match_after_strip() -> None:
    task = make_task("echo", train=[("say hi: ", "hi")])
    assert task.score("say hi: ", " hi\n") == 1.0
    assert task.score("say hi: ", "hi!") == 0.0
    assert task.feedback("say hi: ", "") == "expected hi, got nothing"


def test_task_rejects_conflicts_foreign_domains_and_emptiness() -> None:
    # a prompt with two answers is two rows (issue 28); a test prompt already trained on leaves the test split
    assert make_task("t", train=[("p", "1")], test=[("p", "2")]).test == []
    assert make_task("t", train=[("p", "1"), ("p", "2")]).answers("p") == ["1", "2"]
    with pytest.raises(ValueError, match="has domain 'other'"):
        Task("t", [Example("p", "1", "other")], [])
    with pytest.raises(ValueError, match="no examples"):
        make_task("t", train=[])
    assert len(make_task("t", train=[("p", "1"), ("p", "1")]).train) == 1


def test_from_jsonl_reads_the_domain_or_requires_one(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", ['{"prompt": "a", "answer": "1", "domain": "d"}', ""])
    assert Task.from_jsonl(path).domain == "d"
    assert Task.from_jsonl(path, "renamed").train[0].domain == "renamed"
    bare = write_lines(tmp_path / "bare.jsonl", ['{"prompt": "a", "answer": "1"}'])
    with pytest.raises(ValueError, match="pass domain"):
        Task.from_jsonl(bare)


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "a", "answer": "1"}', '{"prompt": "b"}'],
            r"line 2: expected string fields 'prompt' and 'answer'",
        ),
        (['{"prompt": "a", "answer": 1}'], r"line 1: expected string fields"),
        (['{"prompt": "a", "answer": "1"}', "{oops"], r"line 2: not valid JSON"),
        (["[1, 2]"], r"line 1: expected a JSON object"),
        (["", "  "], r"holds no rows"),
    ],
)
def test_from_jsonl_errors_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message) as error:
        Task.from_jsonl(path, "d")
    assert str(path) in str(error.value)


def test_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_module, "_REGISTRY", dict(tasks_module._REGISTRY))
    assert set(ARITH_TASKS) == set(arith.DOMAINS)
    assert {"add", "mul"} <= set(available_tasks())
    tasks = load_tasks(["add", "mul"])
    assert list(tasks) == ["add", "mul"]
    register_task("tiny-test-task", lambda: make_task("tiny", train=[("p", "a")]))
    assert get_task("tiny-test-task").domain == "tiny"
    with pytest.raises(ValueError, match="share the domain"):
        load_tasks(["add", "add"])
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        get_task("nope")
    assert get_task(str(MATH_SAMPLE)).domain == "math_sample"


# --- math: extraction and normalisation ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{a^{2}+\\sqrt{b_{1}}}", "a^{2}+\\sqrt{b_{1}}"),
        ("\\boxed {7}", "7"),
        ("\\boxed  {x + 1}", "x + 1"),
        ("\\fbox{12}", "12"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{3} then \\fbox{4}", "4"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{unclosed", None),
        ("no box here 42", None),
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed(text: str, boxed: str | None) -> None:
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("I think 3, no: \\boxed{4}. Check: 5", "4"),
        ("work 1 2 3\n#### 72", "72"),
        ("#### 1\n#### 2 ", "2"),
        ("\\boxed{9} and #### 8", "9"),
        ("The answer is 1,000.", "1,000"),
        ("So x = -3.5, done", "-3.5"),
        ("values 1,2,3", "3"),
        ("5-3=2 apples", "2"),
        ("no digits at all", None),
        ("", None),
        ("####   ", None),
    ],
)
def test_extract_answer(completion: str, answer: str | None) -> None:
    assert extract_answer(completion) == answer


@pytest.mark.parametrize(
    "raw, normal",
    [
        (" 42 ", "42"),
        ("$42$", "42"),
        ("42.", "42"),
        ("1,000", "1000"),
        ("-1,234,567.50", "-1234567.5"),
        ("+7", "7"),
        ("2.50", "2.5"),
        ("2.0", "2"),
        ("0.00", "0"),
        ("x = 5", "5"),
        ("y=2x+3", "2x+3"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac{\\pi}2", "\\frac{\\pi}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("10\\!000", "10000"),
        ("12\\text{ cm}", "12"),
        ("12 \\mbox{ inches}", "12"),
        ("\\text{(B)}", "(B)"),
        ("90^\\circ", "90"),
        ("50\\%", "50"),
        ("(1,2)", "(1,2)"),
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize(
    "predicted, reference, equal",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\dfrac12", True),
        ("-\\frac{3}{4}", "-0.75", True),
        ("\\frac{-3}{4}", "-0.75", True),
        ("1000", "1,000", True),
        ("2.50", "2.5", True),
        ("0.33", "\\frac{1}{3}", False),
        ("(1,2)", "(1, 2)", True),
        ("(2,1)", "(1,2)", False),
        ("\\sqrt{2}", "\\sqrt2", True),
        ("1/0", "0", False),
    ],
)
def test_answers_equal(predicted: str, reference: str, equal: bool) -> None:
    assert answers_equal(predicted, reference) is equal


def test_math_verifier_and_feedback() -> None:
    reference = "Half of 48 is 24, plus 48 is 72.\n#### 72"
    assert math_verifier("so the total is \\boxed{72}", reference)
    assert math_verifier("48 + 24 = 72.", reference)
    assert math_verifier("#### 72.00", reference)
    assert not math_verifier("\\boxed{70} (72 was my first guess)", reference)
    assert not math_verifier("", reference)
    assert math_feedback("\\boxed{70}", reference) == "expected 72, got 70"
    assert math_feedback("I give up", reference) == "expected 72, got no answer"


# --- math: the JSONL layouts -----------------------------------------------------------------------


def test_math_sample_loads_both_layouts_with_the_right_answers() -> None:
    task = load_math_jsonl(MATH_SAMPLE, test_fraction=0.0)
    assert (len(task.train), len(task.test), task.domain) == (7, 0, "math")
    finals = {e.prompt.split()[0] + " " + e.prompt.split()[1]: reference_answer(e.answer) for e in task.train}
    assert finals == {
        "Natalia sold": "72",
        "A farm": "1,200",
        "Tom had": "2.50",
        "What is": "\\frac{1}{2}",
        "Find the": "\\sqrt{2}",
        "A square": "12\\text{ cm}",
        "Solve $x": "(1,2)",
    }
    natalia = next(e for e in task.train if e.prompt.startswith("Natalia"))
    assert "<<" not in natalia.answer and natalia.answer.endswith("#### 72")
    assert task.score(natalia.prompt, "She sold \\boxed{72} clips.") == 1.0
    farm = next(e for e in task.train if e.prompt.startswith("A farm"))
    assert task.score(farm.prompt, "1200") == 1.0
    square = next(e for e in task.train if e.prompt.startswith("A square"))
    assert task.score(square.prompt, "\\boxed{12}") == 1.0
    assert task.feedback(square.prompt, "\\boxed{11}") == "expected 12, got 11"
    for example in task.train:
        assert task.score(example.prompt, example.answer) == 1.0


def test_math_split_template_and_determinism() -> None:
    task = load_math_jsonl(MATH_SAMPLE, domain="gsm", test_fraction=0.3, seed=1, template="Q: {question}\nA:")
    assert (len(task.train), len(task.test)) == (5, 2)
    assert all(e.prompt.startswith("Q: ") and e.prompt.endswith("\nA:") for e in task.train + task.test)
    again = load_math_jsonl(MATH_SAMPLE, domain="gsm", test_fraction=0.3, seed=1, template="Q: {question}\nA:")
    assert again.test == task.test
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}


def test_math_plain_layout(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "plain.jsonl", [json.dumps({"prompt": "6*7?", "answer": "42"})])
    task = load_math_jsonl(path, test_fraction=0.0)
    assert task.score("6*7?", "It is 42.") == 1.0


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"question": "q", "solution": "s"},
            r"line 2: expected fields 'question'\+'answer' \(GSM8K\), 'problem'\+'solution' \(MATH\)",
        ),
        ({"text": "hello"}, r"found fields \['text'\]"),
    ],
)
def test_math_bad_row_is_a_clear_error(tmp_path: Path, row: dict, message: str) -> None:
    good = json.dumps({"question": "q0", "answer": "#### 1"})
    path = write_lines(tmp_path / "bad.jsonl", [good, json.dumps(row)])
    with pytest.raises(ValueError, match=message) as error:
        load_math_jsonl(path)
    assert str(path) in str(error.value)


def test_math_empty_file_and_bad_fraction(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="holds no rows"):
        load_math_jsonl(empty)
    with pytest.raises(ValueError, match="test_fraction"):
        load_math_jsonl(MATH_SAMPLE, test_fraction=1.0)


def test_feedback_views_are_sdpo_self_teacher_prompts_with_the_true_answer() -> None:
    from gopd_lab.config import RunConfig
    from gopd_lab.scorers.self_teacher import teacher_prompt

    assert arith.SDPO_TEMPLATE == RunConfig().sdpo_template
    task = get_task("add")
    views = arith.feedback_views(task, 0.3, seed=1)
    assert views == arith.feedback_views(task, 0.3, seed=1) and 0.25 * 4000 < len(views) < 0.35 * 4000
    truth = {e.prompt: e.answer for e in task.train}
    kinds = set()
    for v in views:
        head, prompt = v.prompt.rsplit("\n", 1)
        feedback, _, solution = head.rpartition(" ")
        assert v.answer == truth[prompt] and v.prompt == teacher_prompt(arith.SDPO_TEMPLATE, prompt, feedback, solution)
        if feedback:
            wrong = feedback.removeprefix(f"expected {v.answer}, got ")
            assert wrong != v.answer and len(wrong) == len(v.answer)
        assert solution in ("", v.answer)
        kinds.add((bool(feedback), bool(solution)))
    assert kinds == {(True, False), (False, True), (True, True)}
    noisy = arith.with_label_noise(task, 0.4, seed=0)
    mixed = arith.with_feedback_views(noisy, task, 0.3, seed=1)
    assert mixed.train == noisy.train + views and mixed.test == task.test
