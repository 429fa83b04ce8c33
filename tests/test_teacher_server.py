"""The teacher as a server (loopback only): remote scoring equals in-process scoring, train() runs against a
URL, and an unreachable or failing server gives a clear error after a bounded number of quick retries."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.logprobs import token_logprobs
from gopd_lab.lm.models import ModelLoadError, Models, load_model, load_tokenizer
from gopd_lab.lm.rollout import Rollout, left_pad
from gopd_lab.loop.load import load_models
from gopd_lab.loop.train import train
from gopd_lab.methods import get_method
from gopd_lab.scale import teacher_server
from gopd_lab.scale.teacher_server import (
    RemoteScorer,
    TeacherServerError,
    TeacherUnreachable,
    decode_tensor,
    encode_tensor,
    serve_in_thread,
)
from gopd_lab.scorers import remote
from gopd_lab.scorers.score import reference_logprobs, score_rollout

PROMPTS = ["12+7=", "x", "hello world, 3*4=", "ab", "9*9=", "100-1="]
LENGTHS = [None, 3, 1, 6, None, 2]  # completion lengths with EOS; None = no EOS, runs to the full width
DOMAINS = ["a", "b", "a", "a", "b", "a"]
LAM = {"a": 1.25, "b": 1.0}  # rows of domain b run no reference
WIDTH = 7
QUICK = dict(connect_timeout=2.0, timeout=30.0, retries=2, backoff=0.01)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local(tiny_dirs):
    """In-process student, teacher and reference on the character tokenizer."""
    tok = load_tokenizer(tiny_dirs["student"])

    def load(role):
        return load_model(tiny_dirs[role], role=role, device=torch.device("cpu"), dtype=torch.float32).eval()

    return {"tok": tok, "student": load("student"), "teacher": load("teacher"), "reference": load("reference")}


@pytest.fixture(scope="module")
def servers(local):
    """The teacher and the reference, each behind its own loopback server on a free port."""
    started = {role: serve_in_thread(local[role], local["tok"], name=role) for role in ("teacher", "reference")}
    yield {role: s.url for role, s in started.items()}
    for s in started.values():
        s.shutdown()
        s.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rollout(tok) -> Rollout:
    g = torch.Generator().manual_seed(0)
    prompt_ids, prompt_mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id)
    comp = torch.full((len(PROMPTS), WIDTH), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(comp)
    for i, n in enumerate(LENGTHS):
        n_tok = WIDTH if n is None else n
        comp[i, :n_tok] = torch.randint(4, len(tok), (n_tok,), generator=g)
        if n is not None:
            comp[i, n - 1] = tok.eos_token_id
        mask[i, :n_tok] = 1
    return Rollout(prompt_ids, prompt_mask, comp, mask, list(PROMPTS), [""] * len(PROMPTS), list(DOMAINS))


def _close(a, b, atol=1e-5):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype.is_floating_point:
        torch.testing.assert_close(a, b, atol=atol, rtol=0, equal_nan=True)
    else:
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ same numbers
@pytest.mark.parametrize("estimator", ["sampled", "full", "topk"])
@pytest.mark.parametrize("mode", ["both_remote", "remote_teacher_local_reference"])
def test_remote_scoring_equals_in_process(local, servers, estimator, mode):
    ro = _rollout(local["tok"])
    in_process = Models(local["student"], local["tok"], {"default": local["teacher"]}, {"default": local["reference"]})
    reference = (
        RemoteScorer(servers["reference"], role="reference", max_rows=4)
        if mode == "both_remote"
        else local["reference"]
    )
    remote = Models(
        local["student"],
        local["tok"],
        {"default": RemoteScorer(servers["teacher"], max_rows=4)},
        {"default": reference},
    )  # max_rows=4: the 6 rows travel in two requests
    want = score_rollout(in_process, ro, LAM, estimator=estimator, topk=5)
    got = score_rollout(remote, ro, LAM, estimator=estimator, topk=5)
    for name in (
        "lp_teacher",
        "teacher_rank",
        "lp_reference",
        "lam",
        "target",
        "topk_index",
        "lp_teacher_topk",
        "lp_reference_topk",
    ):
        _close(getattr(got, name), getattr(want, name))
    lp_student = token_logprobs(local["student"], ro)
    cfg = RunConfig(estimator=estimator)
    gopd = get_method("gopd")  # G-OPD's A_t from the remote and the in-process scores
    _close(gopd.advantages(got, lp_student, cfg), gopd.advantages(want, lp_student, cfg))


def test_remote_jsd_target_and_reference_logprobs(local, servers):
    ro = _rollout(local["tok"])
    teacher, reference = RemoteScorer(servers["teacher"]), RemoteScorer(servers["reference"], role="reference")
    in_process = Models(local["student"], local["tok"], {"default": local["teacher"]}, {"default": local["reference"]})
    remote = Models(local["student"], local["tok"], {"default": teacher}, {"default": reference})
    _close(
        score_rollout(remote, ro, 1.0, estimator="jsd").target,
        score_rollout(in_process, ro, 1.0, estimator="jsd").target,
    )
    _close(reference_logprobs(remote, ro), reference_logprobs(in_process, ro))


def test_wire_format_is_exact():
    for t in (torch.randn(3, 5), torch.randint(-5, 10**9, (4, 2)), torch.zeros(0, 7)):
        back = decode_tensor(json.loads(json.dumps(encode_tensor(t))))
        assert back.dtype == t.dtype and torch.equal(back, t)


# ------------------------------------------------------------------------------------ train() against a URL
def test_train_two_steps_with_a_url_teacher_matches_in_process(tiny_dirs, servers, tmp_path):
    base = dict(
        student=tiny_dirs["student"],
        reference=tiny_dirs["reference"],
        lam=1.25,
        device="cpu",
        dtype="float32",
        prompts=PROMPTS,
        batch_size=3,
        max_new_tokens=5,
        steps=2,
        lr=1e-2,
        log_samples=0,
    )
    local_run = train(RunConfig(teacher=tiny_dirs["teacher"], out_dir=str(tmp_path / "local"), **base), progress=False)
    remote_run = train(RunConfig(teacher=servers["teacher"], out_dir=str(tmp_path / "remote"), **base), progress=False)
    assert len(remote_run) == 2
    for col in ("loss", "reverse_kl", "lp_teacher_mean", "reward_mean", "adv_mean"):
        assert remote_run[col].tolist() == pytest.approx(local_run[col].tolist(), abs=1e-5), col


def test_load_models_builds_a_remote_scorer(tiny_dirs, servers):
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=servers["teacher"],
        reference=servers["reference"],
        lam=1.25,
        device="cpu",
        dtype="float32",
        prompts=PROMPTS,
    )
    models = load_models(cfg)
    assert isinstance(models.teachers["default"], RemoteScorer) and isinstance(
        models.references["default"], RemoteScorer
    )
    assert models.references["default"].role == "reference"


def test_url_teacher_cannot_be_sampled_from(tiny_dirs, servers):
    cfg = RunConfig(method="offpolicy", student=tiny_dirs["student"], teacher=servers["teacher"], prompts=PROMPTS)
    with pytest.raises(ConfigError, match="only scores tokens"):
        load_models(cfg)


def test_tokenizer_mismatch_is_a_model_load_error(local, servers, monkeypatch):
    scorer = RemoteScorer(servers["teacher"])
    info = json.loads(json.dumps(scorer.info))
    info["tokenizer"]["vocab_hash"] = "0" * 64
    info["tokenizer"]["special_tokens"]["eos_token"] = "</s>"
    monkeypatch.setattr(scorer, "_info", info)
    with pytest.raises(ModelLoadError, match="tokenizer mismatch.*vocabularies differ.*eos_token differs"):
        scorer.check_tokenizer(local["tok"], "student")
    RemoteScorer(servers["teacher"]).check_tokenizer(local["tok"], "student")  # the real one agrees


def test_full_distributions_are_refused_for_large_vocabularies(local, servers, monkeypatch):
    monkeypatch.setattr(remote, "FULL_VOCAB_LIMIT", 10)
    with pytest.raises(ModelLoadError, match="estimator='topk' or 'sampled'"):
        RemoteScorer(servers["teacher"]).score(_rollout(local["tok"]), full=True)


# ------------------------------------------------------------------------------------ failures
def test_unreachable_url_raises_quickly_with_the_fix(local):
    url = f"http://127.0.0.1:{_free_port()}"
    scorer = RemoteScorer(url + "?connect_timeout=2&retries=2&backoff=0.01")
    with pytest.raises(
        TeacherUnreachable, match=r"127\.0\.0\.1.*unreachable.*python -m gopd_lab\.scale\.teacher_server"
    ) as err:
        scorer.score(_rollout(local["tok"]))
    assert url in str(err.value)


def test_unreachable_url_at_load_time(tiny_dirs):
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=f"http://127.0.0.1:{_free_port()}?retries=1&connect_timeout=2",
        device="cpu",
        dtype="float32",
        prompts=PROMPTS,
    )
    with pytest.raises(TeacherUnreachable):
        load_models(cfg)


def test_a_slow_server_times_out_and_is_reported(local, servers, monkeypatch):
    monkeypatch.setattr(teacher_server, "score_tokens", lambda *a, **k: time.sleep(0.6))
    scorer = RemoteScorer(servers["teacher"] + "?timeout=0.2&retries=2&backoff=0.01")
    with pytest.raises(TeacherUnreachable, match="timed out"):
        scorer.score(_rollout(local["tok"]))
    time.sleep(1.3)  # let the two sleeping requests drain before the next test uses the server


def test_a_malformed_url_is_a_model_load_error():
    with pytest.raises(ModelLoadError, match="unknown"):
        RemoteScorer("http://127.0.0.1:8765?tiemout=3")
    with pytest.raises(ModelLoadError, match="not a teacher server URL"):
        RemoteScorer("http://:8765")


def test_server_error_is_retried_then_reported(local, servers, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory on the teacher")

    monkeypatch.setattr(teacher_server, "score_tokens", broken)
    scorer = RemoteScorer(servers["teacher"], retries=3, backoff=0.01)
    with pytest.raises(TeacherServerError, match="failed on 3 tries.*HTTP 500.*out of memory on the teacher"):
        scorer.score(_rollout(local["tok"]))
    assert len(calls) == 3


def test_a_bad_request_is_not_retried(local, servers):
    ro = _rollout(local["tok"])
    ro.completion_ids[0, 0] = 10**6  # no such token
    with pytest.raises(TeacherServerError, match=r"HTTP 400.*token ids must be in"):
        RemoteScorer(servers["teacher"], **QUICK).score(ro)


def test_server_recovers_after_a_transient_failure(local, servers, monkeypatch):
    real, calls = teacher_server.score_tokens, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_server, "score_tokens", flaky)
    ro = _rollout(local["tok"])
    got = RemoteScorer(servers["teacher"], **QUICK).token_logprobs(ro)
    _close(got, token_logprobs(local["teacher"], ro))
    assert len(calls) == 2


# ------------------------------------------------------------------------------------ the command
def test_server_command_serves_info(tiny_dirs):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "gopd_lab.scale.teacher_server",
        "--model",
        tiny_dirs["teacher"],
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{port}/info", timeout=2
                ) as resp:
                    info = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert info["protocol"] == teacher_server.PROTOCOL and info["model"] == tiny_dirs["teacher"]
        assert info["tokenizer"]["special_tokens"]["eos_token"] == "<eos>"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
