"""Grid sweeps: 1-D and 2-D grids against a plain loop of merges and evaluations; the Ray runner gives the same
table as the in-process runner; the CLI prints the grid, the best point and an edge warning."""
import pandas as pd
import pytest

from ck_tiny_zoo import make_tiny_zoo
from merging import run_merge
from merging.cli import main
from merging.evaluation import evaluate, evaluate_result
from merging.params import ParameterError
from merging.sweep import best_point, grid_points, sweep
from merging.zoo import load_zoo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_zoo")
    make_tiny_zoo(root)
    zoo = load_zoo(root)
    return root, zoo, zoo.build_space(device="cpu")


def test_grid_points_are_the_product_in_order():
    assert grid_points({"k": [1, 2], "lam": [0.5, 1.0]}) == [
        {"k": 1, "lam": 0.5}, {"k": 1, "lam": 1.0}, {"k": 2, "lam": 0.5}, {"k": 2, "lam": 1.0}]
    with pytest.raises(ValueError):
        grid_points({"k": []})


def test_2d_sweep_equals_a_plain_loop(setup):
    _, zoo, space = setup
    grid = {"k": [20.0, 60.0], "lam": [0.5, 1.0]}
    table = sweep(zoo, space, "ties", grid, params={"merge": "sum"})
    finetuned = evaluate(zoo, zoo.finetuned_state, split="val").set_index("task")["accuracy"]
    for k in grid["k"]:
        for lam in grid["lam"]:
            result = run_merge(space, "ties", {"k": k, "lam": lam, "merge": "sum"})
            plain = evaluate_result(zoo, space, result, split="val").set_index("task")["accuracy"]
            rows = table[(table["k"] == k) & (table["lam"] == lam)].set_index("task")
            assert rows["accuracy"].to_dict() == plain.to_dict()
            scored = finetuned > 0  # the tiny zoo's fine-tuned models can score 0 on its few val images
            pd.testing.assert_series_equal(rows["normalized"][scored], (plain / finetuned)[scored],
                                           check_names=False)
    best = best_point(table, grid)
    means = table.groupby(["k", "lam"])["normalized"].mean()
    assert best.mean_normalized == means.max() and means[tuple(best.point.values())] == means.max()


def test_sweep_refuses_test_data_and_bad_points(setup):
    _, zoo, space = setup
    with pytest.raises(ValueError, match="test"):
        sweep(zoo, space, "task_arithmetic", {"lam": [0.1]}, split="test")
    with pytest.raises(ParameterError, match="k"):
        sweep(zoo, space, "ties", {"k": [20.0, 150.0]})  # validated before anything runs


def test_best_point_on_the_edge():
    table = pd.DataFrame({"lam": [0.1, 0.1, 0.5, 0.5, 1.0, 1.0], "task": list("abab" * 1 + "ab"),
                          "normalized": [0.2, 0.4, 0.6, 0.6, 0.9, 0.7]})
    best = best_point(table, {"lam": [0.1, 0.5, 1.0]})
    assert best.point == {"lam": 1.0} and best.on_edge == ["lam"] and best.mean_normalized == pytest.approx(0.8)


def test_cli_sweep_prints_the_grid_and_warns_on_the_edge(setup, capsys, tmp_path):
    root, _, _ = setup
    out = tmp_path / "sweep.csv"
    code = main(["sweep", "--zoo", str(root), "--method", "task_arithmetic", "--grid", "lam=0.0,0.1",
                 "--device", "cpu", "--csv", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "best: lam=" in captured.out and "mean normalized val accuracy" in captured.out
    table = pd.read_csv(out)
    assert sorted(set(table["lam"])) == [0.0, 0.1] and {"task", "accuracy", "normalized"} <= set(table.columns)
    assert "grid's edge" in captured.err  # a two-value grid's best is always on its edge
    assert main(["sweep", "--zoo", str(root), "--method", "ties", "--grid", "nope=1"]) == 2
    assert "has no parameter 'nope'" in capsys.readouterr().err


def test_ray_runner_gives_the_same_table(setup):
    ray = pytest.importorskip("ray")
    from merging.sweep import RayRunner
    _, zoo, space = setup
    grid = {"lam": [0.1, 0.3, 0.6, 1.0]}  # a 4-point sweep both ways
    local = sweep(zoo, space, "task_arithmetic", grid)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = sweep(zoo, space, "task_arithmetic", grid, runner=RayRunner())
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(local, distributed)
