"""The dashboard in a real headless Chromium (playwright): page load, a merge with rendered plotly traces, cancel,
an error for a corrupt upload, the guide, compare.  Screenshots go to test-artifacts/.

Skipped when chromium or playwright is missing — unless MERGESCOPE_REQUIRE_BROWSER=1, then they fail.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from ck_tiny_zoo import make_tiny_zoo
from dashboard_app import SLOW, SLOW_METHOD, running_app
from dashboard.sweeps import values_text
from merging.registry import METHODS, get_method

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("MERGESCOPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT = 60_000  # ms; bounded waits everywhere
PLOTS = ("histogram", "layers", "jaccard", "density", "accuracy", "normalized")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM}"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _browser_missing()
    if missing:
        if os.environ.get("MERGESCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required (MERGESCOPE_REQUIRE_BROWSER=1) but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory, browser):
    zoo = tmp_path_factory.mktemp("zoo")
    make_tiny_zoo(zoo, n_tasks=3, n_per_class=3, noise=0.05)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, SLOW, SLOW_METHOD)
        with running_app(zoo, tmp_path_factory.mktemp("data")) as (url, demo):
            yield url, demo, zoo


@pytest.fixture
def page(browser, app):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app[0])
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Loaded')")
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def _shot(page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _status_has(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})")


def _merge(page) -> None:
    before = page.inner_text("#status")
    page.click("#merge-btn")
    # the final status, not a progress timer shown over the previous one
    page.wait_for_function(f"(s => /^Run #\\d+ done\\.$/.test(s.trim()) && s !== {before!r})"
                           "(document.querySelector('#status').innerText)")


def _choose_method(page, title: str) -> None:
    page.click("#method input")
    page.locator("#method").get_by_role("option", name=title, exact=True).click()
    page.wait_for_function(f"document.querySelector('#method input').value === {title!r}")


def _rendered(page, plot: str) -> int:
    """Number of drawn plotly traces (bars/lines: g.trace; heatmaps: their image) in one gr.Plot."""
    return page.locator(f"#plot-{plot} .js-plotly-plot .trace, #plot-{plot} .js-plotly-plot .hm image").count()


def test_page_loads_on_the_zoo(page):
    assert page.title() == "mergescope"
    for task in ("task0", "task1", "task2"):
        assert page.locator("#tasks").get_by_text(task, exact=True).is_visible()
    assert "Consensus Merging" in page.inner_text("body")
    page.get_by_role("tab", name="Load zoo").click()
    page.wait_for_function("document.querySelector('#zoo-summary').innerText.includes('3 tasks')")
    page.wait_for_function("document.querySelector('#zoo-table').innerText.includes('pretrained %')")
    _shot(page, "01-load-tab")


def test_a_merge_runs_and_the_plots_render(page):
    _merge(page)
    for plot in PLOTS:
        page.wait_for_selector(f"#plot-{plot} .js-plotly-plot")
    counts = {plot: _rendered(page, plot) for plot in PLOTS}
    assert all(counts.values()), counts
    assert counts["histogram"] == 3 and counts["accuracy"] == 3  # classes; pretrained/individual/merged
    assert page.locator("#plot-histogram .shapelayer path").count() == 1  # the consensus threshold k
    assert "Run #" in page.inner_text("#run-summary")
    _shot(page, "02-merged-consensus")


def test_cancel_stops_a_running_merge(page, app):
    _choose_method(page, "Slow (test)")
    page.click("#merge-btn")
    page.wait_for_function("document.body.innerText.includes('slow step')")
    _shot(page, "03-running")
    page.click("#cancel-btn")
    _status_has(page, "Cancelled")
    # the cancel's own reply is a toast and never overwrites the job's final status, whichever arrives last
    page.wait_for_function("document.body.innerText.includes('Cancelling 1 job')")
    assert "Cancelled" in page.inner_text("#status")
    assert not app[1].dashboard.jobs.active()
    _shot(page, "04-cancelled")


def test_closing_the_tab_cancels_its_merge(browser, app):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(app[0])
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Loaded')")
    _choose_method(page, "Slow (test)")
    page.click("#merge-btn")
    page.wait_for_function("document.body.innerText.includes('slow step')")
    (job,) = [j for j in app[1].dashboard.jobs.active() if j.label == f"merge {SLOW}"]
    context.close()
    assert job.wait(20) and job.state == "cancelled"


def test_a_corrupt_upload_shows_an_error_and_keeps_the_zoo(page, app, tmp_path):
    corrupt = tmp_path / "cars.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00this is not a safetensors header")
    page.get_by_role("tab", name="Load zoo").click()
    page.get_by_label("upload safetensors").check()
    page.set_input_files("#upload input[type=file]", [str(corrupt), str(app[2] / "pretrained.safetensors")])
    page.wait_for_function("document.querySelector('#upload').innerText.includes('cars.safetensors')")
    page.click("#load-btn")
    toast = page.get_by_text("cars.safetensors:", exact=False).last
    toast.wait_for()
    assert "finetuned/cars.safetensors" in toast.inner_text()
    _status_has(page, "failed")
    assert "3 tasks" in page.inner_text("#zoo-summary")  # the loaded zoo is still there
    page.wait_for_timeout(1000)  # let the toast finish sliding in
    _shot(page, "05-corrupt-upload", full_page=False)  # the message is a fixed-position toast


def test_guide_runs_each_step_in_place_beside_its_text(page, app):
    page.get_by_role("tab", name="Guide").click()
    page.click("#guide-1")
    page.wait_for_selector("#guide-plot-1 .js-plotly-plot .trace")
    page.wait_for_function("document.querySelector('#guide-result-1').innerText.includes('average test accuracy')")
    page.click("#guide-2")
    page.wait_for_selector("#guide-plot-2 .js-plotly-plot .trace")
    page.wait_for_function("document.querySelector('#guide-result-2').innerText.includes('vs Task Arithmetic')")
    result = page.inner_text("#guide-result-2")
    record = app[1].dashboard.service.history.records()[-1]
    assert record.method == "ties" and f"run #{record.id}" in result
    assert f"{100 * record.mean_accuracy:.1f} %" in result  # the sentence quotes the recorded number
    assert f"λ = {record.params['lam']:g}, chosen on validation" in result  # and the λ the merge used
    text, plot = page.locator("#guide-result-2").bounding_box(), page.locator("#guide-plot-2").bounding_box()
    assert plot["x"] > text["x"] + text["width"] - 1 and abs(plot["y"] - text["y"]) < 400  # side by side
    assert page.locator("#guide-plot-2").is_visible()  # still on the Guide tab
    _shot(page, "06-guide-steps")
    page.get_by_role("tab", name="Compare & download").click()  # the Guide's runs are listed there, no Refresh
    page.click("#compare-runs input")
    page.get_by_role("option", name=record.label(), exact=True).wait_for()
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Guide").click()
    page.click("#guide-explore-2")
    page.wait_for_function("document.querySelector('#run-summary').innerText.includes('ties')")
    page.wait_for_selector("#plot-table .js-plotly-plot .trace")
    assert page.locator("#method input").input_value() == "TIES-Merging"
    explored = app[1].dashboard.service.history.records()[-1]
    assert explored.id != record.id and explored.params == record.params  # the λ step 2 chose, not the default
    page.get_by_role("tab", name="Guide").click()
    page.click("#guide-3")  # TALL: λt per task, chosen on validation, go into the Merge tab's per-task table
    page.wait_for_function("document.querySelector('#guide-result-3').innerText.includes('λt chosen on validation')")
    tall = app[1].dashboard.service.history.records()[-1]
    assert tall.method == "tall" and isinstance(tall.params["tall_lambda"], list)
    page.click("#guide-explore-3")
    page.wait_for_function(f"document.querySelector('#run-summary').innerText.includes('#{tall.id + 1}')")
    explored = app[1].dashboard.service.history.records()[-1]
    assert explored.id == tall.id + 1 and explored.params == tall.params
    runs = len(app[1].dashboard.service.history.records())
    page.get_by_role("tab", name="Guide").click()
    page.click("#guide-explore-5")  # the sweep step opens the Sweep tab on Task Arithmetic, and merges nothing
    page.wait_for_function("document.querySelector('#sweep-settings')?.innerText.includes('Task Arithmetic')")
    assert page.locator("#sweep-values").is_visible()
    page.wait_for_timeout(1500)
    assert len(app[1].dashboard.service.history.records()) == runs


def test_compare_runs_and_annotate_one(page, app):
    _merge(page)
    _choose_method(page, "Task Arithmetic")
    _merge(page)
    page.get_by_role("tab", name="Compare & download").click()
    history = app[1].dashboard.service.history
    records = history.records()[-2:]
    assert str(records[0].id) in page.locator("#runs-table").inner_text()
    for count, record in enumerate(records, 1):
        page.click("#compare-runs input")
        page.get_by_role("option", name=record.label(), exact=True).click()
        page.wait_for_function(f"document.querySelector('#compare-runs').innerText.split('#').length > {count}")
    page.click("#compare-btn")
    page.wait_for_selector("#plot-compare .js-plotly-plot .trace")
    page.wait_for_selector("#plot-parallel .js-plotly-plot")
    assert "method" in page.inner_text("#compare-table")
    header = page.locator("#runs-table thead").inner_text()
    assert header.index("avg acc %") < header.index("params")  # accuracy columns first, in view at 1280 px
    _shot(page, "07-compare")
    page.click("#edit-run input")
    page.get_by_role("option", name=records[-1].label(), exact=True).click()
    page.wait_for_function("document.querySelector('#edit-note').innerText.includes('Editing run')")
    page.fill("#edit-name textarea", "my <b>best</b> run")
    page.click("#edit-save")
    page.wait_for_function("document.querySelector('#edit-note').innerText.includes('Saved')")
    assert history.get(records[-1].id).name == "my <b>best</b> run"
    assert "my <b>best</b> run" in page.locator("#runs-table").inner_text()  # shown literally


def _pick(page, elem_id: str, option: str, tries: int = 5) -> None:
    """Pick ``option`` in a dropdown whose choices another event may still be replacing (retried)."""
    for _ in range(tries):
        page.locator(f"#{elem_id} input").click()
        page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()
        page.wait_for_timeout(800)
        if page.locator(f"#{elem_id} input").input_value() == option:
            return
    raise AssertionError(f"{elem_id}: could not pick {option!r}")


def test_a_2d_sweep_draws_a_heatmap_of_the_merge_settings_and_applies_the_best(page, app):
    _choose_method(page, "TIES-Merging")  # the Sweep tab follows the Merge tab's method and settings …
    _pick(page, "modifier", "LiNeS")  # … and its modifier
    page.get_by_role("tab", name="Sweep").click()
    page.wait_for_function("document.querySelector('#sweep-settings').innerText.includes('TIES-Merging')")
    page.wait_for_timeout(2000)  # opened while the method was being set: no event may keep re-firing (Gradio loop)
    busy = "[...document.querySelectorAll('#sweep-methods, #sweep-param, #sweep-param2')].filter(e => " \
           "e.querySelector('[data-testid=status-tracker]:not(.hide)')).map(e => e.id)"
    assert page.evaluate(busy) == []
    ties = get_method("ties")
    for picker, option, values, param, typed in (("sweep-param", "k", "sweep-values", "k", "10, 40, 80"),
                                                 ("sweep-param2", "λ", "sweep-values2", "lam", "0.5, 1, 1.5")):
        _pick(page, picker, option)
        box = f"#{values} textarea, #{values} input"
        paper = values_text(ties.param(param).grid)  # picking a parameter fills in the paper's grid …
        page.wait_for_function(f"document.querySelector({box!r}).value === {paper!r}")
        page.fill(box, typed)  # … which the test then replaces
    page.locator("#sweep-values2 textarea, #sweep-values2 input").first.press("Tab")
    page.wait_for_function("document.querySelector('#sweep-settings').innerText.includes("
                           "'Sweeping k over 10, 40, 80 × λ over 0.5, 1, 1.5 for TIES-Merging with merge=mean "
                           "· then lines(mode=multi-task, beta=0.5)')")
    page.click("#sweep-btn")
    page.wait_for_function("document.querySelector('#sweep-note').innerText.includes('Best:')", timeout=3 * WAIT)
    page.wait_for_function("(p => p !== null && p.data !== undefined && p.data[0].type === 'heatmap')"
                           "(document.querySelector('#plot-sweep .js-plotly-plot'))")
    assert _rendered(page, "sweep") >= 1
    note = page.inner_text("#sweep-note")
    assert "tasks task0, task1, task2" in note and "θ0 (pretrained)" in note
    page.locator("#plot-sweep").scroll_into_view_if_needed()
    _shot(page, "08-sweep-heatmap")
    record = app[1].dashboard.service.sweeps.records()[0]
    best = record.best()[1].point
    page.click("#sweep-apply")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Applied the best point')")
    assert page.locator("#method input").input_value() == "TIES-Merging"
    assert float(page.locator("#p-ties-k input").first.input_value()) == best["k"]
    assert float(page.locator("#p-ties-lam input").first.input_value()) == best["lam"]
    assert record.modifiers[0]["name"] == "lines" and page.locator("#modifier input").input_value() == "LiNeS"


def _toast(page, text: str):
    toast = page.locator(".toast-body").filter(has_text=text).last
    toast.wait_for()
    return toast


def _close_toasts(page) -> None:
    page.evaluate("document.querySelectorAll('.toast-close').forEach(b => b.click())")


def _type(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number], #{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def test_typed_values_are_refused_not_clamped_and_name_the_field(page, app):
    runs = len(app[1].dashboard.service.history.records())
    _choose_method(page, "TIES-Merging")
    page.locator("#s-ties-k input[type=range]").wait_for()  # a slider to drag …
    assert not page.locator("#s-ties-k input[type=number]").is_visible()  # … whose clamping box is hidden
    _type(page, "p-ties-k", "150")
    assert page.locator("#p-ties-k input").input_value() == "150"  # not clamped to 100
    page.click("#merge-btn")
    assert "above the maximum 100" in _toast(page, "k: 150").inner_text()
    _status_has(page, "failed")
    _shot(page, "09-refused-typed-value", full_page=False)
    _close_toasts(page)
    _type(page, "p-ties-k", "20")
    _choose_method(page, "Consensus Merging")
    _type(page, "p-consensus-k", "2.5")
    page.click("#merge-btn")
    _toast(page, "k: expected int, got 2.5")
    _close_toasts(page)
    _type(page, "p-consensus-k", "4")  # T = 3
    page.click("#merge-btn")
    _toast(page, "k: 4 is above the number of merged tasks (3)")
    _close_toasts(page)
    _type(page, "p-consensus-k", "2")
    for task in ("task0", "task1", "task2"):
        page.locator("#tasks").get_by_text(task, exact=True).click()
    page.click("#merge-btn")
    _toast(page, "tasks to merge: tick at least one task")
    assert len(app[1].dashboard.service.history.records()) == runs  # nothing ran, nothing recorded
    for task in ("task0", "task1", "task2"):
        page.locator("#tasks").get_by_text(task, exact=True).click()


def test_hidden_methods_do_not_block_a_merge(page):
    _choose_method(page, "DARE")
    _type(page, "p-dare-seed", "-3")
    _choose_method(page, "Task Arithmetic")
    _merge(page)  # DARE's bad seed is not validated for Task Arithmetic
    assert "task_arithmetic" in page.inner_text("#run-summary")


def test_parameters_show_only_when_they_apply_and_only_those_are_recorded(page, app):
    _choose_method(page, "DARE")
    assert not page.locator("#w-dare-k").is_visible() and not page.locator("#w-dare-merge").is_visible()
    _type(page, "p-dare-seed", "0")
    _merge(page)
    every = {p.name for p in get_method("dare").params}
    assert set(app[1].dashboard.service.history.records()[-1].params) == every - {"k", "merge"}
    page.click("#p-dare-base input")
    page.locator("#p-dare-base").get_by_role("option", name="ties", exact=True).click()
    page.locator("#w-dare-k").wait_for(state="visible")
    page.locator("#p-dare-base input").blur()
    page.wait_for_function("document.querySelector('#p-dare-base input').value === 'ties'")
    _shot(page, "10-dare-ties-base")
    _merge(page)
    sent = json.loads(page.locator("#params-json textarea").input_value())
    assert sent["base"] == "ties" and {"k", "merge"} <= set(sent)
    assert {"k", "merge"} <= set(app[1].dashboard.service.history.records()[-1].params)
    _choose_method(page, "TALL masks")
    assert not page.locator("#w-tall-ties_k").is_visible()


def test_messages_are_shown_literally_never_rendered(page):
    page.evaluate("window.__fired = false")
    page.get_by_role("tab", name="Load zoo").click()
    page.get_by_label("server folder or manifest").check()
    hostile = "<task><img src=x onerror=\"window.__fired = true\">"
    page.fill("#zoo-path textarea, #zoo-path input", hostile)
    page.click("#load-btn")
    toast = _toast(page, "<task>")
    assert hostile in toast.inner_text()  # shown as text: the tag did not disappear
    assert toast.locator("img").count() == 0
    page.wait_for_timeout(500)
    assert page.evaluate("window.__fired") is False
    _shot(page, "11-escaped-message", full_page=False)
