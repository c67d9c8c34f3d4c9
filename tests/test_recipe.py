"""Recipes: every CLI merge writes one; rerunning it gives the same bytes; bad recipes and changed inputs are
refused with one line naming the file."""
import hashlib

import pytest
import torch
import yaml

from merging.cli import main
from merging.recipe import FORMAT, RecipeError, load_recipe

from test_cli import files  # noqa: F401  (fixture: θ0 + three fine-tuned safetensors)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_file(a, b):
    """Same tensors bit for bit and the same metadata (safetensors writes metadata in hash-map order)."""
    from safetensors import safe_open
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            x, y = fa.get_tensor(key), fb.get_tensor(key)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.contiguous().view(-1).view(torch.uint8).equal(y.contiguous().view(-1).view(torch.uint8)), key


def _merge(tmp, paths, out, *extra):
    return main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths),
                 "--out", str(out), "--device", "cpu", *extra])


@pytest.mark.parametrize("method,sets", [("ties", ["k=30", "lam=0.7"]), ("dare", ["p=0.4", "seed=5"]),
                                         ("tall", ["tall_lambda=0.3,0.5,0.4"]),
                                         ("task_arithmetic", ["lam=0.6", "--modifier", "lines", "beta=0.3"])])
def test_recipe_round_trip_is_bit_for_bit(files, capsys, method, sets):  # noqa: F811
    tmp, _, _, paths = files
    first = tmp / "first.safetensors"
    assert _merge(tmp, paths, first, "--method", method, "--set", *sets) == 0, capsys.readouterr().err
    if "--modifier" in sets:
        recipe = yaml.safe_load((tmp / "first.recipe.yaml").read_text())
        assert recipe["modifiers"] == [{"name": "lines", "params": {"mode": "multi-task", "alpha": 1.0, "beta": 0.3}}]
    recipe_path = tmp / "first.recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    assert recipe["format"] == FORMAT and recipe["method"] == method and recipe["tasks"] == ["task0", "task1", "task2"]
    assert recipe["inputs"] == {p.name: _sha(p) for p in [tmp / "pre.safetensors", *paths]}
    assert recipe["finetuned"] == {f"task{i}": f"task{i}.safetensors" for i in range(3)}
    again = tmp / "again.safetensors"
    assert main(["merge", "--recipe", str(recipe_path), "--out", str(again), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    assert_same_file(again, first)
    assert yaml.safe_load((tmp / "again.recipe.yaml").read_text())["params"] == recipe["params"]


def test_recipe_refuses_a_changed_checkpoint(files, capsys):  # noqa: F811
    tmp, base, fts, paths = files
    assert _merge(tmp, paths, tmp / "m.safetensors", "--method", "task_arithmetic") == 0
    from safetensors.torch import save_file
    changed = dict(fts[1])
    key = next(k for k, v in changed.items() if v.is_floating_point())
    changed[key] = changed[key] + 1
    save_file(changed, str(paths[1]))
    code = main(["merge", "--recipe", str(tmp / "m.recipe.yaml"), "--out", str(tmp / "n.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "task1.safetensors" in err and "sha256" in err
    assert not (tmp / "n.safetensors").exists()


def test_recipe_with_other_copies_of_the_checkpoints(files, capsys, tmp_path_factory):  # noqa: F811
    tmp, _, _, paths = files
    assert _merge(tmp, paths, tmp / "m.safetensors", "--method", "ties") == 0
    elsewhere = tmp_path_factory.mktemp("colleague")
    copies = []
    for p in [tmp / "pre.safetensors", *paths]:
        (elsewhere / p.name).write_bytes(p.read_bytes())
        copies.append(elsewhere / p.name)
    out = elsewhere / "m.safetensors"
    code = main(["merge", "--recipe", str(tmp / "m.recipe.yaml"), "--pretrained", str(copies[0]),
                 "--finetuned", *map(str, copies[1:]), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert_same_file(out, tmp / "m.safetensors")


@pytest.mark.parametrize("text,message", [
    ("format: other/1\n", "format must be"),
    (f"format: {FORMAT}\nmethod: ties\n", "'tasks' is required"),
    (f"format: {FORMAT}\nmethod: ties\ntasks: [a, a]\nzoo: z\n", "distinct task names"),
    (f"format: {FORMAT}\nmethod: ties\ntasks: [a]\n", "either 'zoo' or 'pretrained'"),
    (f"format: {FORMAT}\nmethod: ties\ntasks: [a]\nzoo: z\nbogus: 1\n", "unknown field(s) bogus"),
    (f"format: {FORMAT}\nmethod: [1]\ntasks: [a]\nzoo: z\n", "'method' must be str"),
    (f"format: {FORMAT}\nmethod: ties\ntasks: [a]\nzoo: z\ninputs: {{x: abc}}\n", "sha256 hex digests"),
    ("a: [1,\n", "not valid YAML at line 2"),
    ("!!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_recipes_give_one_line(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert message in str(error.value) and "r.yaml" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_recipe_flags_conflict(files, capsys):  # noqa: F811
    tmp, _, _, paths = files
    assert _merge(tmp, paths, tmp / "m.safetensors", "--method", "ties") == 0
    code = main(["merge", "--recipe", str(tmp / "m.recipe.yaml"), "--method", "tall"])
    assert code == 2 and "--recipe fixes the method" in capsys.readouterr().err


def test_test_time_adaptation_is_recorded_and_rerun(tmp_path, capsys):
    """--test-time adapts AdaMerging on the zoo's test images (not val's), the recipe says so, and a rerun of the
    recipe adapts on them again; --test-time beside --recipe is refused."""
    from ck_tiny_zoo import make_tiny_zoo

    zoo = make_tiny_zoo(tmp_path / "zoo", n_tasks=2, n_per_class=4)
    common = ["merge", "--zoo", str(zoo), "--method", "adamerging", "--set", "steps=3", "batch_size=4",
              "--device", "cpu", "--out"]
    assert main([*common, str(tmp_path / "val.safetensors")]) == 0, capsys.readouterr().err
    assert main([*common, str(tmp_path / "tt.safetensors"), "--test-time"]) == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "val.recipe.yaml").read_text())["data"] == "val"
    assert yaml.safe_load((tmp_path / "tt.recipe.yaml").read_text())["data"] == "test"
    assert _sha(tmp_path / "val.safetensors") != _sha(tmp_path / "tt.safetensors")  # other images, other λ
    assert main(["merge", "--recipe", str(tmp_path / "tt.recipe.yaml"), "--out", str(tmp_path / "again.safetensors"),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    assert_same_file(tmp_path / "again.safetensors", tmp_path / "tt.safetensors")
    code = main(["merge", "--recipe", str(tmp_path / "tt.recipe.yaml"), "--test-time",
                 "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "--test-time" in capsys.readouterr().err.strip().splitlines()[-1]
    code = main(["merge", "--zoo", str(zoo), "--method", "ties", "--test-time",
                 "--out", str(tmp_path / "t.safetensors")])
    assert code == 2 and "--test-time: TIES" in capsys.readouterr().err and not (tmp_path / "t.safetensors").exists()
    ties = tmp_path / "ties.safetensors"
    assert main(["merge", "--zoo", str(zoo), "--method", "ties", "--device", "cpu", "--out", str(ties)]) == 0
    assert yaml.safe_load((tmp_path / "ties.recipe.yaml").read_text())["data"] is None  # data-free


def test_recipe_data_field_is_checked(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"format: {FORMAT}\nmethod: calm\ntasks: [a]\nzoo: z\ndata: all\n")
    with pytest.raises(RecipeError, match="r.yaml: field 'data' must be one of val, train, test"):
        load_recipe(path)
    path.write_text(f"format: {FORMAT}\nmethod: calm\ntasks: [a]\nzoo: z\ndata: test\n")
    assert load_recipe(path).data == "test"
