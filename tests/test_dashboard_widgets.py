"""Widgets generated from parameter specs, and widget values back to parameters."""
import gradio as gr
import pandas as pd
import pytest

from dashboard.widgets import HIDDEN, build_panel, collect_params, component_spec, explain, per_task_table, slider_spec
from merging import ParameterError, get_method, list_methods
from merging.params import Param, resolve_params


@pytest.mark.parametrize("param, kind, slider", [
    (Param("lam", float, 0.3, "λ", low=0.0, high=3.0, step=0.05), "Number", {"minimum": 0.0, "maximum": 3.0,
                                                                         "step": 0.05}),
    (Param("lr", float, 1e7, "rate", low=1e-12, high=1e15), "Number", None),
    (Param("k", int, 2, "tasks", low=0, high=10), "Number", {"minimum": 0, "maximum": 10, "step": 1}),
    (Param("k", int, 2, "tasks", low=0, high=1000), "Number", None),
    (Param("seed", int, 0, "seed", low=0), "Number", None),
    (Param("merge", str, "mean", "how", choices=("mean", "sum")), "Dropdown", None),
    (Param("amp", bool, True, "autocast"), "Checkbox", None),
    (Param("order", str, "", "task order"), "Textbox", None),
])
def test_component_spec(param, kind, slider):
    got_kind, kwargs = component_spec(param)
    assert got_kind == kind and kwargs["value"] == param.default and param.help in kwargs["info"]
    # Gradio must neither clamp nor round a typed number: no limits, no precision on the box
    assert not {"minimum", "maximum", "precision"} & set(kwargs)
    if param.low is not None:
        assert f"range {param.low:g}" in kwargs["info"]
    assert slider_spec(param) == slider


@pytest.mark.parametrize("method", list_methods(), ids=lambda m: m.name)
def test_every_registered_parameter_gets_a_widget_holding_its_default(method):
    for param in method.params:
        kind, kwargs = component_spec(param)
        assert hasattr(gr, kind)
        slider = slider_spec(param)
        if slider is not None:
            assert slider["minimum"] <= param.default <= slider["maximum"]
            assert 0 < slider["step"] <= slider["maximum"] - slider["minimum"]
            assert (slider["maximum"] - slider["minimum"]) / slider["step"] <= 10_000
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


@pytest.mark.parametrize("method, index, value, message", [
    ("ties", 0, 150, r"^k: 150(\.0)? is above the maximum 100"),  # a slider would have clamped it to 100
    ("ties", 2, -5, r"^lam: -5(\.0)? is below the minimum 0"),
    ("dare", 0, 1.5, r"^p: 1.5 is above the maximum 0.99"),
    ("consensus", 0, 2.5, r"^k: expected int, got 2.5"),  # not rounded to 2
    ("consensus", 0, None, r"^k: expected a number, the box is empty"),
])
def test_out_of_range_or_fractional_values_are_refused_naming_the_field(method, index, value, message):
    panel = _panel(method, ["a", "b", "c"])
    values = _defaults(panel)
    values[index] = value
    with pytest.raises(ParameterError, match=message):
        collect_params(panel, values, ["a", "b", "c"])


def test_only_the_parameters_that_apply_are_collected():
    dare = _panel("dare", ["a", "b"])  # p, rescale, seed, …, base, k, merge, lam
    names = [w.param.name for w in dare.widgets]
    values = _defaults(dare)
    values[names.index("k")] = 500  # out of range, but it does not apply to the TA base: neither checked nor sent
    assert set(collect_params(dare, values, ["a", "b"])) == set(names) - {"k", "merge"}
    values[names.index("base")] = "ties"
    with pytest.raises(ParameterError, match="^k: 500"):
        collect_params(dare, values, ["a", "b"])
    values[names.index("k")] = 30
    assert collect_params(dare, values, ["a", "b"])["k"] == 30
    tall = _panel("tall", ["a", "b"])
    assert "ties_k" not in collect_params(tall, _defaults(tall), ["a", "b"])
    # hidden while they do not apply, shown with the base that uses them
    hidden = lambda panel: [w.param.name for w in panel.widgets if HIDDEN in (w.box.elem_classes or [])]  # noqa
    assert hidden(dare) == ["k", "merge"] and hidden(tall) == ["ties_k"]


def test_modifier_picker_collects_only_the_picked_modifiers_applicable_fields():
    from dashboard import modifier_picker
    from merging import get_modifier, list_modifiers

    with gr.Blocks():
        picker = modifier_picker.build_picker(list_modifiers())
    lines = picker.panels["lines"]
    assert [w.param.name for w in lines.widgets] == ["mode", "alpha", "beta"]
    shown = {w.param.name: HIDDEN not in (w.box.elem_classes or []) for w in lines.widgets}
    assert shown == {"mode": True, "alpha": False, "beta": True}  # multi-task: α comes from the norms

    def values(mode, alpha, beta):
        return ["lines", mode, alpha, beta]
    assert modifier_picker.collect(picker, ["none", "multi-task", 1.0, 0.5]) == []
    assert modifier_picker.collect(picker, values("multi-task", 7.0, 0.3)) == [
        {"name": "lines", "params": {"mode": "multi-task", "beta": 0.3}}]
    assert modifier_picker.collect(picker, values("single-task", 0.4, 99.0)) == [
        {"name": "lines", "params": {"mode": "single-task", "alpha": 0.4}}]  # β = 1 − α: the box is not read
    assert modifier_picker.collect(picker, values("manual", 0.4, 0.2))[0]["params"] == {
        "mode": "manual", "alpha": 0.4, "beta": 0.2}
    with pytest.raises(ParameterError, match="^beta: 11.0 is above the maximum 10.0$"):
        modifier_picker.collect(picker, values("multi-task", 1.0, 11.0))
    assert get_modifier("lines").title in modifier_picker.explain(get_modifier("lines"))


@pytest.mark.parametrize("text, message", [
    ("[{name: 1", "modifiers: not valid JSON"),
    ('{"name": "lines"}', "modifiers: a JSON list such as"),
    ('[{"name": "lines", "beta": 0.5}]', "modifiers: a JSON list such as"),
])
def test_modifier_json_is_checked(text, message):
    from dashboard import modifier_picker

    with pytest.raises(ParameterError, match=message):
        modifier_picker.parse(text)
    assert modifier_picker.parse("") == [] and modifier_picker.parse('[{"name": "lines"}]') == [
        {"name": "lines", "params": {}}]
