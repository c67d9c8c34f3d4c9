"""The researcher's loop through gradio_client, two sessions: recipes downloaded and imported, runs reopened
after they left memory, two runs' masks compared, and a zoo archive uploaded, evaluated and kept private."""
import json
import shutil
import zipfile

import pytest
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from dashboard_app import running_app, zoo_dir  # noqa: F401 (module fixture)


@pytest.fixture(scope="module")
def app(zoo_dir, tmp_path_factory):
    with running_app(zoo_dir, tmp_path_factory.mktemp("data"), keep_results=1) as (url, demo):
        yield url, demo


def _session(app):
    client = Client(app[0], verbose=False)
    client.predict("demo", "", [], api_name="/load_zoo")
    return client


def _merge(client, method, params, tasks=()):
    out = client.predict(method, json.dumps(params), list(tasks), api_name="/merge")
    return int(out[0].split("Run #")[1].split(":")[0])


def _offset(demo, method, param):
    """Position of ``method``'s ``param`` value widget among all panel components."""
    at = 0
    for name, panel in demo.dashboard.panels.items():
        for widget in panel.widgets:
            if name == method and widget.param.name == param:
                return at
            at += len(widget.components())


def _widgets(demo, method, values):
    """The values of ``method``'s widgets among the import's outputs (after method and tasks), by name."""
    return {w.param.name: values[2 + _offset(demo, method, w.param.name)]
            for w in demo.dashboard.panels[method].widgets}


def test_recipe_download_then_import_sets_the_merge_tab(app, tmp_path):
    alice, bob = _session(app), _session(app)
    run = _merge(alice, "ties", {"k": 30, "lam": 0.7}, ["task0", "task2"])
    recipe = alice.predict(str(run), api_name="/download_recipe")
    data = yaml.safe_load(open(recipe))
    assert data["method"] == "ties" and data["params"]["k"] == 30 and data["zoo"] == "."
    with pytest.raises(AppError, match=f"run #{run} is not in the history"):  # bob cannot download alice's recipe
        bob.predict(str(run), api_name="/download_recipe")
    out = bob.predict(handle_file(recipe), api_name="/import_recipe")
    assert out[0] == "ties" and out[1] == ["task0", "task2"]
    widgets = _widgets(app[1], "ties", out)
    assert widgets["k"] == 30 and widgets["lam"] == 0.7 and widgets["merge"] == "mean"
    assert "checkpoints are the recipe's" in out[-1]
    tall = tmp_path / "tall.recipe.yaml"  # a per-task λt: "per task" ticked, the table filled in task order
    tall.write_text(yaml.safe_dump({**data, "method": "tall", "tasks": ["task2", "task0"],
                                    "params": {"tall_lambda": [0.3, 0.6]}}))
    out = bob.predict(handle_file(str(tall)), api_name="/import_recipe")
    at = 2 + _offset(app[1], "tall", "tall_lambda")
    per_task = out[at + 1:at + 3]  # the "per task" checkbox and the table
    assert out[0] == "tall" and out[1] == ["task2", "task0"] and per_task[0] is True
    assert per_task[1]["data"] == [["task2", 0.3], ["task0", 0.6]]
    bad = tmp_path / "bad.recipe.yaml"
    bad.write_text(yaml.safe_dump({**data, "method": "<b>nope</b>"}))
    with pytest.raises(AppError) as error:
        bob.predict(handle_file(str(bad)), api_name="/import_recipe")
    message = str(error.value)
    assert "recipe bad.recipe.yaml: field 'method'" in message and "&lt;b&gt;" in message and "\n" not in message


def test_open_a_run_that_left_memory_and_compare_two_runs_masks(app):
    alice, bob = _session(app), _session(app)
    a = _merge(alice, "ties", {"k": 20})
    b = _merge(alice, "ties", {"k": 60})  # keep_results=1: run a has left memory
    out = alice.predict(str(a), api_name="/open_run")
    assert f"**Run #{a}: ties**" in out[0] and out[-1] == f"Run #{a} reopened."
    layers = [json.loads(o["plot"]) for o in out if isinstance(o, dict) and "plot" in o]
    assert any(t.get("type") == "heatmap" for fig in layers for t in fig["data"])
    with pytest.raises(AppError, match=f"run #{a} is not in the history"):
        bob.predict(str(a), api_name="/open_run")
    plot_a, plot_b, diff, numbers, note = alice.predict([str(a), str(b)], api_name="/compare_masks")
    assert f"A = run #{a}" in note and "A keeps 0 weights that B drops" in note
    traces = json.loads(diff["plot"])["data"]
    assert {t["name"] for t in traces} == {f"kept only by A (#{a})", f"kept only by B (#{b})"}
    only_b = [row[numbers["headers"].index("only_b")] for row in numbers["data"]]
    assert sum(only_b) > 0
    with pytest.raises(AppError):
        bob.predict([str(a), str(b)], api_name="/compare_masks")


def test_a_zoo_archive_is_evaluable_and_private_to_its_uploader(app, zoo_dir, tmp_path):
    alice, bob = _session(app), _session(app)
    archive = shutil.make_archive(str(tmp_path / "myzoo"), "zip", root_dir=zoo_dir)
    summary, *_ = alice.predict("archive", "", [handle_file(archive)], api_name="/load_zoo")
    assert "3 tasks" in summary and "not evaluated" not in summary
    out = alice.predict("ties", "{}", [], api_name="/merge")
    run = int(out[0].split("Run #")[1].split(":")[0])
    assert [t["name"] for t in json.loads(out[7]["plot"])["data"]] == ["pretrained", "individual", "merged"]
    record = app[1].dashboard.service.history.get(run)
    assert record.zoo_path.startswith("upload myzoo.zip (sha256 ")
    assert run not in [row[0] for row in bob.predict(False, api_name="/history")[0]["data"]]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as handle:
        handle.writestr("../../escape.txt", "x")
    with pytest.raises(AppError, match=r"evil.zip: member '../../escape.txt' points outside the archive"):
        bob.predict("archive", "", [handle_file(str(evil))], api_name="/load_zoo")
