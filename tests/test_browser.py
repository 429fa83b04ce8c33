"""The token view rendered by a real browser: headless Debian Chromium driven by Playwright.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (``.ci/install_browser.sh`` installs
both; Playwright's own browser download is never used). Set ``GOPD_LAB_SCREENSHOT_DIR`` to keep a
copy of the screenshot (CI uses ``runs/browser``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from gopd_lab.viz import token_view, token_views

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RED, BLUE, WHITE = "rgb(178, 24, 43)", "rgb(33, 102, 172)", "rgb(255, 255, 255)"

TOKENS = ["4", "6", "\n", "The", " answer", " is", " ", "4", "6", " ", "<", " ", "5", "0", "\n", "<eos>"]
ADVANTAGE = [1.0, 0.8, 0.0, -0.2, 0.3, 0.1, 0.0, -1.0, -0.6, 0.05, -0.4, 0.0, 0.5, 0.7, 0.2, -0.3]


def make_record() -> dict:
    lp_student = [-0.1 - 0.05 * (i % 5) for i in range(len(TOKENS))]
    return {
        "step": 12,
        "index": 5,
        "domain": "add",
        "prompt": "12+34=",
        "completion": "".join(TOKENS[:-1]),
        "tokens": TOKENS,
        "lp_student": lp_student,
        "lp_teacher": [s + a for s, a in zip(lp_student, ADVANTAGE)],
        "lp_reference": [s - 0.2 * (i % 3) for i, s in enumerate(lp_student)],
        "lp_references": {"big-base": [s - 0.1 * (i % 4) for i, s in enumerate(lp_student)]},
        "advantage": ADVANTAGE,
        "teacher_rank": [i % 4 for i in range(len(TOKENS))],
        "lam": 1.25,
        "score": 1.0,
    }


@pytest.fixture(scope="module")
def page():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (run .ci/install_browser.sh)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (run .ci/install_browser.sh)"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 300})
        page.route(re.compile(r"^https?://"), lambda route: route.abort())  # offline: nothing may load
        yield page
        browser.close()


def background(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")


def test_token_view_renders_coloured_spans(page, tmp_path):
    record = make_record()
    view = token_views(
        [record, record, record],
        labels=["A_t as stored", "A_t at λ=2, reference: run (student-init)", "A_t at λ=2, reference: big-base"],
        lam=[None, 2.0, 2.0],
        reference=[None, "run", "big-base"],
        vmax=1.0,
        side_by_side=False,
    )
    path = view.save(tmp_path / "token_view.html")
    page.goto(path.as_uri())

    assert page.locator("span.tok").count() == 3 * len(TOKENS)
    first = ".gopd-panel:first-child span.tok"
    assert background(page, f'{first}[data-i="0"]') == RED  # A = +1
    assert background(page, f'{first}[data-i="7"]') == BLUE  # A = -1
    assert background(page, f'{first}[data-i="2"]') == WHITE  # A = 0
    assert page.inner_text(f'{first}[data-i="10"]') == "<"
    assert page.inner_text(f'{first}[data-i="15"]') == "<eos>"
    card = f'{first}[data-i="0"] .gopd-card'
    assert not page.locator(card).is_visible(), "the hover card is hidden until the pointer is on the token"
    page.hover(f'{first}[data-i="0"]')
    assert page.locator(card).is_visible() and "lp_teacher" in page.inner_text(card)
    assert page.eval_on_selector(card, "e => getComputedStyle(e).backgroundColor") == WHITE
    assert page.eval_on_selector(card, "e => getComputedStyle(e).boxShadow") != "none"
    page.mouse.move(0, 0)
    assert not page.locator(card).is_visible()
    box = page.locator(f'{first}[data-i="0"]').bounding_box()
    assert box is not None and box["width"] > 3 and box["height"] > 8

    shot = tmp_path / "token_view.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    if os.environ.get("GOPD_LAB_SCREENSHOT_DIR"):
        out = Path(os.environ["GOPD_LAB_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "token_view.png")


def test_token_view_survives_nbconvert_html_export(page, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    view = token_view(make_record(), vmax=1.0)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("token_view(record)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": view.html, "text/plain": "TokenView"})]
    nb.cells = [cell]
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    path = tmp_path / "notebook.html"
    path.write_text(body, encoding="utf-8")
    page.goto(path.as_uri(), wait_until="domcontentloaded")

    assert page.locator("span.tok").count() == len(TOKENS)
    assert background(page, 'span.tok[data-i="0"]') == RED
    assert background(page, 'span.tok[data-i="7"]') == BLUE
