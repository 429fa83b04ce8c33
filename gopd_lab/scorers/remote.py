"""The client of a teacher (or reference) served over HTTP by ``python -m gopd_lab.teacher_server``
(:mod:`gopd_lab.scale.teacher_server`): :class:`RemoteScorer`, the wire format of tensors, and
:func:`score_tokens`, the one scoring pass of a single model that the server runs and that the client's
in-process counterpart runs for a local model. Protocol and options: :mod:`gopd_lab.scale.teacher_server`.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import time
import urllib.parse

import numpy as np
import torch
from torch import Tensor

from gopd_lab.lm.logprobs import MASKED_LOGIT
from gopd_lab.lm.models import ModelLoadError, check_tokenizers
from gopd_lab.lm.rollout import Rollout

log = logging.getLogger(__name__)

PROTOCOL = 1
FULL_VOCAB_LIMIT = 8192
"""Largest vocabulary for which full per-state distributions are sent over the wire (``full``/``jsd``)."""


class TeacherUnreachable(ModelLoadError):
    """No scoring server answers at the URL; the message names it and the command that starts one."""


class TeacherServerError(RuntimeError):
    """The scoring server answered with an error (after retries for 5xx); the message carries its reason."""


def is_url(spec: object) -> bool:
    """A model spec that names a scoring server rather than weights."""
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


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


# ---------------------------------------------------------------------------------------------- client
class RemoteScorer:
    """A teacher or reference served by ``python -m gopd_lab.scale.teacher_server``: scores tokens, holds no weights.

    ``connect_timeout`` / ``timeout`` (seconds to connect / to wait for an answer), ``retries`` (tries per
    request, exponential backoff from ``backoff`` seconds), ``deadline`` (seconds one request may take over all
    its tries) and ``max_rows`` (rows per request) can also be given in the URL's query string. With the defaults
    a server that stopped answering (stalled, SIGSTOP'd, dead) is an error within ``deadline`` = 60 s, with a
    warning on each retry; a teacher that needs longer per request (a large model on long rows) raises
    ``timeout`` and ``deadline`` in the URL (``?timeout=300&deadline=900``). Connections are direct (no proxy).
    """

    OPTIONS = ("connect_timeout", "timeout", "retries", "backoff", "deadline", "max_rows")

    def __init__(
        self,
        url: str,
        *,
        role: str = "teacher",
        connect_timeout: float = 10.0,
        timeout: float = 20.0,
        retries: int = 3,
        backoff: float = 0.5,
        deadline: float = 60.0,
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
        try:
            self.connect_timeout = _positive(query, "connect_timeout", connect_timeout)
            self.timeout = _positive(query, "timeout", timeout)
            self.retries = int(_positive(query, "retries", retries, integer=True))
            self.backoff = _positive(query, "backoff", backoff, zero=True)
            self.deadline = _positive(query, "deadline", deadline)
            self.max_rows = int(_positive(query, "max_rows", max_rows, integer=True))
        except ValueError as err:
            raise ModelLoadError(f"{url!r}: {err}") from None
        self._info: dict | None = None
        self.width: int | None = None
        """The student's output width (set by ``load_models``): per-state answers (``full``) are brought onto it,
        as the local path's :class:`~gopd_lab.lm.vocab.VocabAlignment` brings a local teacher's logits."""

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
        """Raise :class:`~gopd_lab.lm.models.ModelLoadError` unless the server's tokenizer is the student's
        (:func:`~gopd_lab.lm.models.check_tokenizers` on the server's ``/info``)."""
        check_tokenizers(tokenizer, self.info["tokenizer"], student_name, self.url, served_model=self.info.get("model"))

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
        out = {name: torch.cat([p[name] for p in parts if p[name].shape[0]] or [parts[0][name]]) for name in parts[0]}
        if "full" in out and self.width is not None:
            out["full"] = fit_width(out["full"], self.width)
        return out

    def token_logprobs(self, rollout: Rollout, *, chunk_tokens: int = 0) -> Tensor:
        """``(B, C)`` log-probs of the sampled tokens (as :func:`gopd_lab.lm.logprobs.token_logprobs`)."""
        return self.score(rollout, chunk_tokens=chunk_tokens)["lp"]

    def _request(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        failure, server_error = "", False
        end = time.monotonic() + self.deadline
        tried = 0
        for attempt in range(self.retries):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                if time.monotonic() + wait >= end:
                    break
                log.warning(
                    "the %s server at %s%s: %s (try %d of %d); retrying in %.1f s, giving up %.0f s from the first try",
                    self.role, self.url, path, failure, attempt, self.retries, wait, self.deadline,
                )  # fmt: skip
                time.sleep(wait)
            left = end - time.monotonic()
            if left <= 0:
                break
            tried += 1
            try:
                status, body = self._send(path, data, min(self.timeout, left))
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, DNS, TLS
                failure, server_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, False
                if isinstance(err, TimeoutError):
                    failure = f"timed out: no answer within {min(self.timeout, left):.3g} s"
                continue
            if status < 400:
                return json.loads(body)
            reason = _error_reason(body, status)
            if status < 500:
                raise TeacherServerError(
                    f"the {self.role} server at {self.url}{path} rejected the request (HTTP {status}): {reason}"
                )
            failure, server_error = f"HTTP {status}: {reason}", True
        tries = f"{tried} tr{'y' if tried == 1 else 'ies'}"
        if server_error:
            raise TeacherServerError(f"the {self.role} server at {self.url}{path} failed on {tries}: {failure}")
        host = self._parts.hostname if self._parts.hostname in ("127.0.0.1", "localhost") else "0.0.0.0"
        raise TeacherUnreachable(
            f"the {self.role} server at {self.url} is unreachable or not answering ({failure}; {tries} in "
            f"{self.deadline:g} s: connect timeout {self.connect_timeout:g} s, answer timeout {self.timeout:g} s). "
            f"If it is stopped or overloaded, restart it; if it is slow, raise the limits in the URL "
            f"(?timeout=300&deadline=900); if none runs, start it on the machine that holds the {self.role}: "
            f"`python -m gopd_lab.scale.teacher_server --model <{self.role} checkpoint> --host {host} --port "
            f"{self._parts.port or (443 if self._parts.scheme == 'https' else 80)}`, or fix the URL"
        )

    def _send(self, path: str, data: bytes | None, timeout: float | None = None) -> tuple[int, bytes]:
        """One HTTP exchange → ``(status, body)``; connecting and answering have their own timeouts (``timeout``:
        seconds without a byte of the answer, default :attr:`timeout`)."""
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._parts.hostname, self._parts.port, timeout=min(self.connect_timeout, timeout or 1e9))
        try:
            conn.connect()
            conn.sock.settimeout(self.timeout if timeout is None else timeout)
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


def fit_width(logp: Tensor, width: int) -> Tensor:
    """``(N, V)`` log-probs of a served model → ``(N, width)`` on the student's ids. The server masked its rows
    beyond the tokenizer (shared with the student), so the rows cut off carry no mass, and added rows get
    :data:`~gopd_lab.lm.logprobs.MASKED_LOGIT` (no mass): the distribution stays normalised."""
    v = logp.shape[-1]
    if v > width:
        return logp[..., :width]
    if v < width:
        return torch.nn.functional.pad(logp, (0, width - v), value=MASKED_LOGIT)
    return logp


def _positive(query: dict, name: str, default: float, *, integer: bool = False, zero: bool = False) -> float:
    """An option of the URL's query string (or its default), a finite number > 0 (>= 0 with ``zero``)."""
    text = query.get(name, default)
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise ValueError(f"option {name} must be {'an integer' if integer else 'a number'}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"option {name} must be {'>= 0' if zero else '> 0'}, got {text!r}")
    return value


def _error_reason(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"])
    except Exception:  # noqa: BLE001 - any unreadable body falls back to the status
        return http.client.responses.get(status, str(status))
