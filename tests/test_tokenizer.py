"""The character tokenizer: one id per character, exact round trips, special ids, save and reload."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from gopd_lab.tasks import get_task, load_math_jsonl
from gopd_lab.world.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer, check_text, save_char_tokenizer

MATH_SAMPLE = Path(__file__).parent / "data" / "math_sample.jsonl"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def domain_texts() -> list[str]:
    """Every prompt and answer of the arithmetic domains and the math sample, plus feedback texts."""
    texts = ["expected 46, got 45", "expected 46, got no number"]
    for task in (get_task("add"), get_task("mul"), load_math_jsonl(MATH_SAMPLE, test_fraction=0.0)):
        texts += [text for e in task.train + task.test for text in (e.prompt, e.answer)]
    return texts


def test_special_ids_are_fixed_and_distinct(tok) -> None:
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 104
    assert set(string.printable) == set(CHARACTERS)


def test_every_printable_character_is_one_token_and_round_trips(tok) -> None:
    for char in string.printable:
        ids = tok.encode(char)
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, repr(char)
        assert tok.decode(ids) == char
    text = string.printable
    assert tok.encode(text) == [tok.convert_tokens_to_ids(c) for c in text]
    assert tok.decode(tok.encode(text)) == text


def test_random_printable_strings_round_trip(tok) -> None:
    rng = random.Random(0)
    alphabet = string.printable + "<>"
    cases = ["", " ", "  a  b  ", " . , ! ?", "a\r\nb", "x <eos> y", "1+2=3 <pad>"]
    cases += ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(200)]
    for text in cases:
        assert tok.decode(tok.encode(text)) == text, repr(text)


def test_no_special_token_is_added(tok) -> None:
    assert tok("12+7=")["input_ids"] == [tok.convert_tokens_to_ids(c) for c in "12+7="]


def test_domain_texts_are_in_vocabulary_and_round_trip(tok) -> None:
    for text in domain_texts():
        check_text(text)
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids and len(ids) == len(text)
        assert tok.decode(ids) == text


def test_unknown_characters_map_to_unk_and_check_text_names_them(tok) -> None:
    assert tok.encode("a\u00e9b") == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.convert_tokens_to_ids("b")]
    with pytest.raises(ValueError, match=r"'\u00e9' \(U\+00E9\) at position 1"):
        check_text("a\u00e9b")
    with pytest.raises(ValueError, match=r"U\+2212"):
        check_text("3 \u2212 1")


def test_left_padding(tok) -> None:
    batch = tok(["1+2=", "347+85="], padding=True)
    assert tok.padding_side == "left"
    assert batch["input_ids"][0][:3] == [tok.pad_token_id] * 3
    assert batch["attention_mask"] == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["1+2=", "347+85="]


def test_save_and_reload_with_auto_tokenizer(tok, tmp_path: Path) -> None:
    path = save_char_tokenizer(tmp_path / "char")
    loaded = AutoTokenizer.from_pretrained(str(path))
    texts = domain_texts()[:500] + [string.printable, "  spaced  out  ", "a<eos>b"]
    assert [loaded.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert [loaded.decode(tok.encode(t)) for t in texts] == texts
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.padding_side == "left"
    assert loaded(["1+2=", "347+85="], padding=True) == tok(["1+2=", "347+85="], padding=True)
