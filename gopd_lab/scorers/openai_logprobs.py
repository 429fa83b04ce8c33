"""A teacher served by vLLM: prompt log-probs from an OpenAI-compatible ``/v1/completions`` endpoint.

Users already serve teachers with vLLM (``vllm serve <teacher> --max-logprobs 20``) or TRL's ``trl vllm-serve``.
:class:`OpenAILogprobsScorer` scores a rollout there without weights on this side: each row's prompt and
completion go as one token-id prompt with ``max_tokens=1``, ``echo=true``, ``logprobs=k`` and vLLM's
``prompt_logprobs=k``; the log-prob of every completion token (and its rank, and the top ``k`` alternatives) is
read back from ``prompt_logprobs`` (ids as keys), or, from a server without that extension, from the echoed
``logprobs`` (``return_tokens_as_token_ids`` makes its keys ids too).

What it serves: the ``sampled`` estimator (the sampled token's log-prob) and ``topk`` up to the server's
``--max-logprobs`` (vLLM's default 20). Full distributions (``full``, ``jsd``) are not returned by this API: use the
built-in server (:mod:`gopd_lab.scale.teacher_server`), which sends whole per-state distributions, for those.
The tokenizer check is the package's one (:func:`~gopd_lab.lm.models.check_tokenizers`), on the tokenizer of the
served model (``tokenizer=`` in the spec, else the ``root`` the server reports in ``/v1/models``).

Spec: ``openai+http://host:8000/v1?model=<served name>&tokenizer=<path or id>&timeout=600&max_rows=16``
(:func:`openai_logprobs_teacher`, the factory a teacher-type registry calls).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import torch
from torch import Tensor

from gopd_lab.errors import ModelLoadError
from gopd_lab.lm.logprobs import Positions
from gopd_lab.lm.models import check_tokenizers
from gopd_lab.lm.rollout import Rollout

SCHEME = "openai+"


class OpenAIScorerError(ModelLoadError):
    """The served teacher cannot give what a step needs, cannot be reached, or answered with an error."""


class OpenAILogprobsScorer:
    """A teacher (or reference) behind an OpenAI-compatible completions server that returns prompt log-probs.

    ``url`` is the API root (``http://host:8000/v1``); ``model`` the served model name (default: the only one
    ``/v1/models`` lists); ``tokenizer`` where its tokenizer loads from for the check (default: that model's
    ``root``); ``max_rows`` rows per request; ``api_key`` (default ``$OPENAI_API_KEY``) is sent as a bearer token.
    """

    OPTIONS = ("model", "tokenizer", "timeout", "max_rows")

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        tokenizer: str | None = None,
        role: str = "teacher",
        timeout: float = 600.0,
        max_rows: int = 16,
        api_key: str | None = None,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OpenAIScorerError(f"{url!r} is not a server URL: give http(s)://host:port/v1")
        self.url = url.rstrip("/")
        self.role, self.timeout, self.max_rows = role, float(timeout), max(1, int(max_rows))
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._model, self._tokenizer = model, tokenizer
        self._models: list[dict] | None = None

    def __repr__(self) -> str:
        return f"OpenAILogprobsScorer({self.url!r}, model={self._model!r}, role={self.role!r})"

    # ------------------------------------------------------------------ http
    def _request(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.url + path, data=data, headers=headers, method="GET" if data is None else "POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            try:
                reason = json.loads(body).get("error", {}).get("message") or body
            except (ValueError, AttributeError):
                reason = body
            raise OpenAIScorerError(
                f"the {self.role} server at {self.url}{path} answered HTTP {err.code}: {' '.join(str(reason).split())[:500]}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            raise OpenAIScorerError(
                f"the {self.role} server at {self.url} is unreachable ({err}); start it with "
                f"`vllm serve <{self.role} checkpoint> --port {urllib.parse.urlsplit(self.url).port or 8000}` "
                "(vLLM's OpenAI-compatible server), or fix the URL"
            ) from None

    @property
    def models(self) -> list[dict]:
        """The server's ``GET /models`` entries (fetched once)."""
        if self._models is None:
            self._models = list(self._request("/models").get("data", []))
        return self._models

    @property
    def model(self) -> str:
        """The served model name requests carry (the spec's, else the server's only model)."""
        if self._model is None:
            names = [m.get("id") for m in self.models]
            if len(names) != 1:
                raise OpenAIScorerError(f"{self.url} serves {names}: name one with ?model=... in the {self.role} spec")
            self._model = names[0]
        return self._model

    # ------------------------------------------------------------------ tokenizer check
    def check_tokenizer(self, tokenizer, student_name: str) -> None:
        """Raise :class:`~gopd_lab.errors.ModelLoadError` unless the served model's tokenizer is the student's
        (:func:`~gopd_lab.lm.models.check_tokenizers`, the same check as for a local or built-in-server teacher)."""
        from transformers import AutoTokenizer

        source = self._tokenizer
        if source is None:
            entry = next((m for m in self.models if m.get("id") == self.model), {})
            source = entry.get("root") or self.model
        try:
            served = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise OpenAIScorerError(
                f"cannot load the tokenizer of the {self.role} served at {self.url} from {source!r} ({err}); "
                "give it with ?tokenizer=<path or hub id> in the spec"
            ) from None
        check_tokenizers(tokenizer, served, student_name, f"{self.url} ({self.model})")

    # ------------------------------------------------------------------ scoring
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
        """The :class:`~gopd_lab.scorers.scorer.Scorer` protocol: ``lp`` ``(B, C)``, ``rank`` ``(B, C)`` and
        ``topk_index`` / ``topk_logp`` ``(N, k)`` (Positions order) from the server's prompt log-probs."""
        if full or gather is not None:
            raise OpenAIScorerError(
                f"the {self.role} at {self.url} is an OpenAI-compatible server: it returns the sampled token's log-prob "
                "and the top-k, not whole distributions or chosen ids. Use estimator='sampled' or 'topk' with it (and "
                "no served reference with topk), or the built-in server `python -m gopd_lab.scale.teacher_server` "
                "for full / jsd"
            )
        device = rollout.prompt_ids.device
        pos = Positions.of(rollout)
        lp = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)  # (B, C)
        ranks = torch.zeros(rollout.completion_ids.shape, dtype=torch.long)  # (B, C)
        top_index: list[list[int]] = []
        top_logp: list[list[float]] = []
        rows = list(range(len(rollout)))
        for lo in range(0, len(rows), self.max_rows):
            batch = rows[lo : lo + self.max_rows]
            prompts, starts, lengths = [], [], []
            for b in batch:
                p = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()].tolist()
                c = rollout.completion_ids[b][rollout.completion_mask[b].bool()].tolist()
                prompts.append(p + c)
                starts.append(len(p))
                lengths.append(len(c))
            answer = self._request(
                "/completions",
                {
                    "model": self.model,
                    "prompt": prompts,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "echo": True,
                    "logprobs": max(topk, 1),
                    "prompt_logprobs": max(topk, 1),
                    "return_tokens_as_token_ids": True,
                },
            )
            choices = sorted(answer.get("choices", []), key=lambda ch: ch.get("index", 0))
            if len(choices) != len(batch):
                raise OpenAIScorerError(f"{self.url}/completions returned {len(choices)} choices for {len(batch)} rows")
            for b, ids, start, n, choice in zip(batch, prompts, starts, lengths, choices):
                states = _prompt_states(choice, len(ids), self.url)
                for j in range(n):
                    token = ids[start + j]
                    entries = states[start + j]
                    if token not in entries:
                        raise OpenAIScorerError(
                            f"{self.url}: no log-prob for the sampled token {token} at position {start + j} of row {b}"
                        )
                    value, rank_of = entries[token]
                    lp[b, j] = value
                    above = sum(1 for other, (v, _) in entries.items() if other != token and v > value)
                    ranks[b, j] = rank_of - 1 if rank_of is not None else above  # vLLM counts rank from 1
                    if topk:
                        best = sorted(entries.items(), key=lambda kv: -kv[1][0])[:topk]
                        if len(best) < topk:
                            raise OpenAIScorerError(
                                f"{self.url} returned {len(best)} log-probs per token, topk={topk} needs {topk}: start "
                                f"vLLM with --max-logprobs {topk} or lower topk"
                            )
                        top_index.append([i for i, _ in best])
                        top_logp.append([v for _, (v, _) in best])
        out = {"lp": lp.to(device)}
        if rank:
            out["rank"] = ranks.to(device)
        if topk:
            # collected row by row, column by column: the row-major order of Positions (mask.nonzero)
            out["topk_index"] = torch.tensor(top_index, dtype=torch.long, device=device).reshape(len(pos), topk)
            out["topk_logp"] = torch.tensor(top_logp, dtype=torch.float32, device=device).reshape(len(pos), topk)
        return out

    def token_logprobs(self, rollout: Rollout, *, chunk_tokens: int = 0) -> Tensor:
        """``(B, C)`` log-probs of the sampled tokens."""
        return self.score(rollout, chunk_tokens=chunk_tokens)["lp"]


def _token_id(key: str) -> int:
    """A log-prob key as a token id: ``"123"`` (vLLM's ``prompt_logprobs``) or ``"token_id:123"``."""
    return int(str(key).removeprefix("token_id:"))


def _prompt_states(choice: dict, length: int, url: str) -> list[dict[int, tuple[float, int | None]]]:
    """Per prompt position ``{token id: (log-prob, rank or None)}`` from a choice: vLLM's ``prompt_logprobs``
    (id keys, with ranks), else the echoed ``logprobs`` (``tokens`` as ``token_id:N``, ``token_logprobs``,
    ``top_logprobs``)."""
    states: list[dict[int, tuple[float, int | None]]] = []
    if choice.get("prompt_logprobs") is not None:
        for entry in choice["prompt_logprobs"][:length]:
            states.append({_token_id(k): (float(v["logprob"]), v.get("rank")) for k, v in (entry or {}).items()})
    elif choice.get("logprobs") is not None:
        echo = choice["logprobs"]
        tokens, values, tops = echo["tokens"], echo["token_logprobs"], echo.get("top_logprobs") or []
        for i in range(min(length, len(tokens))):
            found = {_token_id(k): (float(v), None) for k, v in (tops[i] if i < len(tops) and tops[i] else {}).items()}
            if values[i] is not None:
                found[_token_id(tokens[i])] = (float(values[i]), None)
            states.append(found)
    if len(states) < length:
        raise OpenAIScorerError(
            f"{url}/completions returned no prompt log-probs for every token ({len(states)} of {length}); the server "
            "must support echo with logprobs or vLLM's prompt_logprobs"
        )
    return states


def openai_logprobs_teacher(spec: str, *, role: str = "teacher") -> OpenAILogprobsScorer:
    """The factory for ``openai+http://host:port/v1?model=...&tokenizer=...&timeout=...&max_rows=...`` specs."""
    if not spec.startswith(SCHEME):
        raise OpenAIScorerError(f"{spec!r} is not an {SCHEME}http(s)://... teacher spec")
    parts = urllib.parse.urlsplit(spec[len(SCHEME) :])
    query = dict(urllib.parse.parse_qsl(parts.query))
    unknown = sorted(set(query) - set(OpenAILogprobsScorer.OPTIONS))
    if unknown:
        raise OpenAIScorerError(f"{spec!r}: unknown option(s) {unknown}; options: {list(OpenAILogprobsScorer.OPTIONS)}")
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    try:
        numbers = {
            k: float(query[k]) if k == "timeout" else int(query[k]) for k in ("timeout", "max_rows") if k in query
        }
    except ValueError as err:
        raise OpenAIScorerError(f"{spec!r}: {err}") from None
    return OpenAILogprobsScorer(url, model=query.get("model"), tokenizer=query.get("tokenizer"), role=role, **numbers)
