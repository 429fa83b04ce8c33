"""The teacher (or a reference) as a server: log-probs of the student's tokens over HTTP.

The scoring model runs in its own process, on this machine or another, so its weights never sit in the
training process. The training side holds a :class:`RemoteScorer` (what :func:`~gopd_lab.loop.load.load_models`
builds for a ``http://`` / ``https://`` spec) and :mod:`gopd_lab.scorers.score` calls it where it would run a model::

    python -m gopd_lab.scale.teacher_server --model zoo:teacher-add --port 8765       # the teacher's machine
    RunConfig(teacher="http://127.0.0.1:8765", ...)                              # the training process

The server computes exactly what ``score._score_pair`` computes for one model, with the same
:mod:`gopd_lab.lm.logprobs` functions (decoder once, LM head only at valid completion positions, chunked,
float32), so the numbers agree with in-process scoring to float rounding.

Protocol (JSON over HTTP; one request carries at most ``max_rows`` rows):

- ``GET /info`` → ``{"protocol", "model", "vocab_size", "tokenizer": {"vocab_hash", "size", "special_tokens"}}``.
- ``POST /score`` ← ``prompt_ids``/``prompt_mask`` ``(B, P)`` and ``completion_ids``/``completion_mask``
  ``(B, C)`` as lists, ``rank`` (bool), ``topk`` (k, 0 = none), ``full`` (bool), ``gather`` (``(N, k)`` token
  ids to read each state's log-probs at, or null), ``chunk_tokens``.
  → ``lp`` and ``rank`` ``(B, C)``; ``topk_index``/``topk_logp``, ``full`` ``(N, V)`` and ``gather`` ``(N, k)``
  over the ``N`` valid completion positions in :class:`~gopd_lab.lm.logprobs.Positions` order. Tensors in the
  answer are ``{"dtype", "shape", "data"}`` with the raw little-endian bytes in base64 (exact float32).
- Errors: 400 for a malformed request (not retried), 500 for a failure while scoring (retried).

The client splits large batches into requests of at most ``max_rows`` rows, retries connection failures,
timeouts and 5xx answers with exponential backoff within a deadline (60 s per request by default, a warning
on each retry), and raises :class:`TeacherUnreachable` naming the URL and the command to start when no server
answers. Options ride on the URL's query string:
``http://host:8765?connect_timeout=5&timeout=60&retries=5&deadline=300&max_rows=8``.
A body's row count and row length are read off its raw bytes before it is decoded
(:func:`~gopd_lab.scale.teacher_request.precheck_body`); output rows beyond the tokenizer (a padded vocabulary)
are masked as the local path masks them.

The server has no authentication: it listens on 127.0.0.1 by default; give ``--host 0.0.0.0`` only on a
private network (or put it behind a proxy that authenticates).
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn

from gopd_lab.lm.logprobs import max_context
from gopd_lab.lm.rollout import Rollout
from gopd_lab.lm.vocab import VocabAlignment, tokenizer_info, vocab_hash
from gopd_lab.scale.teacher_request import BadRequest, parse_score_request, precheck_body
from gopd_lab.scorers.remote import (
    FULL_VOCAB_LIMIT,
    PROTOCOL,
    RemoteScorer,
    TeacherServerError,
    TeacherUnreachable,
    decode_tensor,
    encode_tensor,
    is_url,
)
from gopd_lab.scorers.scorer import score_tokens

__all__ = [
    "FULL_VOCAB_LIMIT",
    "PROTOCOL",
    "RemoteScorer",
    "TeacherServerError",
    "TeacherUnreachable",
    "decode_tensor",
    "encode_tensor",
    "is_url",
    "score_tokens",
    "tokenizer_info",
    "vocab_hash",
    "TeacherService",
    "main",
    "make_server",
    "serve_in_thread",
]


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
        self.padded = _mask_padded_rows(self.model, tokenizer, self.vocab_size)
        self.lock = threading.Lock()
        self.info = {
            "protocol": PROTOCOL,
            "model": name,
            "vocab_size": self.vocab_size,
            "tokenizer": tokenizer_info(tokenizer),
            "max_rows": max_rows,
            "padded_rows": self.padded,
        }

    def score(self, req: dict) -> dict:
        rollout, want = self._parse(req)
        with self.lock:
            out = score_tokens(self.model, rollout, **want)
        return {name: encode_tensor(value) for name, value in out.items()}

    def precheck(self, body: bytes) -> None:
        """:class:`BadRequest` for too many rows or too long a row, read off the raw body before decoding it."""
        precheck_body(body, max_rows=self.max_rows, max_context=max_context(self.model))

    def _parse(self, req: dict) -> tuple[Rollout, dict]:
        return parse_score_request(
            req,
            vocab_size=self.vocab_size,
            max_rows=self.max_rows,
            max_context=max_context(self.model),
            full_vocab_limit=FULL_VOCAB_LIMIT,
            device=self.device,
        )


def _mask_padded_rows(model: nn.Module, tokenizer, width: int) -> int:
    """Mask the output rows beyond the tokenizer (a padded vocabulary: Qwen3's 151,936 rows over ~151,669 tokens)
    as the local path does (:mod:`gopd_lab.lm.vocab`): they get ``MASKED_LOGIT``, so every answer (``lp``, ``rank``,
    ``topk``, ``full``, ``gather``) is renormalised over the tokenizer's ids. Returns the number of masked rows."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or tokenizer is None or getattr(head, "gopd_aligned", False):
        return 0
    allowed = torch.zeros(width, dtype=torch.bool)
    ids = [i for i in tokenizer.get_vocab().values() if i < width]
    allowed[torch.as_tensor(ids, dtype=torch.long)] = True
    padded = width - int(allowed.sum())
    if padded:
        alignment = VocabAlignment(width, allowed.to(head.weight.device))
        head.register_forward_hook(lambda _m, _i, out: alignment.align(out))
        head.gopd_aligned = True
        head.gopd_allowed = alignment.allowed
    return padded


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
            self.service.precheck(body)  # rows and row length off the raw bytes: refused before decoding
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


def _port_error(parser: argparse.ArgumentParser, host: str, port: int, err: OSError) -> None:
    """Exit with status 2 and one line naming the address and the fix."""
    if err.errno == errno.EADDRINUSE:
        parser.exit(
            2,
            f"{parser.prog}: error: port {port} on {host} is already in use (another teacher server?); stop that "
            f"process (e.g. `lsof -i :{port}`) or give another --port\n",
        )
    parser.exit(2, f"{parser.prog}: error: cannot listen on {host}:{port}: {err.strerror or err}; check --host\n")


def _check_port(parser: argparse.ArgumentParser, host: str, port: int) -> None:
    """Bind ``host:port`` once as the server will (``SO_REUSEADDR``), so a port in use is reported before loading."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        _port_error(parser, host, port, err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gopd_lab.scale.teacher_server",
        description="Serve a teacher/reference's token log-probs over HTTP.",
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
    from gopd_lab.lm.models import load_model, load_tokenizer, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    _check_port(parser, args.host, args.port)  # before the model loads: a port in use fails at once
    device = resolve_device(args.device)
    model = load_model(
        args.model,
        role="teacher",
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        trust_remote_code=args.trust_remote_code,
    )
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    try:
        server = make_server(
            TeacherService(model, tokenizer, name=args.model), args.host, args.port, verbose=args.verbose
        )
    except OSError as err:
        _port_error(parser, args.host, args.port, err)
    print(f"serving {args.model} on {server.url} (device {device}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
