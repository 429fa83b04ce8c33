"""One function per job, used by every caller: the λ lookup, the tokenizer check, a value given as text, and the
JSON-lines reader (issue 12: each was written two or three times)."""

import json

import pytest

from gopd_lab.config import ConfigError, RunConfig, lam_for, parse_value
from gopd_lab.errors import DataError, ModelLoadError
from gopd_lab.experiments import sweep_grid
from gopd_lab.lm.models import check_tokenizers
from gopd_lab.lm.vocab import tokenizer_info
from gopd_lab.runio import read_jsonl
from gopd_lab.scorers import score
from gopd_lab.world.tokenizer import build_char_tokenizer


def test_lam_for_reads_a_float_a_domain_and_the_default():
    assert lam_for(1.25, "add") == 1.25 and isinstance(lam_for(1, "add"), float)
    assert lam_for({"add": 1.5, "default": 0.5}, "add") == 1.5
    assert lam_for({"add": 1.5, "default": 0.5}, "mul") == 0.5
    with pytest.raises(ConfigError, match="no lam for domain 'mul'"):
        lam_for({"add": 1.5}, "mul")
    cfg = RunConfig(student="s", teacher="t", lam={"add": 1.5, "default": 2.0})
    assert (cfg.lam_for("add"), cfg.lam_for("sub")) == (1.5, 2.0)
    assert score.lam_for is lam_for  # the scoring pass's λ per row is the same lookup


def test_check_tokenizers_reads_a_tokenizer_or_what_a_server_says_of_its_own():
    student, other = build_char_tokenizer(), build_char_tokenizer()
    served = tokenizer_info(other)
    assert check_tokenizers(student, other, "s", "t").identical
    assert check_tokenizers(student, served, "s", "http://h:1", served_model="m") is None
    other.eos_token = "<unk>"
    served = json.loads(json.dumps(tokenizer_info(other)))
    served["vocab_hash"] = "0" * 64
    with pytest.raises(ModelLoadError, match=r"'http://h:1' \(m\): vocabularies differ.*eos_token differs"):
        check_tokenizers(student, served, "s", "http://h:1", served_model="m")
    with pytest.raises(ModelLoadError, match=r"'t': eos_token differs.*a teacher may add tokens"):
        check_tokenizers(student, other, "s", "t")


def test_parse_value_is_the_one_reader_of_values_given_as_text():
    assert parse_value("1e-3") == 1e-3 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("null") is None
    assert parse_value("a: b: c") == "a: b: c"  # not YAML: the text itself
    assert sweep_grid.parse_value is parse_value


def test_read_jsonl_run_files_are_lenient_input_files_strict(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []  # a run file not yet written
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # torn last line
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(path, numbered=True) == [(1, {"step": 1}), (3, {"step": 2})]
    with pytest.raises(DataError, match=r"metrics\.jsonl, line 4: not valid JSON"):
        read_jsonl(path, strict=True)
    path.write_text('{"prompt": "1+1="}\n\n{"prompt": "2+2="}\n')
    assert read_jsonl(path, strict=True, numbered=True) == [(1, {"prompt": "1+1="}), (3, {"prompt": "2+2="})]
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1: expected a JSON object, got list"):
        read_jsonl(path, strict=True)
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_jsonl(path, strict=True)
    with pytest.raises(DataError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl", strict=True)
