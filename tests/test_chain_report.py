"""sweeps/chain_report.py: results/chain/report.md is exactly what the committed chain results give."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_chain_report_is_up_to_date():
    spec = importlib.util.spec_from_file_location("chain_report", ROOT / "sweeps" / "chain_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render(ROOT / "results" / "chain")
    assert "## Chains" in text and "OPD (λ = 1)" in text
    assert (ROOT / "results" / "chain" / "report.md").read_text() == text, "run `python sweeps/chain_report.py`"
