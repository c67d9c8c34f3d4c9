"""Recipes between the dashboard and the CLI; runs reopened after their tensors left memory; two runs' masks
compared (service level, tiny zoo)."""
import pytest
import yaml

from dashboard.mask_compare import compare_masks
from dashboard.recipes import export_recipe, import_recipe
from dashboard.service import Service, Settings, UserError
from dashboard_app import zoo_dir  # noqa: F401 (module fixture)
from merging.cli import main
from merging.maskdiff import summarize
from merging.params import applicable, resolve_params
from merging.registry import get_method
from test_recipe import assert_same_file


@pytest.fixture(scope="module")
def service(zoo_dir, tmp_path_factory):
    return Service(Settings(tmp_path_factory.mktemp("data"), device="cpu", keep_results=2, zoo_roots=[zoo_dir]))


@pytest.fixture(scope="module")
def entry(service, zoo_dir):
    return service.load_zoo(zoo_dir)


@pytest.mark.parametrize("method,params,tasks", [("ties", {"k": 30, "lam": 0.7}, ["task0", "task2"]),
                                                 ("dare", {"p": 0.4, "seed": 5}, None),
                                                 ("adamerging", {"steps": 2, "batch_size": 4}, None)])
def test_dashboard_recipe_reruns_in_the_cli_bit_for_bit(service, entry, zoo_dir, tmp_path, method, params, tasks):
    view = service.merge(entry.id, method, params, tasks, owner="alice")
    mine = service.export_checkpoint(view.id, "open_clip", "alice", folder=tmp_path)
    recipe_path = export_recipe(service, view.id, "alice", tmp_path)
    recipe = yaml.safe_load(recipe_path.read_text())
    assert recipe["zoo"] == "." and str(zoo_dir) not in recipe_path.read_text()  # no server path
    assert recipe["tasks"] == view.record.tasks and recipe["method"] == method
    assert recipe["data"] == ("val" if method == "adamerging" else None)  # the split the method learned from
    assert set(recipe["inputs"]) == {"pretrained.safetensors", *(f"finetuned/{t}.safetensors"
                                                                for t in view.record.tasks)}
    out = tmp_path / "cli.safetensors"
    assert main(["merge", "--recipe", str(recipe_path), "--zoo", str(zoo_dir), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert_same_file(out, mine)
    with pytest.raises(KeyError):  # another session cannot download alice's recipe
        export_recipe(service, view.id, "bob", tmp_path)


def test_cli_recipe_imports_as_the_same_settings(service, entry, zoo_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--zoo", str(zoo_dir), "--method", "dare", "--set", "p=0.2", "seed=3", "base=ties",
                 "k=40", "--tasks", "task1", "task2", "--out", str(out), "--device", "cpu"]) == 0
    written = yaml.safe_load((tmp_path / "m.recipe.yaml").read_text())
    imported = import_recipe(service, tmp_path / "m.recipe.yaml", entry.id, "alice")
    spec = get_method("dare")
    assert imported.method == "dare" and imported.tasks == ["task1", "task2"]
    assert imported.params == applicable(spec.params, resolve_params(spec.params, written["params"], 2))
    assert imported.params["k"] == 40 and imported.params["seed"] == 3
    assert "checkpoints are the recipe's" in imported.note
    view = service.merge(entry.id, imported.method, imported.params, imported.tasks, owner="alice")
    assert_same_file(service.export_checkpoint(view.id, "open_clip", "alice", folder=tmp_path), out)


def test_recipe_with_a_modifier_round_trips_between_dashboard_and_cli(service, entry, zoo_dir, tmp_path):
    """A LiNeS run's recipe carries the modifier; the CLI reruns it bit for bit; importing it gives the same
    method, modifier and parameters back."""
    modifiers = [{"name": "lines", "params": {"mode": "multi-task", "beta": 0.3}}]
    view = service.merge(entry.id, "ties", {"k": 30, "lam": 1.0}, ["task0", "task1"], owner="alice",
                         modifiers=modifiers)
    mine = service.export_checkpoint(view.id, "open_clip", "alice", folder=tmp_path)
    recipe_path = export_recipe(service, view.id, "alice", tmp_path)
    recipe = yaml.safe_load(recipe_path.read_text())
    assert [m["name"] for m in recipe["modifiers"]] == ["lines"] and recipe["modifiers"][0]["params"]["beta"] == 0.3
    out = tmp_path / "cli.safetensors"
    assert main(["merge", "--recipe", str(recipe_path), "--zoo", str(zoo_dir), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert_same_file(out, mine)
    imported = import_recipe(service, recipe_path, entry.id, "alice")
    assert (imported.method, imported.tasks) == ("ties", ["task0", "task1"])
    assert imported.modifiers == [{"name": "lines", "params": view.record.modifiers[0]["params"]}]
    assert "+ lines" in imported.note
    again = service.merge(entry.id, imported.method, imported.params, imported.tasks, owner="alice",
                          modifiers=imported.modifiers)
    assert_same_file(service.export_checkpoint(again.id, "open_clip", "alice", folder=tmp_path / "again"), mine)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(method="nope"), "field 'method': unknown merge method"),
    (lambda r: r.update(tasks=["task0", "cars"]), "field 'tasks': cars not in the loaded zoo"),
    (lambda r: r["params"].update(p=7.0), "field 'params': p"),
    (lambda r: r["params"].update(bogus=1), "field 'params': unknown parameter(s) bogus"),
    (lambda r: r.update(modifiers=[{"name": "nope", "params": {}}]), "field 'modifiers': unknown modifier"),
    (lambda r: r.update(modifiers=[{"name": "lines", "params": {"beta": 50}}]), "field 'modifiers': beta"),
    (lambda r: r.update(modifiers=[{"name": "lines", "params": {}}] * 2), "field 'modifiers': the dashboard "
                                                                         "applies one modifier"),
])
def test_bad_recipes_give_one_line_naming_the_field(service, entry, zoo_dir, tmp_path, edit, message):
    assert main(["merge", "--zoo", str(zoo_dir), "--method", "dare", "--out", str(tmp_path / "m.safetensors"),
                 "--device", "cpu"]) == 0
    recipe = yaml.safe_load((tmp_path / "m.recipe.yaml").read_text())
    edit(recipe)
    path = tmp_path / "bad.recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError) as error:
        import_recipe(service, path, entry.id, "alice")
    text = str(error.value)
    assert text.startswith("recipe bad.recipe.yaml: ") and message in text and "\n" not in text


def test_reopen_redraws_a_run_that_left_memory(service, entry):
    first = service.merge(entry.id, "tall", {"tall_lambda": 0.4}, owner="carol")
    expected = {kind: s.by_layer.copy() for kind, s in first.stats.items()}
    figures_before = first.figures()
    for _ in range(2):  # keep_results=2: the TALL run is dropped
        service.merge(entry.id, "averaging", {}, owner="carol")
    with pytest.raises(UserError, match="no longer in memory"):
        service.run(first.id)
    again = service.reopen(first.id, "carol")
    assert again.result is not None and set(again.stats) == set(expected)
    for kind, table in expected.items():
        assert again.stats[kind].by_layer.equals(table)
    assert again.accuracy.equals(first.accuracy)
    assert again.figures()["layers"].to_json() == figures_before["layers"].to_json()
    assert service.run(first.id, "carol") is again
    with pytest.raises(KeyError):
        service.reopen(first.id, "dave")


def test_mask_comparison_of_two_runs(service, entry):
    a = service.merge(entry.id, "ties", {"k": 20}, owner="erin")
    b = service.merge(entry.id, "ties", {"k": 60}, ["task0", "task1"], owner="erin")
    for _ in range(2):  # both dropped from memory: compared after merging again
        service.merge(entry.id, "averaging", {}, owner="erin")
    comparison = compare_masks(service, a.id, b.id, "erin")
    table = comparison.table
    assert list(dict.fromkeys(table["task"])) == ["task0", "task1"]
    ma, mb = comparison.a.result.masks["ties_trim"].to_bool(), comparison.b.result.masks["ties_trim"].to_bool()
    assert int(table["only_a"].sum()) == int((ma[:2] & ~mb).sum()) == 0  # k=20 keeps a subset of k=60's top weights
    assert int(table["only_b"].sum()) == int((~ma[:2] & mb).sum()) > 0
    layers = summarize(table, "layer")
    assert (layers["total"] == layers[["both", "only_a", "only_b", "neither"]].sum(axis=1)).all()
    figs = comparison.figures()
    assert {"a", "b", "difference"} <= set(figs) and "B keeps" in comparison.summary()
    with pytest.raises(KeyError):
        compare_masks(service, a.id, b.id, "frank")
    plain = service.merge(entry.id, "averaging", {}, owner="erin")
    with pytest.raises(UserError, match="makes no masks"):
        compare_masks(service, a.id, plain.id, "erin")
