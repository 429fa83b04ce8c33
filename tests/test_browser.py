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

from gopd_lab.viz import color, token_view, token_views

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


CHAIN = [*"8+5+0=13,3+4+0=7>73", "<eos>"]  # 38+45 worked out column by column, the first carry dropped
CHAIN_STEPS = {"steps": [(0, 9), (9, 16), (16, 20)], "first_wrong_step": 1, "first_wrong_token": 13}


def chain_record() -> dict:
    """``38+45=`` worked out with the first carry dropped (``3+4+0`` where ``3+4+1`` was due), the slip carrying
    the most negative A_t and the consequences (``=7``, ``73``) some more."""
    advantage = [0.1, 0.0, 0.05, 0.0, 0.0, 0.0, 0.2, 0.1, 0.0, 0.0, 0.0, 0.05, 0.0, -2.5, -0.1, -0.6]
    advantage += [0.0, -0.3, 0.0, 0.05]  # the answer step: >, 7 (8 was due), 3, <eos>
    lp_student = [-0.1 - 0.03 * (i % 4) for i in range(len(CHAIN))]
    return {
        **make_record(),
        "prompt": "38+45=",
        "tokens": CHAIN,
        "completion": "".join(CHAIN[:-1]),
        "lp_student": lp_student,
        "lp_teacher": [s + a for s, a in zip(lp_student, advantage)],
        "lp_reference": [s - 0.15 * (i % 3) for i, s in enumerate(lp_student)],
        "lp_references": None,
        "advantage": advantage,
        "teacher_rank": None,
        "lam": 1.0,
        "score": 0.0,
    }


def test_chain_view_draws_steps_marks_the_mistake_and_keeps_the_scale_across_lam(page, tmp_path):
    from gopd_lab.viz.chain_view import WRONG, credit_comparison
    from gopd_lab.viz.tokens import LAM_SCALE

    record, rewards = chain_record(), [1.0, 0.0, 1.0, 0.0]
    views = [
        credit_comparison(record, CHAIN_STEPS, lams=(lam,), group_rewards=rewards, group_index=1, scale_lams=LAM_SCALE)
        for lam in (1.0, 2.0)
    ]
    assert views[0].vmax[0] == views[1].vmax[0]  # one fixed scale for both λ
    path = views[0].save(tmp_path / "chain.html")
    page.set_viewport_size({"width": 1100, "height": 420})
    page.goto(path.as_uri())

    panels = page.locator(".gopd-chain")
    assert panels.count() == 2 and page.locator("span.tok").count() == 2 * len(CHAIN)
    opd, grpo = '.gopd-chain[data-label^="OPD"]', '.gopd-chain[data-label^="GRPO"]'
    assert page.locator(f"{opd} span.step").count() == 3
    wrong = page.locator(f"{opd} span.step.wrong")
    r, g, b = (int(WRONG[i : i + 2], 16) for i in (1, 3, 5))
    assert wrong.evaluate("e => getComputedStyle(e).borderTopColor") == f"rgb({r}, {g}, {b})"
    assert wrong.evaluate("e => getComputedStyle(e).borderTopWidth") == "2px"
    right = page.locator(f'{opd} span.step[data-step="0"]')
    assert right.evaluate("e => getComputedStyle(e).borderTopWidth") == "1px"
    mistake = f'{opd} span.tok[data-first-wrong="1"]'
    assert page.get_attribute(mistake, "data-i") == "13" and page.inner_text(mistake).startswith("0")
    assert background(page, mistake) == color(-2.5, views[0].vmax[0]) != WHITE  # on the scale fixed over λ 1–2
    assert "inset" in page.eval_on_selector(mistake, "e => getComputedStyle(e).boxShadow")
    grpo_tokens = page.eval_on_selector_all(
        f"{grpo} span.tok", "es => es.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert len(set(grpo_tokens)) == 1 and grpo_tokens[0] == BLUE  # GRPO: the same credit on every token

    sums = page.locator(f"{opd} table.step-sums")
    tokens_box = page.locator(f"{opd} .chain-tokens").bounding_box()
    sums_box = sums.bounding_box()
    assert sums_box["x"] >= tokens_box["x"] + tokens_box["width"] - 1, "the per-step sums sit beside the tokens"
    assert "step 1" in sums.inner_text() and "-3.150" in sums.inner_text()  # 0.05 - 2.5 - 0.1 - 0.6

    card = f"{mistake} .gopd-card"
    assert not page.locator(card).is_visible()
    page.hover(mistake)
    text = page.inner_text(card)
    assert page.locator(card).is_visible() and "OPD A_t (λ = 1)" in text and "GRPO A" in text and "lp_teacher" in text
    page.mouse.move(0, 0)

    shot = tmp_path / "chain_view.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("GOPD_LAB_SCREENSHOT_DIR"):
        out = Path(os.environ["GOPD_LAB_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "chain_view.png")

    before = background(page, '.gopd-chain span.tok[data-i="15"]')  # the first panel: A_t at λ = 1, then 2
    page.goto(views[1].save(tmp_path / "chain_lam2.html").as_uri())
    after = background(page, '.gopd-chain span.tok[data-i="15"]')
    assert before != after, "on the fixed scale, λ = 2 colours the same token differently"


def test_explorer_lam_slider_changes_colours_on_its_fixed_scale(page, tmp_path):
    """Regression (issue 25): the explorer rescaled to every λ, so moving its slider left the picture as it was."""
    from gopd_lab.viz import TokenView
    from gopd_lab.viz.widgets import TokenExplorer

    ex = TokenExplorer([make_record()])
    shown = {}
    for lam in (1.25, 2.0):
        ex.set_lam(lam)
        page.goto(TokenView(ex.html, [], []).save(tmp_path / f"explorer_{lam:g}.html").as_uri())
        shown[lam] = page.eval_on_selector_all("span.tok", "es => es.map(e => getComputedStyle(e).backgroundColor)")
        shown[lam, "legend"] = page.inner_text("table.legend")
    assert shown[1.25, "legend"] == shown[2.0, "legend"], "one colour scale for every λ"
    changed = sum(a != b for a, b in zip(shown[1.25], shown[2.0]))
    assert changed >= len(TOKENS) // 2, f"only {changed} of {len(TOKENS)} tokens changed colour"
