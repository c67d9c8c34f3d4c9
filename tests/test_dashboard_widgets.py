"""Widgets generated from parameter specs, and widget values back to parameters."""
import gradio as gr
import pandas as pd
import pytest

from dashboard.widgets import build_panel, collect_params, component_spec, explain, per_task_table
from merging import ParameterError, get_method, list_methods
from merging.params import Param, resolve_params


@pytest.mark.parametrize("param, kind, extra", [
    (Param("lam", float, 0.3, "λ", low=0.0, high=3.0, step=0.05), "Slider", {"minimum": 0.0, "maximum": 3.0,
                                                                         "step": 0.05}),
    (Param("lr", float, 1e7, "rate", low=1e-12, high=1e15), "Number", {"minimum": 1e-12, "maximum": 1e15}),
    (Param("k", int, 2, "tasks", low=0, high=10), "Slider", {"minimum": 0, "maximum": 10, "step": 1}),
    (Param("k", int, 2, "tasks", low=0, high=1000), "Number", {"minimum": 0, "maximum": 1000, "precision": 0}),
    (Param("seed", int, 0, "seed", low=0), "Number", {"minimum": 0, "precision": 0}),
    (Param("merge", str, "mean", "how", choices=("mean", "sum")), "Dropdown", {"choices": ["mean", "sum"]}),
    (Param("amp", bool, True, "autocast"), "Checkbox", {}),
    (Param("order", str, "", "task order"), "Textbox", {}),
])
def test_component_spec(param, kind, extra):
    got_kind, kwargs = component_spec(param)
    assert got_kind == kind
    assert kwargs["value"] == param.default and kwargs["info"] == param.help
    assert {k: kwargs[k] for k in extra} == extra


@pytest.mark.parametrize("method", list_methods(), ids=lambda m: m.name)
def test_every_registered_parameter_gets_a_widget_holding_its_default(method):
    for param in method.params:
        kind, kwargs = component_spec(param)
        assert hasattr(gr, kind)
        if kind in ("Slider", "Number"):
            assert kwargs.get("minimum", -float("inf")) <= param.default <= kwargs.get("maximum", float("inf"))
        if kind == "Slider":
            assert 0 < kwargs["step"] <= kwargs["maximum"] - kwargs["minimum"]
            assert (kwargs["maximum"] - kwargs["minimum"]) / kwargs["step"] <= 10_000
    assert method.title in explain(method) and method.summary in explain(method)
    assert ("unlabeled" in explain(method)) == (method.needs_data and not method.needs_labels)
    assert ("labeled validation" in explain(method)) == method.needs_data


def _panel(name, tasks):
    with gr.Blocks():
        return build_panel(get_method(name), True, tasks)


def _defaults(panel):
    values = []
    for widget in panel.widgets:
        values.append(widget.param.default)
        if widget.table is not None:
            values += [False, per_task_table(widget.param, ["a", "b", "c"])]
    return values


def test_default_widget_values_collect_to_the_method_defaults():
    for name in ("consensus", "dare", "pcb"):
        panel = _panel(name, ["a", "b", "c"])
        assert len(panel.components()) == len(_defaults(panel))
        params = collect_params(panel, _defaults(panel), ["a", "b", "c"])
        method = get_method(name)
        assert resolve_params(method.params, params, 3) == resolve_params(method.params, {}, 3)


def test_per_task_values_follow_the_merged_tasks():
    panel = _panel("pcb", ["a", "b", "c"])  # r, clip_q, lam (per task), inter
    table = pd.DataFrame({"task": ["a", "b", "c"], "lam": [0.8, 1.0, "1.3"]})
    params = collect_params(panel, [0.05, 0.01, 1.2, True, table, "tanh_sum"], ["c", "a"])
    assert params["lam"] == [1.3, 0.8]
    # unticked: the shared value
    assert collect_params(panel, [0.05, 0.01, 1.1, False, table, "tanh_sum"], ["c", "a"])["lam"] == 1.1
    # a task missing from the table takes the shared value
    assert collect_params(panel, [0.05, 0.01, 1.1, True, table.iloc[:1], "tanh_sum"], ["a", "b"])["lam"] == [0.8, 1.1]
    with pytest.raises(ParameterError, match="lam for task b: expected a number, got 'x'"):
        collect_params(panel, [0.05, 0.01, 1.2, True, table.assign(lam=[1, "x", 1]), "tanh_sum"], ["a", "b"])


def test_integer_widgets_give_integers():
    panel = _panel("consensus", ["a", "b"])
    values = _defaults(panel)
    values[0] = 3.0  # gr.Number returns floats
    assert collect_params(panel, values, ["a", "b"])["k"] == 3
