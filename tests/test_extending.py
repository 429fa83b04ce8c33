"""docs/extending.md works as written: its ```python blocks, run top to bottom in one fresh interpreter (a new
estimator, teacher type, task and method, a λ ramp, a GKD-style mixed on/off-policy method, each trained for two
steps on the zoo, and a plugin file named in a config)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def test_the_page_has_one_example_per_extension_point():
    text = (ROOT / "docs/extending.md").read_text()
    blocks = python_blocks(ROOT / "docs/extending.md")
    assert len(blocks) == 8
    assert 'policy="teacher"' in text and "ctx.score(rollout, lam=lam)" in text
    for call in ("register_estimator", "register_teacher_type", "register_task", "register_method", "plugins"):
        assert call in text


@pytest.mark.slow
def test_the_python_blocks_of_extending_md_run_top_to_bottom(tmp_path):
    script = tmp_path / "extending.py"
    script.write_text("\n\n".join(python_blocks(ROOT / "docs/extending.md")) + '\nprint("extending: ok")\n')
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "extending: ok" in done.stdout
