"""The researcher's loop in a real Chromium: two runs' masks side by side with their difference, and a recipe
imported with "Set and merge".  Screenshots go to test-artifacts/."""
import pytest

from dashboard.recipes import export_recipe
from test_browser import _choose_method, _merge, _shot, app, browser, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def _pick_runs(page, records) -> None:
    page.get_by_role("tab", name="Compare & download").click()
    for count, record in enumerate(records, 1):
        page.click("#compare-runs input")
        page.get_by_role("option", name=record.label(), exact=True).click()
        page.wait_for_function(f"document.querySelector('#compare-runs').innerText.split('#').length > {count}")


def test_two_runs_masks_side_by_side_with_their_difference(page, app):
    _choose_method(page, "TIES-Merging")
    _merge(page)
    page.fill("#p-ties-k input", "60")
    _merge(page)
    history = app[1].dashboard.service.history
    records = history.records()[-2:]  # the k=20 run, then k=60
    assert [r.params["k"] for r in records] == [20, 60]
    _pick_runs(page, records)
    page.click("#mask-compare-btn")
    page.wait_for_function("document.querySelector('#mask-compare-note').innerText.includes('A keeps')")
    for plot in ("mask-a", "mask-b", "mask-diff"):
        page.wait_for_selector(f"#plot-{plot} .js-plotly-plot .trace, #plot-{plot} .js-plotly-plot .hm image",
                               state="attached")  # A's "kept only" bars are all zero here: drawn, not visible
    note = page.inner_text("#mask-compare-note")
    assert f"A = run #{records[0].id}" in note and "A keeps 0 weights that B drops" in note
    assert page.locator("#plot-mask-diff .js-plotly-plot .trace.bars").count() >= 2
    assert "only_b" in page.inner_text("#mask-compare-table")
    page.locator("#mask-compare-note").scroll_into_view_if_needed()
    _shot(page, "09-mask-compare")


def test_recipe_set_and_merge(page, app, tmp_path):
    service = app[1].dashboard.service
    source = service.merge(next(iter(service._zoos)), "dare", {"p": 0.25, "seed": 4}, ["task0", "task1"])
    recipe = export_recipe(service, source.id, "", tmp_path)
    page.get_by_text("Import a recipe").click()
    page.locator("#recipe-file input[type=file]").set_input_files(str(recipe))
    page.click("#recipe-run")
    page.wait_for_function("document.querySelector('#recipe-note').innerText.includes('Recipe')")
    page.wait_for_function("(s => /^Run #\\d+ done\\.$/.test(s.trim()))(document.querySelector('#status').innerText)")
    run = int(page.inner_text("#status").split("#")[1].split(" ")[0])
    record = service.history.get(run, viewer=None)
    assert record.method == "dare" and record.tasks == ["task0", "task1"] and record.params == source.record.params
    assert page.locator("#method input").input_value() == "DARE"
    _shot(page, "10-recipe-merge")
