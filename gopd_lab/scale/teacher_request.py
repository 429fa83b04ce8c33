"""Validation of a teacher server's ``POST /score`` request: every field checked, each fault a 400 that names it.

A malformed request is the client's fault and is not retried, so nothing the client sends may surface as a
500 (which the client retries). Checked here: known fields only; ids and masks rectangular 2-D integer lists
with matching shapes; masks of 0/1; ids in the vocabulary; ``rank``/``full`` JSON booleans; ``topk`` and
``chunk_tokens`` non-negative integers; ``gather`` ``(N, k)`` integer ids over the ``N`` valid completion
positions; at most ``max_rows`` rows; prompt + completion within the model's context length; ``full`` only for
vocabularies small enough to send. :func:`precheck_body` reads the row count and the row length off the raw body
before it is decoded.
"""

from __future__ import annotations

import numpy as np
import torch

from gopd_lab.lm.models import DEFAULT_DOMAIN
from gopd_lab.lm.rollout import Rollout

FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "rank", "topk", "full", "gather")
OPTIONAL = ("chunk_tokens",)


class BadRequest(ValueError):
    """A request the server cannot score (answered with HTTP 400)."""


def _int_matrix(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise BadRequest(f"{name} must be a rectangular list of lists of ints ({err})") from None
    if arr.ndim != 2 or (arr.size and arr.dtype.kind not in "iu"):
        raise BadRequest(f"{name} must be a rectangular 2-D list of ints, got shape {arr.shape} of {arr.dtype}")
    return arr.astype(np.int64) if arr.size else np.zeros(arr.shape, dtype=np.int64)


def _flag(req: dict, name: str) -> bool:
    value = req.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value


def _count(req: dict, name: str, upper: int | None = None) -> int:
    value = req.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be an integer >= 0, got {value!r}")
    if upper is not None and value > upper:
        raise BadRequest(f"{name} must be <= {upper} (the vocabulary size), got {value}")
    return value


def precheck_body(body: bytes, *, max_rows: int, max_context: int | None) -> None:
    """Row count and row length read off the raw bytes, before the JSON is decoded (decoding a 160 MB body of
    ints costs about 0.9 GB): :class:`BadRequest` for more than ``max_rows`` rows in ``prompt_ids`` /
    ``completion_ids`` or a first row whose prompt + completion is longer than ``max_context``. It reads the
    layout ``json.dumps`` writes (``"prompt_ids": [[1, 2], [3, 4]]``); a body laid out otherwise is left to the
    full check of :func:`parse_score_request` after decoding."""
    widths = []
    for key in (b'"prompt_ids"', b'"completion_ids"'):
        at = body.find(key)
        start = body.find(b"[", at + len(key)) if at >= 0 else -1
        if start < 0 or body[at + len(key) : start].strip() != b":":
            return
        inner = start + 1
        while inner < len(body) and body[inner : inner + 1] in b" \n\r\t":
            inner += 1
        if body[inner : inner + 1] == b"]":  # an empty matrix
            widths.append(0)
            continue
        end = body.find(b"]]", inner)
        if body[inner : inner + 1] != b"[" or end < 0:
            return
        rows = body.count(b"[", inner, end + 1)  # the inner lists hold numbers only
        if rows > max_rows:
            raise BadRequest(f"{rows} rows in one request; this server takes at most {max_rows} (lower max_rows)")
        first_end = body.find(b"]", inner)
        first = body[inner + 1 : first_end]
        widths.append(first.count(b",") + 1 if first.strip() else 0)
    if max_context is not None and sum(widths) > max_context:
        raise BadRequest(
            f"prompt + completion is {sum(widths)} positions; the model's context is {max_context} (shorten them)"
        )


def parse_score_request(
    req: dict,
    *,
    vocab_size: int,
    max_rows: int,
    max_context: int | None,
    full_vocab_limit: int,
    device: torch.device,
) -> tuple[Rollout, dict]:
    """``(rollout, options for score_tokens)`` of a ``/score`` body, or :class:`BadRequest`."""
    if not isinstance(req, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(req) - set(FIELDS) - set(OPTIONAL))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; a /score request has {list(FIELDS + OPTIONAL)}")
    missing = [k for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask") if k not in req]
    if missing:
        raise BadRequest(f"missing field {missing[0]!r}")
    a = {k: _int_matrix(k, req[k]) for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    b = a["prompt_ids"].shape[0]
    if (
        a["prompt_ids"].shape != a["prompt_mask"].shape
        or a["completion_ids"].shape != a["completion_mask"].shape
        or a["completion_ids"].shape[0] != b
    ):
        raise BadRequest("prompt_ids/prompt_mask must be (B, P) and completion_ids/completion_mask (B, C)")
    if b > max_rows:
        raise BadRequest(f"{b} rows in one request; this server takes at most {max_rows} (lower max_rows)")
    for k in ("prompt_mask", "completion_mask"):
        if a[k].size and not np.isin(a[k], (0, 1)).all():
            raise BadRequest(f"{k} must hold only 0 and 1")
    for k in ("prompt_ids", "completion_ids"):
        if a[k].size and (a[k].min() < 0 or a[k].max() >= vocab_size):
            raise BadRequest(f"token ids must be in [0, {vocab_size}) ({k})")
    length = a["prompt_ids"].shape[1] + a["completion_ids"].shape[1]
    if max_context is not None and length > max_context:
        raise BadRequest(
            f"prompt + completion is {length} positions; the model's context is {max_context} (shorten them)"
        )
    rank, full = _flag(req, "rank"), _flag(req, "full")
    topk = _count(req, "topk", upper=vocab_size)
    chunk_tokens = _count(req, "chunk_tokens")
    if full and vocab_size > full_vocab_limit:
        raise BadRequest(f"full distributions are sent only for vocabularies up to {full_vocab_limit} tokens")
    n_states = int(a["completion_mask"].sum())
    gather = req.get("gather")
    if gather is not None:
        g = _int_matrix("gather", gather) if n_states or gather else np.zeros((0, 0), dtype=np.int64)
        if g.shape[0] != n_states:
            raise BadRequest(f"gather must have one row per valid completion position ({n_states}), got {g.shape[0]}")
        if g.size and (g.min() < 0 or g.max() >= vocab_size):
            raise BadRequest(f"gather ids must be in [0, {vocab_size})")
        gather = torch.from_numpy(g).to(device)
    t = {k: torch.from_numpy(v).to(device) for k, v in a.items()}
    rollout = Rollout(
        t["prompt_ids"],
        t["prompt_mask"],
        t["completion_ids"],
        t["completion_mask"],
        [""] * b,
        [""] * b,
        [DEFAULT_DOMAIN] * b,
    )
    return rollout, dict(rank=rank, topk=topk, full=full, gather=gather, chunk_tokens=chunk_tokens)
