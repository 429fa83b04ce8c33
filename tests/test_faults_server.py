"""The fault suite, round 3 (issue 22): a teacher server that stalls, bodies refused before decoding, padded
vocabularies served, a port in use, push into stale folders, sweep points that were killed.
docs/reliability.md lists each case."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from transformers import Qwen2ForCausalLM

from gopd_lab.config import ConfigError
from gopd_lab.experiments.sweep import run_sweep
from gopd_lab.lm.models import Models
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.lm.vocab import align_vocabularies
from gopd_lab.scale import teacher_server
from gopd_lab.scale.hub import push_to_hub
from gopd_lab.scale.teacher_request import BadRequest, precheck_body
from gopd_lab.scale.teacher_server import RemoteScorer, TeacherService, TeacherUnreachable, make_server
from gopd_lab.scorers.score import score_rollout
from gopd_lab.world.tiny import tiny_config
from gopd_lab.world.tokenizer import build_char_tokenizer

N_CHAR = 104


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model, tok):
    server = make_server(TeacherService(model, tok))
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ------------------------------------------------------------------------------------ a stalled server
@pytest.mark.slow
def test_a_stopped_teacher_server_is_an_error_within_the_deadline_with_retry_warnings(tiny_dirs, caplog):
    """A SIGSTOP'd server stalled the run with no output; the defaults (600 s x 4 tries) allowed ~40 minutes."""
    port = _free_port()
    cmd = [sys.executable, "-m", "gopd_lab.scale.teacher_server", "--model", tiny_dirs["teacher"], "--port", str(port)]
    server = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert "serving" in server.stdout.readline()  # up (loopback only)
        url = f"http://127.0.0.1:{port}"
        assert RemoteScorer(url).deadline == 60 and RemoteScorer(url).timeout == 20  # the documented defaults
        scorer = RemoteScorer(url + "?timeout=1&deadline=4&backoff=0.2")
        assert scorer.info["vocab_size"] == N_CHAR
        server.send_signal(signal.SIGSTOP)
        tok = build_char_tokenizer()
        ro = encode_prompts(tok, ["1+1="])
        from gopd_lab.lm.rollout import teacher_forced

        rollout = teacher_forced(ro, tok, ["2"], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="gopd_lab.scorers.remote"):
            with pytest.raises(TeacherUnreachable, match=r"not answering \(timed out: no answer within 1 s; 3 tries"):
                scorer.score(rollout)
        waited = time.monotonic() - t0
        assert 2 < waited < 4 + 1.5  # bounded by the deadline (plus one connect's slack)
        retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(retries) == 2 and "(try 1 of 3)" in retries[0]
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(timeout=30)


def test_a_bad_client_option_in_the_url_is_refused():
    from gopd_lab.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="option deadline must be > 0"):
        RemoteScorer("http://127.0.0.1:1?deadline=0")
    with pytest.raises(ModelLoadError, match="option timeout must be a number"):
        RemoteScorer("http://127.0.0.1:1?timeout=soon")


# ------------------------------------------------------------------------------------ before decoding
def test_rows_and_length_are_refused_off_the_raw_body_before_decoding(tiny_dirs, monkeypatch):
    """A 160 MB request under the 256 MiB cap was refused for its row count only after json.loads (~0.9 GB)."""
    rows = [[5, 6, 7]] * 40
    body = json.dumps({"prompt_ids": rows, "prompt_mask": rows, "completion_ids": rows, "completion_mask": rows})
    with pytest.raises(BadRequest, match="40 rows in one request; this server takes at most 32"):
        precheck_body(body.encode(), max_rows=32, max_context=128)
    long = [list(range(100))]
    body = json.dumps({"prompt_ids": long, "prompt_mask": long, "completion_ids": long, "completion_mask": long})
    with pytest.raises(BadRequest, match="prompt \\+ completion is 200 positions; the model's context is 128"):
        precheck_body(body.encode(), max_rows=32, max_context=128)
    empty = json.dumps({"prompt_ids": [], "completion_ids": [[1]]}).encode()
    precheck_body(empty, max_rows=32, max_context=128)  # nothing to refuse here: the full check decides

    from transformers import AutoModelForCausalLM

    from gopd_lab.lm.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["teacher"])
    server = make_server(TeacherService(model, load_tokenizer(tiny_dirs["teacher"]), max_rows=8))
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    decoded = []
    real_loads = json.loads
    monkeypatch.setattr(teacher_server.json, "loads", lambda b, *a, **k: decoded.append(len(b)) or real_loads(b))
    try:
        rows = [[5] * 60] * 20_000  # 20,000 rows: ~7 MB
        payload = {"prompt_ids": rows, "prompt_mask": rows, "completion_ids": rows, "completion_mask": rows}
        data = json.dumps(payload).encode()
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.request("POST", "/score", body=data, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 400 and "20000 rows in one request" in json.loads(answer.read())["error"]
        conn.close()
        assert not [n for n in decoded if n > 1_000_000]  # the large body was never decoded
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ padded vocabularies
def _padded(path, width, seed):
    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(width, tokenizer=tok)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@pytest.mark.parametrize("estimator", ["topk", "full", "sampled"])
@pytest.mark.parametrize("teacher_width", [N_CHAR + 4, N_CHAR + 12])
def test_a_served_teacher_with_a_padded_vocabulary_scores_as_the_local_one(tmp_path, estimator, teacher_width):
    """topk and full with a padded served teacher crashed (the local path masks the padded rows)."""
    student, tok = _padded(tmp_path / "s", N_CHAR + 4, 0)
    local_teacher, _ = _padded(tmp_path / f"t{teacher_width}", teacher_width, 1)
    served_teacher, _ = _padded(tmp_path / f"u{teacher_width}", teacher_width, 1)  # the same weights, served
    vocab = align_vocabularies(student, tok.get_vocab(), {"t": (local_teacher, _agreement())})
    server = _serve(served_teacher, tok)
    try:
        remote = RemoteScorer(server.url)
        remote.width = N_CHAR + 4
        local = Models(student, tok, {"default": local_teacher}, vocab=vocab)
        served = Models(student, tok, {"default": remote}, vocab=vocab)
        prompts = encode_prompts(tok, ["12+7=", "3*4=", "9+9="])
        gen = torch.Generator().manual_seed(0)
        ro = sample(student, prompts, max_new_tokens=6, pad_token_id=tok.pad_token_id, generator=gen)
        want = score_rollout(local, ro, 1.0, estimator=estimator, topk=5)
        got = score_rollout(served, ro, 1.0, estimator=estimator, topk=5)
        for name in ("lp_teacher", "teacher_rank", "target", "topk_index", "lp_teacher_topk"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-4), name
    finally:
        server.shutdown()
        server.server_close()


def _agreement():
    from gopd_lab.lm.vocab import Agreement

    return Agreement()


# ------------------------------------------------------------------------------------ the port
def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            teacher_server.main(["--model", str(tmp_path / "no-model"), "--port", str(port)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------ push
@pytest.fixture(scope="module")
def finished_run(tiny_dirs, tmp_path_factory):
    from gopd_lab.config import RunConfig
    from gopd_lab.loop.train import train

    out = tmp_path_factory.mktemp("push") / "run"
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        prompts=["1+1=", "2+2="],
        batch_size=2,
        steps=1,
        max_new_tokens=2,
        device="cpu",
        dtype="float32",
        out_dir=str(out),
        log_samples=0,
    )
    train(cfg, progress=False)
    return out


def test_push_local_dir_never_keeps_stale_tokenizer_files(finished_run, tmp_path):
    """push --local-dir into a folder holding another tokenizer's files kept them (the model loaded with EOS '7')."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "special_tokens_map.json").write_text('{"eos_token": "7"}')
    with pytest.raises(ConfigError, match=r"local_dir .*foreign is not empty \(special_tokens_map.json\)"):
        push_to_hub(finished_run, "me/s", local_dir=foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["special_tokens_map.json"]  # untouched
    again = tmp_path / "again"
    push_to_hub(finished_run, "me/s", local_dir=again)
    pushed = sorted(p.name for p in again.iterdir())
    (again / "special_tokens_map.json").write_text('{"eos_token": "7"}')  # an earlier push's folder, gone stale
    push_to_hub(finished_run, "me/s", local_dir=again)
    assert sorted(p.name for p in again.iterdir()) == pushed  # replaced whole: the stale file is gone
    from gopd_lab.lm.models import load_tokenizer

    assert load_tokenizer(str(again)).eos_token == load_tokenizer(str(finished_run / "model")).eos_token


def test_push_to_a_file_path_names_it(finished_run, tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("x")
    with pytest.raises(ConfigError, match=r"local_dir .*model.bin is a file"):
        push_to_hub(finished_run, "me/s", local_dir=target)
    with pytest.raises(ConfigError, match=r"run_dir .*model.bin is a file"):
        push_to_hub(target, "me/s", local_dir=tmp_path / "out")


# ------------------------------------------------------------------------------------ a killed sweep point
@pytest.mark.slow
def test_a_sweep_point_whose_process_was_killed_is_recorded_as_killed(tmp_path):
    """A point whose papermill process was killed (OOM killer, kill -9) was recorded as an ordinary failure."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0\nout_dir = ''")
    params.metadata["tags"] = ["parameters"]
    kill = "import os, signal\nif x == 1:\n    os.kill(os.getppid(), signal.SIGKILL)  # papermill\n    os._exit(0)"
    nb.cells = [params, nbformat.v4.new_code_cell(kill)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "kill.ipynb"
    nbformat.write(nb, path)
    df = run_sweep(path, {"x": [1, 2]}, sweep_dir=tmp_path / "s", progress=False, workers=2)
    row = df.set_index("point_id").loc["x=1"]
    assert row.status == "failed" and row.error.startswith("killed: the point's papermill process was ended by SIGKILL")
    assert df.set_index("point_id").loc["x=2"].status == "ok"  # the sweep survives the killed point
    assert json.loads((Path(tmp_path / "s" / "x=1" / "point.json")).read_text())["killed"] is True
