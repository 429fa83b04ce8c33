"""The client of a teacher (or reference) served over HTTP by ``python -m gopd_lab.teacher_server``
(:mod:`gopd_lab.scale.teacher_server`): :class:`RemoteScorer`, the wire format of tensors, and
:func:`score_tokens`, the one scoring pass of a single model that the server runs and that the client's
in-process counterpart runs for a local model. Protocol and options: :mod:`gopd_lab.scale.teacher_server`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import time
import urllib.parse

import numpy as np
import torch
from torch import Tensor, nn

from gopd_lab.lm.logprobs import Positions, _vocab_size, chunk_rows, completion_features, scoring_view
from gopd_lab.lm.models import ModelLoadError
from gopd_lab.lm.rollout import Rollout
from gopd_lab.objectives import MIXED_TARGET, TEACHER_DISTRIBUTION, TEACHER_TOPK, get_estimator, target_logprobs

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
    given ids; per-state tensors follow :class:`~gopd_lab.lm.logprobs.Positions` order.
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
    needs = get_estimator(estimator).needs
    want_full = needs in (MIXED_TARGET, TEACHER_DISTRIBUTION)
    k = topk if needs == TEACHER_TOPK else 0
    t = _ask(teacher, teacher_rollout, rank=True, topk=k, full=want_full, chunk_tokens=chunk_tokens)
    out = {"lp_teacher": t["lp"], "rank": t["rank"]}
    r = None
    if reference is not None:
        r = _ask(
            reference,
            rollout,
            full=needs == MIXED_TARGET,
            gather=t["topk_index"] if k else None,
            chunk_tokens=chunk_tokens,
        )
        out["lp_reference"] = r["lp"]
    if needs == MIXED_TARGET:
        lam_n = lam[Positions.of(rollout).b][:, None]  # (N, 1)
        out["target"] = target_logprobs(t["full"], None if r is None else r["full"], lam_n)
    elif needs == TEACHER_DISTRIBUTION:
        out["target"] = t["full"]
    elif needs == TEACHER_TOPK:
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
    """A teacher or reference served by ``python -m gopd_lab.scale.teacher_server``: scores tokens, holds no weights.

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
        """Raise :class:`~gopd_lab.lm.models.ModelLoadError` (as ``models.check_tokenizers`` does) unless the
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
        """``(B, C)`` log-probs of the sampled tokens (as :func:`gopd_lab.lm.logprobs.token_logprobs`)."""
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
            f"{self.role}: `python -m gopd_lab.scale.teacher_server --model <{self.role} checkpoint> --host {host} --port "
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
