"""Figures from engine tables: the numbers in the traces are the numbers in the tables."""
import numpy as np
import pandas as pd
import pytest
import torch

from dashboard import figures
from merging.maskset import MaskSet
from merging.maskstats import mask_statistics, per_layer_rate
from merging.param_index import ParamIndex

# masks over P = 16 weights (embed: 4, block.00: 6, block.01: 6) for tasks a, b, c — written out by hand
MASKS = torch.tensor([
    [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0],
    [1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0],
    [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1],
], dtype=torch.bool)
# agreement c per weight: 3,1,1,0, 3,2,1,1,1,1, 2,1,1,1,2,1


@pytest.fixture(scope="module")
def stats():
    state = {"conv1.weight": torch.zeros(2, 2), "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 2),
             "transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(2, 3)}
    index = ParamIndex.from_state_dict(state)
    return index, mask_statistics(MaskSet.from_bool(MASKS, ["a", "b", "c"], "tall"), index)


def test_histogram_bars_are_class_coloured_and_sum_to_all_weights(stats):
    _, s = stats
    fig = figures.agreement_histogram(s.histogram, k=2)
    by_class = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    assert by_class["catastrophic"] == ([0], [pytest.approx(100 / 16)])
    assert by_class["selfish"] == ([1], [pytest.approx(100 * 10 / 16)])
    assert by_class["general"][0] == [2, 3]
    assert by_class["general"][1] == [pytest.approx(100 * 3 / 16), pytest.approx(100 * 2 / 16)]
    assert {t.marker.color for t in fig.data} == set(figures.CLASS_COLORS.values())
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 1.5  # weights with c < 2 are removed by the consensus mask
    assert "k = 2" in fig.layout.annotations[0].text


def test_histogram_without_threshold_has_no_line(stats):
    assert not figures.agreement_histogram(stats[1].histogram).layout.shapes


def test_layer_heatmap_rows_are_layers_and_values_fractions(stats):
    _, s = stats
    fig = figures.layer_heatmap(s.by_layer)
    (heat,) = fig.data
    assert list(heat.y) == ["embed", "block.00", "block.01"]
    assert list(heat.x) == ["0<br>catastrophic", "1<br>selfish", "2", "3"]
    z = np.asarray(heat.z)
    # embed weights have c = 3,1,1,0; block.01 has 2,1,1,1,2,1
    np.testing.assert_allclose(z[0], [25, 50, 0, 25])
    np.testing.assert_allclose(z[2], [0, 400 / 6, 200 / 6, 0])
    np.testing.assert_allclose(z.sum(1), 100)


@pytest.mark.parametrize("kind", ["ties_trim", "dare_keep", "pcb_keep", "calm", "consensus_keep"])
def test_other_masks_are_labelled_kept_by_c_tasks_not_tall_classes(stats, kind):
    index, _ = stats
    s = mask_statistics(MaskSet.from_bool(MASKS, ["a", "b", "c"], kind), index)
    figs = figures.run_figures({kind: s}, {}, None, k=2, mask_kind=kind)
    (bars,) = figs["histogram"].data
    assert bars.name == "weights kept by c tasks" and list(bars.x) == [0, 1, 2, 3]
    assert list(bars.y) == pytest.approx([100 / 16, 100 * 10 / 16, 100 * 3 / 16, 100 * 2 / 16])
    assert figs["histogram"].layout.xaxis.title.text == "kept by c tasks"
    text = figs["histogram"].to_json() + figs["layers"].to_json()
    assert not any(word in text for word in ("catastrophic", "selfish", "general"))
    assert list(figs["layers"].data[0].x) == ["kept by 0", "kept by 1", "kept by 2", "kept by 3"]
    # the consensus threshold counts TALL masks: marked on them and on the consensus keep mask only
    assert bool(figs["histogram"].layout.shapes) == (kind == "consensus_keep")
    assert figures.class_label(kind, "catastrophic") == "kept by no task"
    assert figures.class_label("tall", "catastrophic") == "catastrophic"


def test_jaccard_heatmap_matches_hand_count(stats):
    _, s = stats
    z = np.asarray(figures.jaccard_heatmap(s.jaccard).data[0].z)
    a, b = MASKS[0], MASKS[1]
    expected = float((a & b).sum()) / float((a | b).sum())
    assert z[0, 1] == pytest.approx(expected) and z[1, 0] == pytest.approx(expected)
    np.testing.assert_allclose(np.diag(z), 1)


def test_density_bars(stats):
    _, s = stats
    bar = figures.density_bars(s.density).data[0]
    assert list(bar.x) == ["a", "b", "c"]
    np.testing.assert_allclose(bar.y, 100 * MASKS.float().mean(1).numpy())


ACCURACY = pd.DataFrame({
    "task": ["x", "y"] * 3,
    "model": ["merged", "merged", "pretrained", "pretrained", "individual", "individual"],
    "accuracy": [0.6, 0.3, 0.2, 0.1, 0.8, 0.6],
})


def test_accuracy_bars_in_model_order_with_average():
    fig = figures.accuracy_bars(ACCURACY)
    assert [t.name for t in fig.data] == ["pretrained", "individual", "merged"]
    merged = fig.data[2]
    assert list(merged.x) == ["x", "y", "average"]
    np.testing.assert_allclose(merged.y, [60, 30, 45])


def test_normalized_accuracy_divides_by_individual():
    table = figures.normalized_accuracy(ACCURACY)
    merged = table[table["model"] == "merged"].set_index("task")["normalized"]
    assert merged["x"] == pytest.approx(0.75) and merged["y"] == pytest.approx(0.5)
    fig = figures.normalized_bars(ACCURACY)
    assert [t.name for t in fig.data] == ["pretrained", "merged"]
    np.testing.assert_allclose(fig.data[1].y, [75, 50, 62.5])
    assert fig.layout.shapes[0].y0 == 100


def test_normalized_accuracy_empty_without_individual():
    assert figures.normalized_accuracy(ACCURACY[ACCURACY["model"] != "individual"]).empty


def test_sign_conflicts_per_layer(stats):
    index, _ = stats
    flags = torch.zeros(16, dtype=torch.bool)
    flags[[0, 5, 6, 7]] = True
    table = per_layer_rate(index, flags, "sign_conflicts")
    bar = figures.sign_conflict_bars(table).data[0]
    assert list(bar.x) == ["embed", "block.00", "block.01"]
    np.testing.assert_allclose(bar.y, [25, 50, 0])


def test_table_figure_picks_a_shape_for_unknown_tables():
    coefficients = pd.DataFrame({"task": ["x", "x", "y", "y"], "layer": ["embed", "block.00"] * 2,
                                 "coefficient": [0.3, 0.4, 0.5, 0.6]})
    heat = figures.table_figure("coefficients", coefficients).data[0]
    assert heat.type == "heatmap"
    np.testing.assert_allclose(heat.z, [[0.3, 0.4], [0.5, 0.6]])
    stages = pd.DataFrame({"stage": [0, 1, 0, 1], "task": ["x", "x", "y", "y"], "accuracy": [0.5, 0.7, 0.4, 0.6]})
    lines = figures.table_figure("stages", stages).data
    assert [t.type for t in lines] == ["scatter", "scatter"] and list(lines[1].y) == [0.4, 0.6]
    bars = figures.table_figure("t", pd.DataFrame({"layer": ["a", "b"], "numel": [4, 6], "hits_rate": [0.5, 0.1]}))
    assert bars.data[0].type == "bar" and list(bars.data[0].y) == [0.5, 0.1]
    assert figures.table_figure("empty", pd.DataFrame({"name": ["a"]})) is None


def test_run_figures_collects_everything(stats):
    _, s = stats
    figs = figures.run_figures({"tall": s}, {"weird": pd.DataFrame({"x": ["a"], "v": [1.0]})}, ACCURACY, k=2)
    assert all(figs[name] is not None for name in ("histogram", "layers", "jaccard", "density", "accuracy",
                                                   "normalized", "table:weird"))
    assert figures.run_figures({}, {}, None)["histogram"] is None


def test_figures_serialise_without_numpy_only_types(stats):
    _, s = stats
    # Gradio sends fig.to_json() to plotly.js 3: it must be plain JSON.
    import json
    for fig in figures.run_figures({"tall": s}, {}, ACCURACY, k=1).values():
        assert json.loads(fig.to_json())["data"]


def test_adamerging_coefficients_heatmap_averages_a_layers_tensors():
    # coefficient_table format of merging.methods.adamerging: task, entry, layer, kind, coefficient
    table = pd.DataFrame({"task": ["x"] * 4 + ["y"] * 4, "entry": ["a", "p", "b", "c"] * 2,
                          "layer": ["embed", "head", "block.00", "block.00"] * 2, "kind": "k",
                          "coefficient": [0.3, 0.9, 0.2, 0.4, 0.5, 0.7, 0.1, 0.1]})
    heat = figures.method_table_figure("coefficients", table).data[0]
    assert list(heat.y) == ["x", "y"] and list(heat.x) == ["embed", "block.00", "head"]  # network order
    np.testing.assert_allclose(heat.z, [[0.3, 0.3, 0.9], [0.5, 0.1, 0.7]])


def test_calm_stage_accuracy_and_training_curve():
    stages = pd.DataFrame({"stage": [0, 1, 2], "task": ["TA group: cars, dtd, eurosat, gtsrb", "c", "d"],
                           "tasks_merged": [4, 5, 6], "accuracy": [0.5, 0.6, None], "cross_entropy": [1.0, 0.9, 0.8]})
    line = figures.method_table_figure("stages", stages).data[0]
    assert list(line.x) == ["0: TA group: cars, dtd…", "1: c", "2: d"]
    assert line.customdata[0][0] == "0: TA group: cars, dtd, eurosat, gtsrb"
    np.testing.assert_allclose(line.y[:2], [50, 60]) and np.isnan(line.y[2])
    history = pd.DataFrame({"step": [1, 2, 3], "entropy": [0.9, 0.7, 0.6], "accuracy": [0.4, 0.5, 0.55],
                            "seconds": [0.1, 0.1, 0.1]})
    traces = figures.method_table_figure("history", history).data
    assert [t.name for t in traces] == ["entropy", "accuracy (%)"] and traces[1].yaxis == "y2"
    # a table that only shares the name falls back to the generic figure
    assert figures.method_table_figure("stages", pd.DataFrame({"x": ["a"], "v": [1.0]})).data[0].type == "bar"


def test_task_curves_draw_rolling_means_per_task():
    steps = list(range(1, 41))  # 40 steps: a rolling mean over 2
    table = pd.DataFrame({"step": steps * 2, "task": ["counts"] * 40 + ["digits"] * 40,
                          "entropy": [float(s) for s in steps] + [1.0] * 40,
                          "accuracy": [0.5, 0.7] * 20 + [None] * 40})
    fig = figures.method_table_figure("task_history", table)
    assert [t.name for t in fig.data] == ["counts", "counts", "digits", "digits"]
    assert [t.showlegend for t in fig.data] == [None, False, None, False]  # one legend entry per task
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    np.testing.assert_allclose(fig.data[0].y[:3], [1.0, 1.5, 2.5])
    np.testing.assert_allclose(fig.data[1].y[:3], [50.0, 60.0, 60.0])
    assert fig.data[1].yaxis == "y2" and fig.layout.yaxis2.title.text == "accuracy (%)"
    assert "mean of 2 steps" in fig.layout.title.text
    unlabeled = figures.method_table_figure("task_history", table.assign(accuracy=None))
    assert [t.name for t in unlabeled.data] == ["counts", "digits"] and "yaxis2" not in unlabeled.layout


def test_parallel_coordinates_use_parameters_every_run_has():
    points = pd.DataFrame({"run": ["#1 ties", "#2 ta"], "method": ["ties", "task_arithmetic"], "k": [20.0, None],
                           "lam": [1.0, 0.3], "mean accuracy %": [61.0, 58.0]})
    fig = figures.parallel_coordinates(points)
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["method", "lam", "mean accuracy %"]
    assert list(dims[0].ticktext) == ["ties", "task_arithmetic"] and list(dims[-1].values) == [61.0, 58.0]
