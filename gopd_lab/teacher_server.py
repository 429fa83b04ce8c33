"""The teacher (or a reference) as a server: log-probs of the student's tokens over HTTP.

The scoring model runs in its own process, on this machine or another, so its weights never sit in the
training process. The training side holds a :class:`RemoteScorer` (what :func:`~gopd_lab.models.load_models`
builds for a ``http://`` / ``https://`` spec) and :mod:`gopd_lab.score` calls it where it would run a model::

    python -m gopd_lab.teacher_server --model zoo:teacher-add --port 8765       # the teacher's machine
    RunConfig(teacher="http://127.0.0.1:8765", ...)                              # the training process

The server computes exactly what ``score._score_pair`` computes for one model, with the same
:mod:`gopd_lab.scoring` functions (decoder once, LM head only at valid completion positions, chunked,
float32), so the numbers agree with in-process scoring to float rounding.

Protocol (JSON over HTTP; one request carries at most ``max_rows`` rows):

- ``GET /info`` → ``{"protocol", "model", "vocab_size", "tokenizer": {"vocab_hash", "size", "special_tokens"}}``.
- ``POST /score`` ← ``prompt_ids``/``prompt_mask`` ``(B, P)`` and ``completion_ids``/``completion_mask``
  ``(B, C)`` as lists, ``rank`` (bool), ``topk`` (k, 0 = none), ``full`` (bool), ``gather`` (``(N, k)`` token
  ids to read each state's log-probs at, or null), ``chunk_tokens``.
  → ``lp`` and ``rank`` ``(B, C)``; ``topk_index``/``topk_logp``, ``full`` ``(N, V)`` and ``gather`` ``(N, k)``
  over the ``N`` valid completion positions in :class:`~gopd_lab.scoring.Positions` order. Tensors in the
  answer are ``{"dtype", "shape", "data"}`` with the raw little-endian bytes in base64 (exact float32).
- Errors: 400 for a malformed request (not retried), 500 for a failure while scoring (retried).

The client splits large batches into requests of at most ``max_rows`` rows, retries connection failures,
timeouts and 5xx answers with exponential backoff, and raises :class:`TeacherUnreachable` naming the URL and
the command to start when no server answers. Options ride on the URL's query string:
``http://host:8765?connect_timeout=5&timeout=60&retries=5&max_rows=8``.

The server has no authentication: it listens on 127.0.0.1 by default; give ``--host 0.0.0.0`` only on a
private network (or put it behind a proxy that authenticates).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from torch import Tensor, nn

from .models import ModelLoadError
from .objectives import target_logprobs
from .rollout import Rollout
from .scoring import Positions, _vocab_size, chunk_rows, completion_features, max_context, scoring_view
from .teacher_request import BadRequest, parse_score_request

PROTOCOL = 1
FULL_VOCAB_LIMIT = 8192
"""Largest vocabulary for which full per-state distributions are sent over the wire (``full``/``jsd``)."""
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TeacherUnreachable(ModelLoadError):
    """No scoring server answers at the URL; the message names it and the command that starts one."""


class TeacherServerError(RuntimeError):
    """The scoring server answered with an error (after retries for 5xx); the message carries its reason."""


def is_url(spec: object) -> bool:
    """A model spec that names a scoring server rather than weights."""
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------- the computation
@torch.inference_mode()
def score_tokens(
    model: nn.Module,
    rollout: Rollout,
    *,
    rank: bool = False,
    topk: int = 0,
    full: bool = False,
    gather: Tensor | None = None,
    chunk_tokens: int = 0,
) -> dict[str, Tensor]:
    """One model's view of a rollout, chunk by chunk, as ``score._score_pair`` computes it for a teacher.

    Returns ``lp`` ``(B, C)`` (0 where masked) and, when asked, ``rank`` ``(B, C)``, ``topk_index`` /
    ``topk_logp`` ``(N, k)``, ``full`` ``(N, V)`` log-distributions, ``gather`` ``(N, k)`` log-probs at the
    given ids; per-state tensors follow :class:`~gopd_lab.scoring.Positions` order.
    """
    pos = Positions.of(rollout)
    tokens = rollout.completion_ids[pos.b, pos.c]  # (N,)
    with scoring_view(model) as m:
        feats, head = completion_features(m, rollout, pos)
        vocab = _vocab_size(m, head, feats)
    n = chunk_rows(vocab, chunk_tokens, feats.device)
    k = min(topk, vocab)
    acc: dict[str, list[Tensor]] = {}
    for i in range(0, len(pos), n):
        logp = torch.log_softmax(head(feats[i : i + n]).float(), -1)  # (n, V)
        lp = logp.gather(-1, tokens[i : i + n, None]).squeeze(-1)  # (n,)
        acc.setdefault("lp", []).append(lp)
        if rank:
            acc.setdefault("rank", []).append((logp > lp[:, None]).sum(-1))
        if k:
            values, index = logp.topk(k, dim=-1)  # (n, k)
            acc.setdefault("topk_index", []).append(index)
            acc.setdefault("topk_logp", []).append(values)
        if full:
            acc.setdefault("full", []).append(logp)
        if gather is not None:
            acc.setdefault("gather", []).append(logp.gather(-1, gather[i : i + n]))
    dev = feats.device
    empty = {
        "lp": torch.zeros(0, device=dev),
        "rank": torch.zeros(0, dtype=torch.long, device=dev),
        "topk_index": torch.zeros(0, k, dtype=torch.long, device=dev),
        "topk_logp": torch.zeros(0, k, device=dev),
        "full": torch.zeros(0, vocab, device=dev),
        "gather": torch.zeros(0, 0 if gather is None else gather.shape[-1], device=dev),
    }
    wanted = (
        ["lp"]
        + ["rank"] * rank
        + ["topk_index", "topk_logp"] * bool(k)
        + ["full"] * full
        + ["gather"] * (gather is not None)
    )
    out = {name: torch.cat(acc[name]) if name in acc else empty[name] for name in wanted}
    out["lp"] = pos.scatter(out["lp"])
    if rank:
        out["rank"] = pos.scatter(out["rank"], fill=0)
    return out


def remote_score_pair(
    teacher,
    reference,
    rollout: Rollout,
    lam: Tensor,
    *,
    estimator: str,
    topk: int,
    chunk_tokens: int,
    teacher_rollout: Rollout,
) -> dict[str, Tensor]:
    """``score._score_pair`` when the teacher or the reference is a :class:`RemoteScorer` (the other may be a
    local model): ask each for what the estimator needs and assemble the same outputs."""
    want_full = estimator in ("full", "jsd")
    k = topk if estimator == "topk" else 0
    t = _ask(teacher, teacher_rollout, rank=True, topk=k, full=want_full, chunk_tokens=chunk_tokens)
    out = {"lp_teacher": t["lp"], "rank": t["rank"]}
    r = None
    if reference is not None:
        r = _ask(
            reference,
            rollout,
            full=estimator == "full",
            gather=t["topk_index"] if k else None,
            chunk_tokens=chunk_tokens,
        )
        out["lp_reference"] = r["lp"]
    if estimator == "full":
        lam_n = lam[Positions.of(rollout).b][:, None]  # (N, 1)
        out["target"] = target_logprobs(t["full"], None if r is None else r["full"], lam_n)
    elif estimator == "jsd":
        out["target"] = t["full"]
    elif estimator == "topk":
        out["topk_index"], out["lp_teacher_topk"] = t["topk_index"], t["topk_logp"]
        if r is not None:
            out["lp_reference_topk"] = r["gather"]
    return out


def _ask(scorer, rollout: Rollout, **want) -> dict[str, Tensor]:
    if isinstance(scorer, RemoteScorer):
        return scorer.score(rollout, **want)
    return score_tokens(scorer, rollout, **want)


# ---------------------------------------------------------------------------------------------- wire format
def encode_tensor(t: Tensor) -> dict:
    a = t.detach().cpu().contiguous().numpy()
    return {
        "dtype": str(a.dtype),
        "shape": list(a.shape),
        "data": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode(),
    }


def decode_tensor(d: dict, device: torch.device | str = "cpu") -> Tensor:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"]).newbyteorder("<")).reshape(d["shape"])
    return torch.from_numpy(a.astype(a.dtype.newbyteorder("="))).to(device)


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token → id), the same on every machine."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def tokenizer_info(tokenizer) -> dict:
    return {
        "vocab_hash": vocab_hash(tokenizer),
        "size": len(tokenizer),
        "special_tokens": {a: getattr(tokenizer, a) for a in SPECIAL_TOKENS},
    }


# ---------------------------------------------------------------------------------------------- client
class RemoteScorer:
    """A teacher or reference served by ``python -m gopd_lab.teacher_server``: scores tokens, holds no weights.

    ``connect_timeout`` / ``timeout`` (seconds to connect / to wait for an answer), ``retries`` (tries per
    request, exponential backoff from ``backoff`` seconds) and ``max_rows`` (rows per request) can also be
    given in the URL's query string. Connections are direct (no HTTP proxy).
    """

    OPTIONS = ("connect_timeout", "timeout", "retries", "backoff", "max_rows")

    def __init__(
        self,
        url: str,
        *,
        role: str = "teacher",
        connect_timeout: float = 10.0,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_rows: int = 32,
    ):
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        unknown = sorted(set(query) - set(self.OPTIONS))
        if unknown or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelLoadError(
                f"{url!r} is not a teacher server URL: http(s)://host:port, options "
                f"{', '.join(self.OPTIONS)} in the query string" + (f" (unknown: {unknown})" if unknown else "")
            )
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._parts = parts
        self.role = role
        self.connect_timeout = float(query.get("connect_timeout", connect_timeout))
        self.timeout = float(query.get("timeout", timeout))
        self.retries = max(1, int(query.get("retries", retries)))
        self.backoff = float(query.get("backoff", backoff))
        self.max_rows = max(1, int(query.get("max_rows", max_rows)))
        self._info: dict | None = None

    def __repr__(self) -> str:
        return f"RemoteScorer({self.url!r}, role={self.role!r})"

    @property
    def info(self) -> dict:
        """The server's ``GET /info`` (fetched once)."""
        if self._info is None:
            info = self._request("/info")
            if info.get("protocol") != PROTOCOL:
                raise TeacherServerError(
                    f"{self.url} speaks protocol {info.get('protocol')!r}, this client {PROTOCOL}; "
                    "run the same gopd_lab version on both sides"
                )
            self._info = info
        return self._info

    def check_tokenizer(self, tokenizer, student_name: str) -> None:
        """Raise :class:`~gopd_lab.models.ModelLoadError` (as ``models.check_tokenizers`` does) unless the
        server's tokenizer is the student's."""
        theirs, ours = self.info["tokenizer"], tokenizer_info(tokenizer)
        problems = []
        if theirs["vocab_hash"] != ours["vocab_hash"]:
            problems.append(f"vocabularies differ ({ours['size']} vs {theirs['size']} tokens)")
        for attr in SPECIAL_TOKENS:
            a, b = ours["special_tokens"][attr], theirs["special_tokens"].get(attr)
            if a != b and not (attr == "pad_token" and (a is None or b is None)):
                problems.append(f"{attr} differs ({a!r} vs {b!r})")
        if problems:
            raise ModelLoadError(
                f"tokenizer mismatch between student {student_name!r} and {self.url!r} ({self.info.get('model')}): "
                + "; ".join(problems)
                + ". On-policy distillation scores the student's own tokens, so both models must "
                "share one tokenizer; pick a teacher/reference from the same model family."
            )

    def score(
        self,
        rollout: Rollout,
        *,
        rank: bool = False,
        topk: int = 0,
        full: bool = False,
        gather: Tensor | None = None,
        chunk_tokens: int = 0,
    ) -> dict[str, Tensor]:
        """:func:`score_tokens` on the server, in requests of at most ``max_rows`` rows."""
        if full and self.info["vocab_size"] > FULL_VOCAB_LIMIT:
            raise ModelLoadError(
                f"the {self.role} at {self.url} has a {self.info['vocab_size']}-token vocabulary; full per-state "
                f"distributions are sent over the wire only up to {FULL_VOCAB_LIMIT} tokens. Use estimator='topk' or "
                "'sampled' with a remote teacher, or load the model in-process"
            )
        device = rollout.prompt_ids.device
        per_row = rollout.completion_mask.bool().sum(1).tolist()  # valid states per row
        parts: list[dict[str, Tensor]] = []
        start_state = 0
        for lo in range(0, len(rollout), self.max_rows):
            rows = range(lo, min(lo + self.max_rows, len(rollout)))
            sub = rollout if len(rows) == len(rollout) else rollout.select(list(rows))
            n_states = sum(per_row[i] for i in rows)
            payload = {
                "prompt_ids": sub.prompt_ids.tolist(),
                "prompt_mask": sub.prompt_mask.tolist(),
                "completion_ids": sub.completion_ids.tolist(),
                "completion_mask": sub.completion_mask.tolist(),
                "rank": rank,
                "topk": topk,
                "full": full,
                "chunk_tokens": chunk_tokens,
                "gather": None if gather is None else gather[start_state : start_state + n_states].tolist(),
            }
            start_state += n_states
            answer = self._request("/score", payload)
            parts.append({name: decode_tensor(value, device) for name, value in answer.items()})
        return {name: torch.cat([p[name] for p in parts if p[name].shape[0]] or [parts[0][name]]) for name in parts[0]}

    def token_logprobs(self, rollout: Rollout, *, chunk_tokens: int = 0) -> Tensor:
        """``(B, C)`` log-probs of the sampled tokens (as :func:`gopd_lab.scoring.token_logprobs`)."""
        return self.score(rollout, chunk_tokens=chunk_tokens)["lp"]

    def _request(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        failure, server_error = "", False
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, body = self._send(path, data)
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, DNS, TLS
                failure, server_error = f"{type(err).__name__}: {err}", False
                continue
            if status < 400:
                return json.loads(body)
            reason = _error_reason(body, status)
            if status < 500:
                raise TeacherServerError(
                    f"the {self.role} server at {self.url}{path} rejected the request (HTTP {status}): {reason}"
                )
            failure, server_error = f"HTTP {status}: {reason}", True
        tries = f"{self.retries} tr{'y' if self.retries == 1 else 'ies'}"
        if server_error:
            raise TeacherServerError(f"the {self.role} server at {self.url}{path} failed on {tries}: {failure}")
        host = self._parts.hostname if self._parts.hostname in ("127.0.0.1", "localhost") else "0.0.0.0"
        raise TeacherUnreachable(
            f"the {self.role} server at {self.url} is unreachable ({failure}; {tries}, connect timeout "
            f"{self.connect_timeout:g}s, answer timeout {self.timeout:g}s). Start it on the machine that holds the "
            f"{self.role}: `python -m gopd_lab.teacher_server --model <{self.role} checkpoint> --host {host} --port "
            f"{self._parts.port or (443 if self._parts.scheme == 'https' else 80)}`, or fix the URL"
        )

    def _send(self, path: str, data: bytes | None) -> tuple[int, bytes]:
        """One HTTP exchange → ``(status, body)``; connecting and answering have their own timeouts."""
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._parts.hostname, self._parts.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.settimeout(self.timeout)
            conn.request(
                "GET" if data is None else "POST",
                self._parts.path.rstrip("/") + path,
                body=data,
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def _error_reason(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"])
    except Exception:  # noqa: BLE001 - any unreadable body falls back to the status
        return http.client.responses.get(status, str(status))


# ---------------------------------------------------------------------------------------------- server
class TeacherService:
    """A frozen model and its tokenizer behind ``/info`` and ``/score``; one scoring pass at a time."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str = "", max_rows: int = 4096):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.name, self.max_rows = tokenizer, name, max_rows
        self.device = next(self.model.parameters()).device
        self.vocab_size = (
            int(self.model.get_output_embeddings().weight.shape[0])
            if hasattr(self.model, "get_output_embeddings")
            else int(self.model.config.vocab_size)
        )
        self.lock = threading.Lock()
        self.info = {
            "protocol": PROTOCOL,
            "model": name,
            "vocab_size": self.vocab_size,
            "tokenizer": tokenizer_info(tokenizer),
            "max_rows": max_rows,
        }

    def score(self, req: dict) -> dict:
        rollout, want = self._parse(req)
        with self.lock:
            out = score_tokens(self.model, rollout, **want)
        return {name: encode_tensor(value) for name, value in out.items()}

    def _parse(self, req: dict) -> tuple[Rollout, dict]:
        return parse_score_request(
            req,
            vocab_size=self.vocab_size,
            max_rows=self.max_rows,
            max_context=max_context(self.model),
            full_vocab_limit=FULL_VOCAB_LIMIT,
            device=self.device,
        )


class _Handler(BaseHTTPRequestHandler):
    server_version = "gopd-lab-teacher/1"
    disable_nagle_algorithm = (
        True  # headers and body are two writes: without this, delayed ACK stalls each answer ~40 ms
    )
    service: TeacherService
    verbose = False
    timeout = 60.0
    """Seconds a connection may stall (reading a request or its body) before it is dropped."""
    max_body = 256 << 20
    """Largest request body in bytes (HTTP 413 above it)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") == "/info":
            self._send(200, self.service.info)
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": f"no such path {self.path}; use GET /info or POST /score"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no such path {self.path}; use POST /score"})
            return
        try:
            body = self._body()
            if body is None:
                return
            req = json.loads(body)
            if not isinstance(req, dict):
                raise BadRequest("the body must be a JSON object")
            self._send(200, self.service.score(req))
        except (BadRequest, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            self._send(400, {"error": f"malformed request: {err}"})
        except TimeoutError:  # the client stalled mid-body: drop the connection, free the thread
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - reported to the client, which retries and then raises
            if self.verbose:
                traceback.print_exc()
            self._send(500, {"error": f"{type(err).__name__}: {err}"})

    def _body(self) -> bytes | None:
        """The request body, or None after answering 400 / 413 for a missing, bad or too large length."""
        text = self.headers.get("Content-Length")
        length = int(text) if text is not None and text.strip().isdigit() else -1
        if length < 0 or length > self.max_body:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            if length < 0:
                self._send(400, {"error": f"Content-Length must be a non-negative integer, got {text!r}"})
            else:
                self._send(413, {"error": f"body of {length} bytes; this server takes at most {self.max_body}"})
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            self._send(400, {"error": f"body ended after {len(body)} of {length} bytes"})
            return None
        return body

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        if self.verbose:
            super().log_message(fmt, *args)


def make_server(
    service: TeacherService, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
) -> ThreadingHTTPServer:
    """A threading HTTP server for ``service`` (``port=0`` picks a free port; the URL is ``server.url``)."""
    handler = type("Handler", (_Handler,), {"service": service, "verbose": verbose})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.url = f"http://{host}:{server.server_address[1]}"
    return server


def serve_in_thread(
    model: nn.Module, tokenizer, *, name: str = "", host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """Start a server on a background thread (tests, notebooks); stop it with ``server.shutdown()``."""
    server = make_server(TeacherService(model, tokenizer, name=name), host, port)
    threading.Thread(target=server.serve_forever, name=f"teacher-server-{server.url}", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gopd_lab.teacher_server", description="Serve a teacher/reference's token log-probs over HTTP."
    )
    parser.add_argument("--model", required=True, help="hub id, local checkpoint directory or zoo:<name>")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    from .models import load_model, load_tokenizer, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(
        args.model,
        role="teacher",
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        trust_remote_code=args.trust_remote_code,
    )
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    server = make_server(TeacherService(model, tokenizer, name=args.model), args.host, args.port, verbose=args.verbose)
    print(f"serving {args.model} on {server.url} (device {device}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
