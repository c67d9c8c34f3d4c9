"""Sweep figures and stored sweeps, on small hand-made tables: the heatmap's cells and colour range, methods
overlaid with their best points, the θ0 / individual lines, the value-axis rule, the edge warning, the store."""
import pytest

from dashboard import sweep_figures as sf
from dashboard.history import History
from dashboard.sweeps import SweepRecord, SweepStore, describe, edge_warning, sweepable
from merging.registry import get_method
from merging.sweep import Best

TASKS = ["a", "b"]
REFS = {"pretrained": {"a": 0.40, "b": 0.50}, "individual": {"a": 0.90, "b": 0.80}}


def _rows(method, grid, scores):
    """Long rows: ``scores`` maps a point (tuple in grid order) to (accuracy of a, accuracy of b)."""
    names = list(grid)
    return [{"method": method, **dict(zip(names, point)), "task": t, "accuracy": acc,
             "normalized": acc / REFS["individual"][t]}
            for point, accs in scores.items() for t, acc in zip(TASKS, accs)]


def _record(methods, grid, rows, owner="", zoo_hash="z1"):
    return SweepRecord("tiny", zoo_hash, methods, [get_method(m).title for m in methods], grid,
                       {m: {"merge": "mean"} if m == "ties" else {} for m in methods}, TASKS, "val", rows, REFS,
                       owner=owner)


GRID2 = {"k": [10.0, 20.0, 30.0], "lam": [0.5, 1.0]}
SCORES2 = {(10.0, 0.5): (0.60, 0.60), (10.0, 1.0): (0.62, 0.64), (20.0, 0.5): (0.70, 0.66),
           (20.0, 1.0): (0.72, 0.70), (30.0, 0.5): (0.65, 0.61), (30.0, 1.0): (0.66, 0.60)}


def test_value_range_spans_the_references_and_at_least_ten_points():
    # values 61.0 … 61.5 with θ0 45 and individual 85: 45 … 85 padded by 5 % of 40 = 2 points
    assert sf.value_range([61.0, 61.5], {"pretrained": 45.0, "individual": 85.0}) == pytest.approx((43.0, 87.0))
    # no references: a 0.5-point difference is drawn on a 10-point axis about its middle
    assert sf.value_range([61.0, 61.5]) == pytest.approx((56.25, 66.25))
    # never below zero (shifted up, same width)
    assert sf.value_range([1.0, 2.0]) == pytest.approx((0.0, 10.0))


def test_reference_levels_in_accuracy_and_normalized_units():
    assert sf.reference_levels(REFS, TASKS) == pytest.approx({"pretrained": 45.0, "individual": 85.0})
    normalized = sf.reference_levels(REFS, TASKS, "normalized")
    assert normalized == pytest.approx({"pretrained": 100 * (0.4 / 0.9 + 0.5 / 0.8) / 2, "individual": 100.0})
    assert sf.reference_levels(REFS, ["a", "missing"]) == {}


def test_heatmap_cells_in_grid_order_with_the_best_starred_and_a_fixed_colour_range():
    record = _record(["ties"], GRID2, _rows("ties", GRID2, SCORES2))
    fig = sf.sweep_figure(record)
    heat, star = fig.data
    assert heat.type == "heatmap" and list(heat.x) == ["10", "20", "30"] and list(heat.y) == ["0.5", "1"]
    # cell (λ row, k column) = mean over the two tasks, in percent
    expected = [[100 * sum(SCORES2[(k, lam)]) / 2 for k in GRID2["k"]] for lam in GRID2["lam"]]
    assert [list(row) for row in heat.z] == [pytest.approx(row) for row in expected]
    assert heat.text[1][1] == "71.0"
    # the colour scale spans θ0 45 % … individual 85 % (padded), not just the swept 60 … 71 %
    assert (heat.zmin, heat.zmax) == pytest.approx((43.0, 87.0))
    assert any("θ0" in t for t in heat.colorbar.ticktext) and any("individual" in t for t in heat.colorbar.ticktext)
    # best by mean normalized accuracy: k = 20, λ = 1 (also the highest mean accuracy here)
    assert (list(star.x), list(star.y)) == (["20"], ["1"])


def test_overlaid_methods_each_with_its_best_and_the_reference_lines():
    grid = {"lam": [0.5, 1.0, 1.5]}
    rows = _rows("task_arithmetic", grid, {(0.5,): (0.6, 0.6), (1.0,): (0.7, 0.6), (1.5,): (0.5, 0.5)}) + \
        _rows("ties", grid, {(0.5,): (0.5, 0.5), (1.0,): (0.6, 0.6), (1.5,): (0.8, 0.7)})
    fig = sf.sweep_figure(_record(["task_arithmetic", "ties"], grid, rows))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    stars = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["Task Arithmetic", "TIES-Merging"]
    assert list(lines[0].y) == pytest.approx([60, 65, 50]) and list(lines[1].y) == pytest.approx([50, 60, 75])
    assert [(s.x[0], s.y[0]) for s in stars] == [(1.0, pytest.approx(65)), (1.5, pytest.approx(75))]
    levels = sorted(shape.y0 for shape in fig.layout.shapes)
    assert levels == pytest.approx([45.0, 85.0])
    assert fig.layout.yaxis.range == pytest.approx((43.0, 87.0))  # θ0 … individual, padded: not autoscaled
    normalized = sf.sweep_figure(_record(["task_arithmetic", "ties"], grid, rows), "normalized")
    assert 100.0 in [pytest.approx(shape.y0) for shape in normalized.layout.shapes]


def test_edge_warning_names_the_method_parameter_and_side():
    grid = {"k": [10.0, 20.0, 30.0], "lam": [0.5, 1.0]}
    bests = {"ties": Best({"k": 20.0, "lam": 1.0}, 0.8, ["lam"]), "dare": Best({"k": 10.0, "lam": 1.0}, 0.7, [])}
    lines = edge_warning(bests, grid, {"ties": "TIES-Merging"})
    assert lines == ["TIES-Merging: the best λ = 1 is the largest value of the grid (0.5 … 1); the optimum may lie "
                     "outside it: widen the grid"]
    assert edge_warning({"ties": Best({"k": 20.0}, 0.8, [])}, {"k": [10.0, 20.0, 30.0]}) == []
    # from a real table: the best k lies inside, the best λ on the edge
    record = _record(["ties"], GRID2, _rows("ties", GRID2, SCORES2))
    assert record.bests()["ties"].on_edge == ["lam"]


def test_describe_says_what_is_swept_and_what_is_held_fixed():
    text = describe(["TIES-Merging"], {"k": [10.0, 20.0], "lam": [0.5, 1.0]}, [{"k": 30.0, "merge": "sum"}],
                    ["a", "b"])
    assert text == ("Sweeping k over 10, 20 × λ over 0.5, 1 for **TIES-Merging** with merge=sum · tasks a, b · "
                    "validation split")


def test_methods_without_a_numeric_parameter_have_nothing_to_sweep():
    assert sweepable(get_method("averaging")) == [] and sweepable(get_method("emr")) == []
    names = [p.name for p in sweepable(get_method("ties"))]
    assert names == ["k", "lam"]  # "merge" is a choice, not swept


def test_store_round_trip_visibility_labels_and_comparison(tmp_path):
    store = SweepStore(History(tmp_path / "history.sqlite"))
    grid = {"lam": [0.5, 1.0]}
    mine = _record(["task_arithmetic"], grid, _rows("task_arithmetic", grid, {(0.5,): (0.6, 0.6),
                                                                              (1.0,): (0.7, 0.7)}), owner="alice")
    theirs = _record(["task_arithmetic"], {"lam": [0.5, 1.0, 1.5]},
                     _rows("task_arithmetic", {"lam": [0.5, 1.0, 1.5]},
                           {(0.5,): (0.5, 0.5), (1.0,): (0.6, 0.6), (1.5,): (0.65, 0.6)}), owner="bob")
    two_d = _record(["ties"], GRID2, _rows("ties", GRID2, SCORES2), owner="alice")
    for record in (mine, theirs, two_d):
        store.add(record)
    back = store.get(mine.id, "alice")
    assert back.table().equals(mine.table()) and back.grid == grid and back.references == REFS
    with pytest.raises(KeyError, match=f"sweep {theirs.id} is not in the history"):
        store.get(theirs.id, "alice")
    assert [r.id for r in store.records("alice")] == [two_d.id, mine.id]
    assert back.label() == f"sweep {mine.id} · task_arithmetic λ · best λ=1 · 70.0 %"
    comparison = store.compare([mine.id, two_d.id], "alice")
    assert {"methods", "grid k", "ties merge", "best"} <= set(comparison.differences.index)
    assert not {"tasks", "grid λ", "zoo"} & set(comparison.differences.index)  # the same in both: not listed
    profiles = comparison.profiles.set_index(["series", "x"])["value"]
    assert profiles[(f"sweep {mine.id} · task_arithmetic", 1.0)] == pytest.approx(0.7)
    # the 2-D sweep as a line over k: the best over λ at each k
    assert profiles[(f"sweep {two_d.id} · ties, best over λ", 20.0)] == pytest.approx(0.71)
    assert comparison.warnings == ["these sweeps vary different parameters first: their lines share an axis only by "
                                   "value"]
    with pytest.raises(ValueError, match="at least two"):
        store.compare([mine.id], "alice")
