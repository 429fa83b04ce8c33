"""The character-level tokenizer of the embedded world.

One token per character of Python's ``string.printable`` (the 95 visible ASCII characters, space
included, plus ``\\t \\n \\r \\x0b \\x0c``), after four special tokens:

    id 0 ``<pad>``   id 1 ``<bos>``   id 2 ``<eos>``   id 3 ``<unk>``

It is an ordinary ``transformers`` fast tokenizer (a ``tokenizers.Tokenizer`` wrapped by
``PreTrainedTokenizerFast``), so ``save_char_tokenizer`` writes ``tokenizer.json`` +
``tokenizer_config.json`` that ``AutoTokenizer.from_pretrained(path)`` loads back without
``trust_remote_code``.

Conventions the rest of the package relies on:

- Encoding adds no special token: ``tok("12+7=")["input_ids"]`` is exactly five ids. Code that
  needs ``<bos>``/``<eos>`` appends the ids itself.
- Padding is on the left (``padding_side="left"``), so prompts in a batch end at the same column
  and generation continues from the last position.
- Spaces are kept exactly and decoding concatenates characters (no clean-up), so
  ``tok.decode(tok.encode(s)) == s`` for every string made of vocabulary characters.
- A character outside the vocabulary becomes ``<unk>`` (and decodes as the text ``"<unk>"``);
  ``check_text`` finds such characters before they are silently lost.
- As in every ``transformers`` tokenizer, the literal texts ``"<pad>"``, ``"<bos>"``, ``"<eos>"``
  and ``"<unk>"`` inside a string are read as the special token, not as five characters.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
CHARACTERS: tuple[str, ...] = tuple(sorted(string.printable))
_CHARSET = frozenset(CHARACTERS)


def char_vocab() -> dict[str, int]:
    """Return the token → id map: the special tokens first (``<pad>`` = 0), then the characters."""
    return {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer(swap: tuple[str, str] | None = None) -> PreTrainedTokenizerFast:
    """Build the character tokenizer (104 tokens) as a ``PreTrainedTokenizerFast``.

    ``swap=("a", "b")`` exchanges the ids of two characters: a tokenizer whose shared ids mean other tokens,
    as between unrelated model families (the teacher that tokenizer agreement must refuse)."""
    vocab = char_vocab()
    if swap is not None:
        a, b = swap
        if a not in vocab or b not in vocab:
            raise ValueError(f"swap={swap!r}: both must be tokens of the character tokenizer")
        vocab[a], vocab[b] = vocab[b], vocab[a]
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_char_tokenizer(path: str | Path) -> Path:
    """Write the character tokenizer to directory ``path`` (created if needed) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer().save_pretrained(str(path))
    return path


def check_text(text: str) -> None:
    """Raise ``ValueError`` naming the first character of ``text`` the tokenizer would map to ``<unk>``."""
    for position, char in enumerate(text):
        if char not in _CHARSET:
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                f"character tokenizer's vocabulary (printable ASCII only); it would become {UNK}. "
                f"Text: {text[:60]!r}"
            )
