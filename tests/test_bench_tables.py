"""bench/tables.py: README.md's speed and memory tables are exactly what the committed bench JSON gives, and every
memory row states the chunk size it was measured at."""

import copy
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_bench_tables_are_regenerated_from_the_committed_json(tables):
    data = tables.blocks(tables.load())
    for path, required in tables.TARGETS.items():
        text = path.read_text()
        for name in required:
            assert f"<!-- bench:{name} -->" in text, path
        assert tables.fill(text, data, required) == text, f"{path.name}: run `python bench/tables.py` and commit"


def test_a_changed_json_number_changes_the_table_and_check_fails(tables, tmp_path, monkeypatch):
    data = tables.load()
    changed = copy.deepcopy(data)
    changed[tables.TRL_FILE]["settings"]["zoo"]["ratio_trl_over_gopd"]["step_cpu_s"]["median"] = 9.87
    assert "9.87 (" in tables.speed_table(changed)
    assert "9.87 (" not in tables.speed_table(data)

    readme = tmp_path / "README.md"
    readme.write_text(
        "x\n<!-- bench:speed -->\n| stale |\n<!-- /bench:speed -->\n<!-- bench:memory -->\n<!-- /bench:memory -->\n"
    )
    monkeypatch.setattr(tables, "TARGETS", {readme: ("speed", "memory")})
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0
    assert tables.main(["--check"]) == 0
    assert "| stale |" not in readme.read_text()


def test_every_memory_row_states_its_chunk_size(tables):
    table = tables.memory_table(tables.load())
    rows = [line for line in table.splitlines() if line.startswith("| ") and "peak MB" not in line]
    assert len(rows) >= 7
    for row in rows:
        chunk = row.split(" | ")[2]
        assert chunk == "–" or "MiB" in chunk, row  # "–" only for the naive and bare-forward rows
    assert "8 MiB (the default then)" in table, "the committed runs record an 8 MiB default chunk"


def test_a_bare_default_chunk_takes_the_default_its_file_records_and_refuses_without_one(tables):
    rows = [{"chunk_tokens": "default (8 MiB)"}, {"chunk_tokens": "default"}]
    assert tables._chunk("default", rows, 151936) == "8 MiB (the default then)"
    assert tables._chunk(16, rows, 151936) == "16 positions (9.3 MiB)"
    with pytest.raises(ValueError, match="no single default"):
        tables._chunk("default", [{"chunk_tokens": "default"}], 151936)


def test_fill_refuses_a_readme_without_a_block(tables):
    with pytest.raises(KeyError, match="memory"):
        tables.fill(
            "<!-- bench:speed -->\n<!-- /bench:speed -->\n", {"speed": "t\n", "memory": "m\n"}, ("speed", "memory")
        )
