"""The fault suite, continued (docs/reliability.md): the teacher server, the sweep driver, the math verifier,
the zoo and evaluation."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

from gopd_lab.config import ConfigError
from gopd_lab.experiments.sweep import _Runner, load_sweep
from gopd_lab.experiments.sweep_grid import Point, SweepError, notebook_parameters
from gopd_lab.experiments.sweep_lock import PointLock, is_locked, kill_tree, terminate_as_interrupt
from gopd_lab.lm.models import load_model, load_tokenizer
from gopd_lab.lm.rollout import encode_prompts
from gopd_lab.loop.evaluate import generate
from gopd_lab.scale.teacher_server import serve_in_thread
from gopd_lab.tasks import get_task, load_math_jsonl, math_verifier
from gopd_lab.world.zoo import ZooError, model_path


# ------------------------------------------------------------------------------------ teacher server
@pytest.fixture(scope="module")
def server(tiny_dirs):
    model = load_model(tiny_dirs["teacher"], role="teacher", device=torch.device("cpu"), dtype=torch.float32)
    srv = serve_in_thread(model, load_tokenizer(tiny_dirs["teacher"]), name="teacher")
    srv.RequestHandlerClass.timeout = 1.0  # a stalled client is dropped after 1 s
    yield srv
    srv.shutdown()
    srv.server_close()


def _raw(srv, data: bytes, wait: float = 30.0) -> bytes:
    """Send raw bytes, return everything the server answers before it closes the connection."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _post(srv, body: bytes, length: str | None = None) -> bytes:
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length or len(body)}\r\n\r\n"
    return _raw(srv, head.encode() + body)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


GOOD = {
    "prompt_ids": [[5, 6]],
    "prompt_mask": [[1, 1]],
    "completion_ids": [[7, 8]],
    "completion_mask": [[1, 1]],
}


def test_server_answers_a_good_request(server):
    assert _status(_post(server, json.dumps(GOOD).encode())) == 200


def test_server_body_over_the_limit_is_413_unread(server, monkeypatch):
    monkeypatch.setattr(server.RequestHandlerClass, "max_body", 100)
    answer = _post(server, b"x" * 10, length="1000000")
    assert _status(answer) == 413 and b"at most 100" in answer


@pytest.mark.parametrize("length", ["-1", "abc"])
def test_server_bad_content_length_is_400_not_a_hung_thread(server, length):
    assert _status(_post(server, b"{}", length=length)) == 400


def test_server_drops_a_client_that_stalls_mid_body(server):
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"
    assert _raw(server, head) == b""  # the server closed the connection (1 s socket timeout), no thread is held


@pytest.mark.parametrize(
    "change, message",
    [
        ({"topk": "x"}, "topk must be an integer"),
        ({"topk": -1}, "topk must be an integer >= 0"),
        ({"topk": True}, "topk must be an integer"),
        ({"rank": "yes"}, "rank must be true or false"),
        ({"chunk_tokens": 1.5}, "chunk_tokens must be an integer"),
        ({"gather": [[1, 2]]}, "gather must have one row per valid completion position"),
        ({"gather": [[1, 2], [3]]}, "gather must be a rectangular"),
        ({"gather": "abc"}, "gather must be a rectangular 2-D list"),
        ({"completion_mask": [[1, 2]]}, "completion_mask must hold only 0 and 1"),
        ({"prompt_ids": [[5.5, 6]]}, "prompt_ids must be a rectangular 2-D list of ints"),
        ({"prompt_ids": [[5, 6, 7]]}, "must be \\(B, P\\)"),
        ({"temperature": 2}, "unknown field"),
        ({"prompt_ids": [[5] * 200], "prompt_mask": [[1] * 200]}, "the model's context is 128"),
    ],
)
def test_server_malformed_field_is_400_never_500(server, change, message):
    answer = _post(server, json.dumps({**GOOD, **change}).encode())
    assert _status(answer) == 400, answer
    assert message.replace("\\", "") in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


# ------------------------------------------------------------------------------------ sweep driver
def _runner(tmp_path) -> _Runner:
    return _Runner(tmp_path / "nb.ipynb", tmp_path, {}, 1, None, None, [], None)


def test_sweep_point_held_by_another_driver_is_skipped(tmp_path, monkeypatch):
    point = Point("lam=1", {"lam": 1})
    (tmp_path / point.id).mkdir()
    other = PointLock(tmp_path / point.id)
    assert other.acquire()
    runner = _runner(tmp_path)
    monkeypatch.setattr(runner, "papermill", lambda *a, **k: pytest.fail("started a second copy"))
    assert runner.execute(point, 0)["status"] == "locked" and runner.locked == [point.id]
    other.close()


def test_sweep_stale_running_point_is_reported_interrupted(tmp_path):
    d = tmp_path / "lam=1"
    d.mkdir()
    (d / "params.json").write_text('{"lam": 1}')
    (d / "point.json").write_text(json.dumps({"status": "running", "params": {"lam": 1}}))
    assert load_sweep(tmp_path).status.tolist() == ["interrupted"]
    lock = PointLock(d)
    assert lock.acquire()  # a live driver holds it: still running
    assert load_sweep(tmp_path).status.tolist() == ["running"]
    lock.close()


def test_sweep_lock_is_held_by_papermill_after_the_driver_lets_go(tmp_path):
    lock = PointLock(tmp_path)
    assert lock.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock.fd,))
    lock.close()
    assert is_locked(tmp_path)  # the child (papermill) keeps the point locked, e.g. after kill -9 of the driver
    child.kill()
    child.wait()
    assert not is_locked(tmp_path)


def test_sweep_driver_sigterm_becomes_interrupt_and_kills_kernels(tmp_path):
    code = (
        "import subprocess, sys, time;"
        "k = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True);"
        f"open(r'{tmp_path / 'kernel.pid'}', 'w').write(str(k.pid)); time.sleep(60)"
    )
    papermill = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    pid_file = tmp_path / "kernel.pid"
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    kernel = int(pid_file.read_text())
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    kill_tree(papermill.pid)
    assert papermill.wait(timeout=30) != 0
    for _ in range(600):  # the kernel (its own session, not papermill's child any more) is gone too
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{kernel}/stat").is_file() and Path(f"/proc/{kernel}/stat").read_text().split()[2] == "Z":
            break  # a zombie waiting for init to reap it: dead
        time.sleep(0.05)
    else:
        pytest.fail("the kernel survived the driver's cleanup")


def test_sweep_notebook_without_kernelspec_is_one_clear_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("out_dir = 'x'")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    with pytest.raises(SweepError, match=r"nb\.ipynb: No kernel name found"):
        notebook_parameters(tmp_path / "nb.ipynb")


# ------------------------------------------------------------------------------------ math verifier
@pytest.mark.parametrize(
    "completion, answer",
    [
        ("She earns 18 dollars.\n#### 18 dollars", "#### 18"),
        ("The cost is \\boxed{\\$18}.", "#### 18"),
        ("So the fraction is 3/4", "\\boxed{\\frac{3}{4}}"),
        ("The answer is 3/4.", "#### 0.75"),
    ],
)
def test_math_verifier_accepts_correct_answers_it_used_to_reject(completion, answer):
    assert math_verifier(completion, answer)


def test_math_verifier_still_rejects_wrong_ones():
    assert not math_verifier("So the fraction is 3/4", "#### 4")
    assert not math_verifier("#### 18 dollars", "#### 19")


def _lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math_row_without_answer_is_skipped_with_a_warning_not_the_whole_file(tmp_path):
    path = _lines(tmp_path / "m.jsonl", [{"question": "q0", "answer": "#### 1"}, {"question": "q1", "answer": "x"}])
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) without a final answer.*line\(s\) 2"):
        task = load_math_jsonl(path, test_fraction=0.0)
    assert [e.prompt for e in task.train] == ["q0"]


def test_math_duplicate_prompts_are_dropped_with_a_warning(tmp_path):
    rows = [{"question": "q", "answer": "#### 1"}, {"question": "p", "answer": "#### 2"}]
    path = _lines(tmp_path / "m.jsonl", rows + [{"question": "q", "answer": "#### 1"}])
    with pytest.warns(UserWarning, match=r"1 row\(s\) repeat an earlier prompt.*line\(s\) 3"):
        load_math_jsonl(path, test_fraction=0.0)


def test_prompt_answer_task_path_keeps_exact_match_not_the_lenient_math_verifier(tmp_path):
    path = _lines(tmp_path / "plain.jsonl", [{"prompt": "6*7=", "answer": "42"}, {"prompt": "2*2=", "answer": "4"}])
    task = get_task(str(path))
    example = task.train[0] if task.train else task.test[0]
    assert task.score(example.prompt, example.answer) == 1.0
    assert task.score(example.prompt, f"it is {example.answer}, or 7") == 0.0


# ------------------------------------------------------------------------------------ zoo and evaluation
def test_zoo_file_not_in_the_manifest_is_refused(tmp_path):
    """An extra special_tokens_map.json changed EOS while every listed hash still matched."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"m": {"sha256": {"config.json": digest}}}}))
    assert model_path("m", root=tmp_path) == tmp_path / "m"
    (tmp_path / "m" / "special_tokens_map.json").write_text('{"eos_token": "x"}')
    with pytest.raises(ZooError, match=r"does not list \(\['special_tokens_map.json'\]\)"):
        model_path("m", root=tmp_path)


def test_evaluation_refuses_a_prompt_longer_than_the_context(tiny_dirs):
    """A 204-token prompt on a 128-position model reported greedy accuracy 1.0."""
    model = load_model(tiny_dirs["student"], role="student", device=torch.device("cpu"), dtype=torch.float32)
    tok = load_tokenizer(tiny_dirs["student"])
    with pytest.raises(ConfigError, match="context of 128"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(model, tok, encode_prompts(tok, ["1" * 204]), max_new_tokens=4, greedy=True)
