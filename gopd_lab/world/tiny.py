"""Tiny Hugging Face causal LMs built from a config (random weights) on the character tokenizer.

They stand in for real checkpoints in tests and smoke runs: ``save_tiny_model`` writes an ordinary
``save_pretrained`` directory (safetensors + tokenizer) that :func:`gopd_lab.lm.models.load_model` reads
with ``from_pretrained``, the same path a hub checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from gopd_lab.world.tokenizer import build_char_tokenizer


def tiny_config(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 128,
    tokenizer=None,
    tie_word_embeddings: bool = True,
) -> Qwen2Config:
    """A small ``Qwen2Config``; special-token ids come from ``tokenizer`` when given."""
    ids = {}
    if tokenizer is not None:
        ids = dict(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        attention_dropout=0.0,
        **ids,
    )


def tiny_model(*, seed: int = 0, tokenizer=None, **kwargs) -> Qwen2ForCausalLM:
    """A randomly initialised tiny ``Qwen2ForCausalLM`` (deterministic from ``seed``)."""
    tokenizer = tokenizer or build_char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer), tokenizer=tokenizer, **kwargs))
    return model.eval()


def save_tiny_model(path: str | Path, *, seed: int = 0, tokenizer=None, **kwargs) -> Path:
    """Build a tiny model and write it with its tokenizer as a ``from_pretrained`` directory."""
    path = Path(path)
    tokenizer = tokenizer or build_char_tokenizer()
    tiny_model(seed=seed, tokenizer=tokenizer, **kwargs).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
