"""The SVD family's figures: traces carry the tables' numbers, the dropdown shows one layer's traces at a time."""
import json

import numpy as np
import pandas as pd
import pytest

from dashboard import figures, spectral_figures


def _spectra(series="model", names=("a", "b", "merged")):
    rows = []
    for layer, scale in (("w1", 1.0), ("w2", 0.1)):
        for i, name in enumerate(names):
            for index in range(4):
                rows.append({"layer": layer, "block": "block.00", series: name, "index": index,
                             "sigma": scale * (i + 1) / (index + 1)})
    return pd.DataFrame(rows)


def test_spectrum_lines_one_trace_per_series_and_layer_with_a_layer_picker():
    table = _spectra()
    fig = figures.method_table_figure("spectra", table)
    assert len(fig.data) == 6 and fig.layout.yaxis.type == "log"
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["w1", "w2"]
    assert [t.visible for t in fig.data] == [True] * 3 + [False] * 3
    assert menu.buttons[1].args[0]["visible"] == [False] * 3 + [True] * 3
    second = fig.data[4]
    assert second.name == "b" and list(second.x) == [1, 2, 3, 4]
    np.testing.assert_allclose(second.y, [0.2, 0.1, 0.2 / 3, 0.05])
    assert fig.data[2].line.color == "#000000"  # the merge stands out
    assert json.loads(fig.to_json())["layout"]["updatemenus"]


def test_flattening_uses_the_stage_column():
    fig = figures.method_table_figure("flattening", _spectra("stage", ("before", "after")))
    assert [t.name for t in fig.data[:2]] == ["before", "after"] and "flattening" in fig.layout.title.text


def test_interference_heatmap_mean_first_then_each_matrix():
    rows = [{"layer": layer, "block": "block.00", "task_i": i, "task_j": j, "sti": 0.0 if i == j else value}
            for layer, value in (("w1", 1.0), ("w2", 3.0)) for i in "xy" for j in "xy"]
    fig = figures.method_table_figure("interference", pd.DataFrame(rows))
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["mean over matrices", "w1", "w2"]
    np.testing.assert_allclose(fig.data[0].z, [[0, 2], [2, 0]])
    np.testing.assert_allclose(fig.data[2].z, [[0, 3], [3, 0]])
    assert [t.visible for t in fig.data] == [True, False, False]


def test_interference_by_depth_lines():
    depth = pd.DataFrame({"depth": [0, 1], "block": ["embed", "block.00"], "sti": [0.5, 2.0],
                          "pairwise": [0.1, 0.4]})
    traces = figures.method_table_figure("interference_by_depth", depth).data
    assert [t.name for t in traces] == ["all tasks", "task pairs (mean)"]
    assert list(traces[0].x) == ["embed", "block.00"] and list(traces[1].y) == [0.1, 0.4]


@pytest.mark.parametrize("name", list(spectral_figures.SPECTRAL))
def test_registered_and_fall_back_on_other_columns(name):
    assert figures.DEDICATED[name] == spectral_figures.SPECTRAL[name]
    assert figures.method_table_figure(name, pd.DataFrame({"x": ["a"], "v": [1.0]})).data[0].type == "bar"


@pytest.mark.parametrize("method", ["tsvm", "iso_cts", "cart"])
def test_figures_from_a_real_merge(method):
    from engine_fixtures import space
    from merging import run_merge
    result = run_merge(space(T=3), method)
    drawn = figures.run_figures({}, result.tables, None)
    for name in result.tables:
        fig = drawn[f"table:{name}"]
        assert fig.data, name
        if name in ("spectra", "flattening", "interference"):
            layers = set(result.tables[name]["layer"])
            assert len(fig.layout.updatemenus[0].buttons) == len(layers) + (name == "interference")
