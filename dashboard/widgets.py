"""Gradio widgets generated from a merge method's parameter spec (:class:`merging.params.Param`).

an int with a range of at most 100 steps, or a float whose spec gives a slider step → slider (the paper default,
the spec's range and step); anything else numeric (seeds, open-ended thresholds, learning rates spanning orders of
magnitude) → number box with the spec's limits; choices → dropdown; bool → checkbox; other str → text box.  A per-task parameter (λt) gets a
slider for the shared value plus an editable task/value table used when "per task" is ticked.  Values flow back
through :func:`collect_params` into a plain dict that :func:`merging.registry.run_merge` validates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

SLIDER_MAX_STEPS = 100  # wider integer ranges (seeds, open-ended thresholds) get a number box


def explain(method) -> str:
    """One-line explanation for non-experts, with the paper."""
    data = f" Learns on {'labeled' if method.needs_labels else 'unlabeled'} validation images." \
        if method.needs_data else ""
    return f"**{method.title}** — {method.summary}{data}  \n<small>{method.paper}</small>"


def method_choices(methods: Sequence) -> list[tuple[str, str]]:
    return [(m.title, m.name) for m in methods]


def component_spec(param) -> tuple[str, dict]:
    """(Gradio component class name, keyword arguments) for one parameter."""
    label = param.name + (" (shared)" if param.per_task else "")
    common = {"label": label, "info": param.help, "value": param.default}
    if param.choices:
        return "Dropdown", {**common, "choices": list(param.choices)}
    if param.type is bool:
        return "Checkbox", common
    if param.type is str:
        return "Textbox", common
    bounded = param.low is not None and param.high is not None
    limits = {k: v for k, v in (("minimum", param.low), ("maximum", param.high)) if v is not None}
    if param.type is int and bounded and param.high - param.low <= SLIDER_MAX_STEPS:
        return "Slider", {**common, "minimum": param.low, "maximum": param.high, "step": param.step or 1}
    if param.type is float and bounded and param.step is not None:
        return "Slider", {**common, "minimum": param.low, "maximum": param.high, "step": param.step}
    return "Number", {**common, **limits, **({"precision": 0} if param.type is int else {})}


def per_task_table(param, tasks: Sequence[str], value: Any = None) -> pd.DataFrame:
    value = param.default if value is None else value
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(tasks)
    return pd.DataFrame({"task": list(tasks), param.name: values})


@dataclass
class ParamWidget:
    param: Any
    value: Any  # the Gradio component of the (shared) value
    per_task: Any = None  # gr.Checkbox "set per task" (per-task params only)
    table: Any = None  # gr.Dataframe task → value

    def components(self) -> list:
        return [c for c in (self.value, self.per_task, self.table) if c is not None]


@dataclass
class MethodPanel:
    method: Any
    group: Any
    widgets: list[ParamWidget] = field(default_factory=list)

    def components(self) -> list:
        return [c for w in self.widgets for c in w.components()]

    def per_task_tables(self) -> list:
        return [w.table for w in self.widgets if w.table is not None]


def build_panel(method, visible: bool, tasks: Sequence[str] = ()) -> MethodPanel:
    """The method's widgets in a group (call inside a ``gr.Blocks`` context)."""
    import gradio as gr

    with gr.Group(visible=visible) as group:
        panel = MethodPanel(method, group)
        if not method.params:
            gr.Markdown("No parameters.", padding=True)
        for param in method.params:
            kind, kwargs = component_spec(param)
            widget = ParamWidget(param, getattr(gr, kind)(elem_id=f"p-{method.name}-{param.name}", **kwargs))
            if param.per_task:
                with gr.Accordion(f"{param.name} per task", open=False):
                    widget.per_task = gr.Checkbox(False, label=f"use a separate {param.name} for each task")
                    widget.table = gr.Dataframe(per_task_table(param, tasks), datatype=["str", "number"],
                                                interactive=True, show_label=False)
            panel.widgets.append(widget)
    return panel


def collect_params(panel: MethodPanel, values: Sequence[Any], tasks: Sequence[str]) -> dict:
    """Widget values (in ``panel.components()`` order) → parameter dict; per-task tables become one value per
    task in ``tasks`` order (tasks missing from the table take the shared value)."""
    values = list(values)
    out = {}
    for widget in panel.widgets:
        shared = values.pop(0)
        if widget.param.type is int and isinstance(shared, float) and shared.is_integer():
            shared = int(shared)
        out[widget.param.name] = shared
        if widget.per_task is not None:
            use, table = values.pop(0), values.pop(0)
            if use:
                table = pd.DataFrame(table) if not isinstance(table, pd.DataFrame) else table
                given = {str(t): v for t, v in zip(table.iloc[:, 0], table.iloc[:, 1])} if table.shape[1] >= 2 \
                    else {}
                out[widget.param.name] = [_number(given.get(t, shared), widget.param.name, t) for t in tasks]
    return out


def _number(value: Any, name: str, task: str) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            from merging.params import ParameterError
            raise ParameterError(f"{name} for task {task}: expected a number, got {value!r}") from None
    return value
