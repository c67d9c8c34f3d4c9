"""Gradio widgets generated from a merge method's parameter spec (:class:`merging.params.Param`).

Numbers are typed into a number box that Gradio neither clamps nor rounds: the value goes to
:func:`collect_params`, which validates *only the chosen method's* parameters and names the field in every message
(an out-of-range or fractional value is refused, never changed).  An int with a range of at most 100 steps, or a
float whose spec gives a slider step, also gets a slider beside its box for dragging (browser-side only: the box
holds the value).  Choices → dropdown; bool → checkbox; other str → text box.  A per-task parameter (λt) gets an
editable task/value table used when "per task" is ticked.  A parameter with ``when`` (DARE's TIES ``k``) is shown
only while it applies, and only applicable parameters are collected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from merging.params import ParameterError, applicable, resolve_params

HIDDEN = "param-not-applicable"  # CSS class of a widget whose parameter does not apply (display: none)
SLIDER_MAX_STEPS = 100  # wider integer ranges (seeds, open-ended thresholds) get a number box


def explain(method) -> str:
    """One-line explanation for non-experts, with the paper."""
    data = f" Learns on {'labeled' if method.needs_labels else 'unlabeled'} validation images." \
        if getattr(method, "needs_data", False) else ""
    return f"**{method.title}** — {method.summary}{data}  \n<small>{method.paper}</small>"


def method_choices(methods: Sequence) -> list[tuple[str, str]]:
    return [(m.title, m.name) for m in methods]


def component_spec(param) -> tuple[str, dict]:
    """(Gradio component class name, keyword arguments) for one parameter's value widget (numbers: a box
    without Gradio-side limits or rounding; the range is in its help text)."""
    label = param.name + (" (shared)" if param.per_task else "")
    common = {"label": label, "info": param.help, "value": param.default}
    if param.choices:
        return "Dropdown", {**common, "choices": list(param.choices)}
    if param.type is bool:
        return "Checkbox", common
    if param.type is str or param.auto:
        return "Textbox", {**common, "value": str(param.default)}
    if param.low is not None or param.high is not None:
        low = "" if param.low is None else f"{param.low:g}"
        high = "" if param.high is None else f"{param.high:g}"
        common["info"] = f"{param.help} (range {low} … {high})"
    return "Number", {**common, "step": param.step or (1 if param.type is int else None)}


def slider_spec(param) -> dict | None:
    """Keyword arguments of the drag slider beside a number box, or None when the parameter gets none."""
    if param.type not in (int, float) or param.low is None or param.high is None or param.choices or param.auto:
        return None
    if param.type is int and param.high - param.low <= SLIDER_MAX_STEPS:
        return {"minimum": param.low, "maximum": param.high, "step": param.step or 1}
    if param.type is float and param.step is not None:
        return {"minimum": param.low, "maximum": param.high, "step": param.step}
    return None


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
    slider: Any = None  # drag slider mirroring ``value`` (not an input)
    box: Any = None  # the group holding the widget (hidden while ``param.when`` does not hold)

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

    defaults = method.defaults()
    with gr.Group(visible=visible) as group:
        panel = MethodPanel(method, group)
        if not method.params:
            gr.Markdown("No parameters.", padding=True)
        for param in method.params:
            kind, kwargs = component_spec(param)
            shown = param.applies(defaults)
            with gr.Column(elem_id=f"w-{method.name}-{param.name}", elem_classes=[] if shown else [HIDDEN]) as box:
                widget = ParamWidget(param, getattr(gr, kind)(elem_id=f"p-{method.name}-{param.name}", **kwargs),
                                     box=box)
                slider = slider_spec(param)
                if slider is not None:
                    widget.slider = gr.Slider(value=param.default, show_label=False, container=False,
                                              elem_classes="drag-only", elem_id=f"s-{method.name}-{param.name}",
                                              **slider)
                    widget.slider.input(None, widget.slider, widget.value, js="(v) => v")
                    widget.value.change(None, widget.value, widget.slider, js="(v) => v")
                if param.per_task:
                    with gr.Accordion(f"{param.name} per task", open=False):
                        widget.per_task = gr.Checkbox(False, label=f"use a separate {param.name} for each task")
                        widget.table = gr.Dataframe(per_task_table(param, tasks), datatype=["str", "number"],
                                                    interactive=True, show_label=False)
            panel.widgets.append(widget)
        by_name = {w.param.name: w for w in panel.widgets}
        for name in dict.fromkeys(w.param.when[0] for w in panel.widgets if w.param.when):
            shows = {f"w-{method.name}-{w.param.name}": list(w.param.when_values()) for w in panel.widgets
                     if w.param.when and w.param.when[0] == name}
            # in the browser only: a server round trip re-renders the panel and can race with the next click
            by_name[name].value.change(None, by_name[name].value, None, js=(
                f"(v) => {{ for (const [id, want] of Object.entries({json.dumps(shows)})) "
                f"document.getElementById(id)?.classList.toggle({json.dumps(HIDDEN)}, !want.includes(v)); }}"))
    return panel


def collect_params(panel: MethodPanel, values: Sequence[Any], tasks: Sequence[str]) -> dict:
    """Widget values (in ``panel.components()`` order) → the parameters that apply, validated against the
    method's spec (:class:`~merging.params.ParameterError` naming the field); per-task tables become one value
    per task in ``tasks`` order (tasks missing from the table take the shared value)."""
    values = list(values)
    out = {}
    for widget in panel.widgets:
        shared = values.pop(0)
        if widget.param.type is int and isinstance(shared, float) and shared.is_integer():
            shared = int(shared)
        if shared is None and widget.param.type in (int, float):
            raise ParameterError(f"{widget.param.name}: expected a number, the box is empty")
        out[widget.param.name] = shared
        if widget.per_task is not None:
            use, table = values.pop(0), values.pop(0)
            if use:
                table = pd.DataFrame(table) if not isinstance(table, pd.DataFrame) else table
                given = {str(t): v for t, v in zip(table.iloc[:, 0], table.iloc[:, 1])} if table.shape[1] >= 2 \
                    else {}
                out[widget.param.name] = [_number(given.get(t, shared), widget.param.name, t) for t in tasks]
    out = applicable(panel.method.params, out)
    resolve_params([p for p in panel.method.params if p.name in out], out, len(tasks) or None)
    return out


def _number(value: Any, name: str, task: str) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ParameterError(f"{name} for task {task}: expected a number, got {value!r}") from None
    return value
