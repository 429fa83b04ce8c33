"""Load the student, the teacher(s) and the reference(s) with their tokenizer; freeze; place; check.

The three roles are always ``student``, ``teacher``, ``reference``. Teachers and references are frozen
and in ``eval()`` mode; scoring runs them under ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from gopd_lab.config import ConfigError
from gopd_lab.errors import ModelLoadError

DEFAULT_DOMAIN = "default"
__all__ = ["DEFAULT_DOMAIN", "Models", "ModelLoadError", "load_model", "load_tokenizer"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def freeze(model: nn.Module) -> nn.Module:
    """Put a scoring model in eval mode with no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class AdapterDisabled(nn.Module):
    """The base model under a peft LoRA student, adapters switched off: the student's initial weights
    without a second copy in memory. Used as the reference when ``reference="student"`` and LoRA is on."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self._peft = [peft_model]  # a list, so the student is not registered as a submodule twice

    @property
    def config(self):
        return self._peft[0].config

    def forward(self, *args, **kwargs):
        with self.scoring() as model:
            return model(*args, **kwargs)

    @contextlib.contextmanager
    def scoring(self) -> Iterator[nn.Module]:
        """The base model with adapters off and in eval mode (a reference never runs dropout, even while the
        student trains); each submodule's train/eval mode is restored afterwards."""
        model = self._peft[0]
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with model.disable_adapter():
                yield model
        finally:
            for m, training in modes:
                m.training = training


@dataclass
class Models:
    """Everything the loop runs: the student, its tokenizer, teachers and references by domain.

    ``teachers`` / ``references`` map a domain to a model; the key ``"default"`` serves every domain that
    has no entry of its own. ``references`` is empty when no λ differs from 1.
    """

    student: nn.Module
    tokenizer: object | None
    teachers: dict[str, nn.Module]
    references: dict[str, nn.Module] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    vocab: object | None = None
    """The shared-vocabulary alignment (:class:`~gopd_lab.lm.vocab.VocabAlignment`) when the models' vocabularies or
    output widths differ; None when they agree exactly."""
    autocast_dtype: torch.dtype | None = None
    """Mixed precision: the dtype the float32 student computes in under ``torch.autocast`` (None = off)."""

    def teacher_for(self, domain: str) -> nn.Module:
        return _route(self.teachers, domain, "teacher")

    def reference_for(self, domain: str) -> nn.Module:
        return _route(self.references, domain, "reference")

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok is None:
            return 0
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad if pad is not None else 0)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.tokenizer is None else self.tokenizer.eos_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """The ids a sampled completion ends at, for both rollout backends: the tokenizer's EOS plus the student's
        ``generation_config.eos_token_id`` (one id or a list, e.g. ``<|im_end|>`` and ``<|endoftext|>`` for Qwen
        chat models), which vLLM adds to its stop ids on its own."""
        ids = [] if self.eos_token_id is None else [int(self.eos_token_id)]
        gen = getattr(self.student, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
        return ids + [int(t) for t in extra if int(t) not in ids]


def _route(table: dict[str, nn.Module], domain: str, role: str) -> nn.Module:
    if domain in table:
        return table[domain]
    if DEFAULT_DOMAIN in table:
        return table[DEFAULT_DOMAIN]
    raise ConfigError(f"no {role} for domain {domain!r}; configured domains: {sorted(table)} (add one or a 'default')")


def _is_hub_id(path: str) -> bool:
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return path.count("/") <= 1
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _check_exists(path: str, role: str) -> None:
    """A local-looking path that does not exist is a user error worth naming (hub ids pass through)."""
    looks_local = (
        path.startswith((".", "/", "~"))
        or path.endswith("/")
        or Path(path).expanduser().exists()
        or path.count("/") > 1
        or not _is_hub_id(path)
    )
    if looks_local and not Path(path).expanduser().is_dir():
        raise ModelLoadError(
            f"{role} model path {path!r} does not exist or is not a directory; "
            "give a local checkpoint directory or a Hugging Face hub id"
        )


def load_model(
    path: str, *, role: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with safe defaults (safetensors, no remote code)."""
    from transformers import AutoModelForCausalLM

    from gopd_lab.world.zoo import resolve

    path = resolve(path)
    _check_exists(path, role)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelLoadError(f"could not load the {role} model from {path!r}: {_weights_problem(path, err)}") from err
    return model.to(device)


def _weights_problem(path: str, err: Exception) -> str:
    """The library's message, with the weight file named when one in ``path`` is damaged (e.g. truncated)."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):  # reads the header, checks it covers the file
                pass
        except (OSError, SafetensorError) as bad:
            return f"the weight file {file} is damaged or truncated ({bad}); copy or rebuild it"
    return str(err)


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from gopd_lab.world.zoo import resolve

    path = resolve(path)
    _check_exists(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {path!r}: {err}") from err
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer at {path!r} has neither a pad nor an eos token; add one")
        tok.pad_token = tok.eos_token
    return tok


def check_tokenizers(student_tok, other_tok, student_name: str, other_name: str, *, served_model: str | None = None):
    """Two models can be distilled token by token when every id both tokenizers know means the same token and
    their special tokens agree. Returns the :class:`~gopd_lab.lm.vocab.Agreement` (ids on one side only), which
    :func:`~gopd_lab.lm.vocab.align_vocabularies` masks out; raises naming the first conflicting id.

    ``other_tok`` is a tokenizer, or what a teacher server says of its own
    (:func:`~gopd_lab.lm.vocab.tokenizer_info`: the vocabulary's sha256, size and special tokens; ``served_model``
    is the served model's name): a served vocabulary is known only by its hash, so it must equal the student's.
    The one tokenizer check of the package (local teachers / references and ``RemoteScorer.check_tokenizer``)."""
    from gopd_lab.lm.vocab import SPECIAL_TOKEN_ATTRS, VocabConflict, compare_vocabularies, tokenizer_info

    problems = []
    agreement = None
    served = isinstance(other_tok, dict)
    if served:
        ours = tokenizer_info(student_tok)
        if other_tok["vocab_hash"] != ours["vocab_hash"]:
            problems.append(f"vocabularies differ ({ours['size']} vs {other_tok['size']} tokens)")
        specials = other_tok["special_tokens"]
    else:
        try:
            agreement = compare_vocabularies(student_tok.get_vocab(), other_tok.get_vocab(), repr(other_name))
        except VocabConflict as err:
            problems.append(str(err))
        specials = {attr: getattr(other_tok, attr) for attr in SPECIAL_TOKEN_ATTRS}
    for attr in SPECIAL_TOKEN_ATTRS:
        a, b = getattr(student_tok, attr), specials.get(attr)
        if a != b and not (attr == "pad_token" and (a is None or b is None)):
            problems.append(f"{attr} differs ({a!r} vs {b!r})")
    if problems:
        other = f"{other_name!r} ({served_model})" if served else repr(other_name)
        rule = (
            "own tokens, so both models must share one tokenizer"
            if served
            else "own token ids, so every id both tokenizers know must mean the same token (a teacher may add tokens)"
        )
        raise ModelLoadError(
            f"tokenizer mismatch between student {student_name!r} and {other}: "
            + "; ".join(problems)
            + f". On-policy distillation scores the student's {rule}; pick a teacher/reference from the same model "
            "family."
        )
    return agreement
