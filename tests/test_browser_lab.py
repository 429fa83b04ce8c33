"""An executed notebook's figures render in JupyterLab, offline, in headless Chromium: a plotly figure stored
as plotly's JSON mimetype (``course.setup_plotting``) and the live plot (redrawn in place through a display id),
with no plotly.js stored in the notebook. JupyterLab runs on localhost; every other request is aborted.

Needs ``/usr/bin/chromium`` and ``playwright`` (``.ci/install_browser.sh``) and JupyterLab (the notebook
extras). Set ``GOPD_LAB_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CODE = [
    "from gopd_lab.viz import course, widgets\nimport plotly.express as px\ncourse.setup_plotting()",
    "px.line(x=[0, 1, 2], y=[1.0, 3.0, 2.0], title='mimetype figure')",
    "live = widgets.LivePlot(metrics=('loss',), min_interval=0.0)\nlive",
    "for step in range(1, 4):\n    live.on_step(step, {'loss': 1.0 / step})\nlive.on_end({})",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """An executed, trusted notebook in a folder served by JupyterLab on localhost; yields (url, notebook)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (run .ci/install_browser.sh)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/install_browser.sh)")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("jupyterlab")
    root = tmp_path_factory.mktemp("lab")
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "OMP_NUM_THREADS": "1",
    }
    mp = pytest.MonkeyPatch()  # the kernel nbclient starts, and `jupyter trust`, use the same Jupyter dirs
    for key in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        mp.setenv(key, env[key])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CODE])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(nb, kernel_name="python3", store_widget_state=True, timeout=120)
    client.execute(cwd=str(root))
    path = root / "figures.ipynb"
    nbformat.write(nb, path)
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(path)], env=env, check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield url, path
    finally:
        server.terminate()
        server.wait(timeout=30)
        mp.undo()


def test_executed_notebook_stores_no_plotly_js(lab):
    _, path = lab
    text = path.read_text()
    assert path.stat().st_size < 200_000 and "plotly.js v" not in text and "Plotly.newPlot=" not in text
    nb = json.loads(text)
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb["cells"] for o in c["outputs"])


def test_figures_render_in_jupyterlab_offline(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, path = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())  # offline
        page.goto(f"{url}/lab/tree/{path.name}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000)
        shot = tmp_path / "lab.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("GOPD_LAB_SCREENSHOT_DIR"):
            out = Path(os.environ["GOPD_LAB_SCREENSHOT_DIR"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / "jupyterlab_figures.png")
        titles = page.eval_on_selector_all(".js-plotly-plot .gtitle", "els => els.map(e => e.textContent)")
        assert "mimetype figure" in titles
        assert "loss" in page.eval_on_selector_all(".js-plotly-plot .g-ytitle", "els => els.map(e => e.textContent)")
        points = page.eval_on_selector_all(".js-plotly-plot .scatterlayer .trace", "els => els.length")
        assert points >= 2, "both figures drew their line (the live plot after its last redraw)"
        browser.close()
