"""The GPU presets' model pairs with their real shapes and random weights, built offline (no download, no token).

Each preset (``configs/gpu-*.yaml``) states its student's and teacher's dimensions (``student dims:`` /
``teacher dims:``, read by :class:`gopd_lab.scale.gpu_memory.Dims`). :func:`write_pair` writes, for each of the two, a
directory with a ``config.json`` of those dimensions (Qwen2 or Qwen3, by the preset's model names) and a stand-in of
the Qwen tokenizer: 151,665 tokens (the printable ASCII characters one token each, Qwen's chat special tokens, and
filler tokens up to the real size) with Qwen's chat template, so the output layers' 151,936 (152,064) rows are
padded past the tokenizer as in the real checkpoints and the vocabulary alignment masks the same 271 (399) rows.
:func:`random_load_model` stands in for :func:`gopd_lab.lm.models.load_model` on such a directory: the model from
its config with random weights, made on the device in the run's dtype (no weight file is read or written).
"""

from __future__ import annotations

import re
import string
from dataclasses import replace
from pathlib import Path

import torch

from gopd_lab.scale.gpu_memory import Dims

QWEN_TOKENS = 151_665
"""Tokens of the Qwen2.5 / Qwen3 tokenizers (151,643 regular + 22 special)."""
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY = dict(L=2, H=64, inter=128, heads=2, kv=1, hd=32)
"""The dry run's shape (CPU): every dimension but the vocabulary's rows shrunk."""


def qwen_like_tokenizer(size: int = QWEN_TOKENS):
    """A fast tokenizer of ``size`` tokens: Qwen's special tokens, one token per printable character, fillers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(string.printable)
    vocab = {t: i for i, t in enumerate([*SPECIAL, *chars])}
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL[1:2]),
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def preset_dims(path: str | Path) -> tuple[Dims, Dims, int]:
    """``(student, teacher, prompt tokens)`` as the preset's comments state them."""
    text = Path(path).read_text()
    student = Dims.parse(re.search(r"student dims: (.*)", text).group(1))
    teacher = Dims.parse(re.search(r"teacher dims: (.*)", text).group(1))
    return student, teacher, int(re.search(r"prompt tokens: (\d+)", text).group(1))


def hf_config(d: Dims, name: str, tok):
    """A Qwen2 or Qwen3 config (by the model ``name``) of the dimensions ``d``, special ids from ``tok``."""
    from transformers import Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=d.V,
        hidden_size=d.H,
        intermediate_size=d.inter,
        num_hidden_layers=d.L,
        num_attention_heads=d.heads,
        num_key_value_heads=d.kv,
        tie_word_embeddings=d.tied,
        max_position_embeddings=32_768,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    if "qwen3" in name.lower():
        return Qwen3Config(head_dim=d.hd, **common)
    if d.H != d.heads * d.hd:
        raise ValueError(f"Qwen2 needs hidden = heads x head dim, got {d}")
    return Qwen2Config(**common)


def write_pair(preset: str | Path, root: str | Path, *, tiny: bool = False) -> tuple[Path, Path, Dims, Dims, int]:
    """Write ``root/student`` and ``root/teacher`` (config + tokenizer, no weights) for ``preset``; ``tiny`` shrinks
    every dimension but the vocabulary (:data:`TINY`). Returns the two paths, their dims and the prompt tokens."""
    from gopd_lab.config import RunConfig

    cfg = RunConfig.load(preset)
    student, teacher, prompt = preset_dims(preset)
    if tiny:
        student, teacher = replace(student, **TINY), replace(teacher, **TINY)
    tok = qwen_like_tokenizer()
    paths = []
    for role, dims, name in (("student", student, cfg.student), ("teacher", teacher, cfg.teacher)):
        path = Path(root) / role
        hf_config(dims, name, tok).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1], student, teacher, prompt


def random_load_model(path: str, *, role: str, device: torch.device, dtype: torch.dtype, trust_remote_code=False):
    """The model of ``path``'s config with random weights, made on ``device`` in ``dtype`` (seeded by the role)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    torch.manual_seed({"student": 0, "teacher": 1}.get(role, 2))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
