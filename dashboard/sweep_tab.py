"""The Sweep tab: a 1-D or 2-D grid over the Merge tab's full settings, run as a background job of the session.

What a sweep holds fixed is what the Merge tab shows — tasks, method and every other parameter of the method's
panel — and the tab says so before and after it runs ("Sweeping k over … × λ over … for TIES-Merging with
merge=mean · tasks …").  Several methods can be overlaid on a 1-D grid; a 2-D grid (one method) is a heatmap.
Every sweep is stored (:mod:`dashboard.sweeps`), can be reopened, compared with others and its best point applied
to the Merge tab.  Only methods with a numeric parameter are offered.
"""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from . import modifier_picker, sweep_figures
from .history import modifiers_text
from .sweeps import SweepRecord, describe, edge_warning, sweepable, symbol, values_text
from .ui import QUICK, WORK, Stopped, decode_sent, error, escape, owner, run_id
from .recipes_ui import modifier_values, widget_values
from .widgets import method_choices

NONE = ""  # the second parameter's "no second parameter"
METRIC_CHOICES = [("mean accuracy", "accuracy"), ("mean normalized accuracy", "normalized")]
FIRST_NOTE = ("Accuracy on validation images (never test) at every grid point, with the θ0 (pretrained) and "
              "individual (fine-tuned) means on the same images.")


def parse_values(param, text: str, field: str) -> list:
    """Comma-separated ``text`` → values checked by the parameter's spec; one line naming ``field`` otherwise."""
    items = [v for v in str(text or "").replace(";", ",").split(",") if v.strip()]
    if not items:
        raise error(f"{field}: give comma-separated values for {param.name}")
    try:
        return list(dict.fromkeys(param.coerce(v.strip()) for v in items))
    except ValueError as exc:
        raise error(f"{field}: {exc}") from None


class SweepTab:
    def __init__(self, dashboard):
        self.d = dashboard
        self.specs = {m.name: m for m in dashboard.methods if sweepable(m)}

    # ---------------------------------------------------------------- parameter pickers
    def names(self, methods: list[str]) -> list[str]:
        """Parameters every chosen method can sweep (in the first method's order)."""
        chosen = [self.specs[m] for m in methods or [] if m in self.specs]
        if not chosen:
            return []
        common = set.intersection(*({p.name for p in sweepable(s)} for s in chosen))
        return [p.name for p in sweepable(chosen[0]) if p.name in common]

    def grid_text(self, methods: list[str], name: str) -> str:
        spec = next((self.specs[m] for m in methods or [] if m in self.specs), None)
        grid = spec.param(name).grid if spec is not None and name in {p.name for p in spec.params} else None
        return values_text(grid or ())

    def pickers(self, methods: list[str], first: str | None, second: str | None) -> tuple:
        """(first parameter, its values, second parameter, its values) updates for the chosen methods: a choice
        that no longer applies is replaced (λ when offered), the values of a replaced one reset to its grid."""
        names = self.names(methods)
        new_first = first if first in names else ("lam" if "lam" in names else (names[0] if names else None))
        seconds = [n for n in names if n != new_first] if len(methods or []) == 1 else []
        new_second = second if second in seconds else NONE
        return (gr.update(choices=[(symbol(n), n) for n in names], value=new_first),
                self.grid_text(methods, new_first) if new_first != first else gr.skip(),
                gr.update(choices=[("none (1-D)", NONE)] + [(symbol(n), n) for n in seconds], value=new_second,
                          interactive=bool(seconds)),
                self.grid_text(methods, new_second) if new_second and new_second != second else
                ("" if not new_second else gr.skip()))

    def on_methods(self, methods: list[str], first: str, second: str):
        return self.pickers(methods, first, second)

    def on_first(self, methods: list[str], first: str, second: str):
        _, _, second_update, second_values = self.pickers(methods, first, second)
        return self.grid_text(methods, first), second_update, second_values

    def on_second(self, methods: list[str], second: str):
        return self.grid_text(methods, second) if second else ""

    def on_follow(self, method: str, first: str, second: str):
        """The Merge tab's method becomes the swept one (when it has something to sweep), with its pickers."""
        if method not in self.specs:
            return [gr.skip()] * 5
        return [[method], *self.pickers([method], first, second)]

    # ---------------------------------------------------------------- settings
    def settings(self, methods: list[str], tasks: list[str], values: tuple) -> tuple[dict[str, dict], list[dict]]:
        """(each chosen method's parameters, the picked modifiers) as set in the Merge tab (``values``: every
        panel's widget values, then the modifier picker's; ValueError naming the field)."""
        unknown = [m for m in methods or [] if m not in self.specs]
        if unknown:
            raise ValueError(f"sweep methods: {unknown[0]!r} has no numeric parameter to sweep")
        if not methods:
            raise ValueError("sweep methods: pick at least one method")
        count = len(self.d.modifiers.components())
        panels, picked = values[:len(values) - count], values[len(values) - count:]
        return ({m: self.d.panel_params(m, tasks, panels) for m in methods},
                modifier_picker.collect(self.d.modifiers, picked))

    def grid(self, methods: list[str], first: str, first_values: str, second: str, second_values: str) -> dict:
        names = self.names(methods)
        grid = {}
        for field, name, text in (("values", first, first_values), ("second values", second, second_values)):
            if not name:
                continue
            if name not in names:
                raise error(f"sweep parameter: {name!r} cannot be swept for {', '.join(methods or []) or 'no method'}"
                            f" (offered: {', '.join(names) or 'none'})")
            grid[name] = parse_values(self.specs[methods[0]].param(name), text, field)
        if not grid:
            raise error("sweep parameter: pick the parameter to sweep")
        return grid

    def on_preview(self, methods: list[str], first: str, first_values: str, second: str, second_values: str,
                   tasks: list[str], *values):
        """The line saying what the sweep will run, from the Merge tab's current settings (or what is wrong)."""
        try:
            settings, modifiers = self.settings(methods, tasks, values)
            grid = self.grid(methods, first, first_values, second, second_values)
        except (ValueError, gr.Error) as exc:
            return f"⚠️ {escape(getattr(exc, 'message', exc))}"
        return escape(describe([self.specs[m].title for m in methods], grid, list(settings.values()), tasks,
                               modifiers=modifiers)) + " — from the **Merge & see** tab (change them there)."

    def on_collect(self, methods: list[str], tasks: list[str], *values):
        """The Merge tab's settings and modifiers of the chosen methods, as the JSON the sweep is sent."""
        try:
            settings, modifiers = self.settings(methods, tasks, values)
        except ValueError as exc:
            raise error(exc) from None
        return json.dumps(settings), json.dumps(modifiers)

    # ---------------------------------------------------------------- running and showing
    def on_sweep(self, zoo_id: str, methods: list[str], settings_json: str, first: str, first_values: str,
                 second: str, second_values: str, tasks: list[str], metric: str, modifiers_json: str,
                 request: gr.Request, progress=gr.Progress()):
        """Run the sweep (every point's merge followed by the modifiers) as the session's background job; its
        figure, table, note, and the sweep pickers."""
        who = owner(request)
        methods = [m for m in (methods if isinstance(methods, list) else [methods]) if m]
        settings, modifiers = decode_sent("settings", settings_json, modifiers_json)
        if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
            raise error('settings: a JSON object of method → parameters is expected, such as {"ties": {"k": 20}}')
        grid = self.grid(methods, first, first_values, second, second_values)
        label = f"sweep {'+'.join(methods)} {' × '.join(grid)}"
        try:
            zoo_id = self.d.current_zoo(zoo_id, progress)
            record = self.d.submit(lambda p: self.d.service.sweep(zoo_id, methods, grid, settings, tasks or None,
                                                                  p, who, modifiers), request, label, progress)
        except Stopped as stop:
            return gr.skip(), gr.skip(), gr.skip(), f"**Sweep cancelled** ({escape(stop)}). Nothing was recorded.", \
                gr.skip()
        return (record.id, *self.outputs(record, metric), self.picker(who))

    def outputs(self, record: SweepRecord, metric: str) -> tuple:
        """(figure, table of the point means, note) of a stored sweep."""
        return sweep_figures.sweep_figure(record, metric or "accuracy"), means_table(record), note(record)

    def picker(self, who: str):
        return gr.update(choices=self.d.service.sweeps.labels(who))

    def on_history(self, request: gr.Request):
        return self.picker(owner(request))

    def on_metric(self, sweep_id, metric: str, request: gr.Request):
        if sweep_id is None:
            return gr.skip()
        return sweep_figures.sweep_figure(self.record(sweep_id, owner(request)), metric)

    def record(self, sweep_id, who: str) -> SweepRecord:
        try:
            return self.d.service.sweeps.get(run_id(sweep_id, "sweep"), who)
        except KeyError as exc:
            raise error(exc.args[0]) from None

    def on_show(self, sweep_ids: list, metric: str, request: gr.Request):
        """One stored sweep: reopened (figure, table, note; "Apply best" then applies it).  Several: their lines
        over the first parameter on one figure, and the settings that differ."""
        who = owner(request)
        ids = [run_id(s, "sweeps") for s in sweep_ids or []]
        if not ids:
            raise error("sweeps: pick one sweep to reopen, or several to compare")
        if len(ids) == 1:
            record = self.record(ids[0], who)
            return (record.id, *self.outputs(record, metric))
        try:
            comparison = self.d.service.sweeps.compare(ids, who)
        except (KeyError, ValueError) as exc:
            raise error(exc.args[0] if isinstance(exc, KeyError) else exc) from None
        first = self.record(ids[0], who)
        levels = sweep_figures.reference_levels(first.references, first.tasks)
        figure = sweep_figures.sweep_lines(comparison.profiles, comparison.x or "value", levels,
                                           title=f"{len(ids)} sweeps: mean accuracy ({first.split} split)")
        text = "\n\n".join(f"⚠️ {escape(w)}" for w in comparison.warnings) or \
            f"{len(ids)} sweeps; the table lists only the settings that differ."
        return gr.skip(), figure, comparison.differences.reset_index(), text

    def on_apply(self, sweep_id, zoo_id: str, request: gr.Request):
        """The best point of the shown sweep (with the settings and the modifier it held fixed) into the Merge
        tab."""
        if sweep_id is None:
            raise error("apply best: run a sweep (or reopen one) first")
        record = self.record(sweep_id, owner(request))
        found = record.best()
        if found is None:
            raise error(f"sweep {record.id} has no results to apply")
        if len(record.modifiers) > 1:
            raise error(f"apply best: sweep {record.id} applied {len(record.modifiers)} modifiers; the Merge tab "
                        "picks one (merge it through the API or the CLI)")
        method, best = found
        params = {**record.settings.get(method, {}), **best.point}
        same_zoo = zoo_id == record.zoo_hash
        point = ", ".join(f"{symbol(k)}={v:g}" for k, v in best.point.items())
        then = f", then {modifiers_text(record.modifiers)}" if record.modifiers else ""
        status = f"Applied the best point of sweep {record.id} ({method}, {point}{then}) to the Merge tab" + \
            ("; press **Merge** to evaluate it on the test split." if same_zoo else
             f"; it was swept on zoo {escape(record.zoo)}, not the one loaded now: the tasks were left as they are.")
        return [gr.Tabs(selected="merge"), method, record.tasks if same_zoo else gr.skip(),
                *widget_values(self.d, method, params, record.tasks), *modifier_values(self.d, record.modifiers),
                status]

    # ---------------------------------------------------------------- layout
    def build(self, method: str) -> None:
        """The tab's components (call inside the Sweep tab of the Blocks); ``method``: the Merge tab's first."""
        first = method if method in self.specs else next(iter(self.specs))
        self.settings_md = gr.Markdown("", elem_id="sweep-settings")
        with gr.Row():
            self.methods = gr.Dropdown(method_choices(list(self.specs.values())), value=[first], multiselect=True,
                                       label="methods (several: overlaid on a 1-D grid)", elem_id="sweep-methods",
                                       scale=2)
            names = self.names([first])
            start = "lam" if "lam" in names else names[0]
            self.first = gr.Dropdown([(symbol(n), n) for n in names], value=start, label="parameter (x axis)",
                                     elem_id="sweep-param", allow_custom_value=True)
            self.first_values = gr.Textbox(self.grid_text([first], start), elem_id="sweep-values",
                                           label="values (comma-separated; default: the paper's grid)")
            self.second = gr.Dropdown([("none (1-D)", NONE)] + [(symbol(n), n) for n in names if n != start],
                                      value=NONE, label="second parameter (heatmap rows)", elem_id="sweep-param2",
                                      allow_custom_value=True)
            self.second_values = gr.Textbox("", label="second values", elem_id="sweep-values2")
        with gr.Row():
            self.run_btn = gr.Button("Run sweep", variant="primary", elem_id="sweep-btn")
            self.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="sweep-cancel")
            self.apply_btn = gr.Button("Apply best to the Merge tab", elem_id="sweep-apply")
            self.metric = gr.Radio(METRIC_CHOICES, value="accuracy", label="plot", elem_id="sweep-metric")
        self.note = gr.Markdown(FIRST_NOTE, elem_id="sweep-note", elem_classes="progress-slot")
        self.plot = gr.Plot(sweep_figures.placeholder("press Run sweep"), label="sweep", elem_id="plot-sweep")
        self.table = gr.Dataframe(label="mean over the tasks at each point", interactive=False,
                                  elem_id="sweep-table")
        with gr.Accordion("Stored sweeps: reopen one, or compare several", open=False):
            with gr.Row():
                self.stored = gr.Dropdown([], multiselect=True, label="sweeps", elem_id="sweep-history", scale=4,
                                          allow_custom_value=True)
                self.show_btn = gr.Button("Show", elem_id="sweep-show", scale=1)
        self.state = gr.State(None)
        self.settings_json = gr.Textbox("", visible=False, elem_id="sweep-settings-json")  # in the API: settings
        self.modifiers_json = gr.Textbox("", visible=False, elem_id="sweep-modifiers-json")  # … and modifiers

    def wire(self, demo, tab, tabs, zoo_state, method, tasks, status, panel_inputs: list) -> None:
        d = self.d
        merge_settings = [*panel_inputs, *d.modifiers.components()]  # what the Merge tab has set
        targets = [self.first, self.first_values, self.second, self.second_values]
        # The pickers follow a user's edit (.input) and the Merge tab (on_follow sets both), never .change: a
        # .change listener here loops forever in Gradio 6.31 when the tab mounts while the value is being set.
        self.methods.input(self.on_methods, [self.methods, self.first, self.second], targets,
                           api_visibility="private", **QUICK)
        self.first.input(self.on_first, [self.methods, self.first, self.second], targets[1:],
                         api_visibility="private", **QUICK)
        self.second.input(self.on_second, [self.methods, self.second], self.second_values,
                          api_visibility="private", **QUICK)
        method.change(self.on_follow, [method, self.first, self.second], [self.methods, *targets],
                      api_visibility="private", show_progress="hidden", **QUICK)
        picked = [self.methods, self.first, self.first_values, self.second, self.second_values]
        gr.on([tab.select, self.methods.change, self.first.change, self.second.change, self.first_values.blur,
               self.second_values.blur], self.on_preview, [*picked, tasks, *merge_settings], self.settings_md,
              api_visibility="private", show_progress="hidden", trigger_mode="always_last", **QUICK)  # the latest
        collecting = self.run_btn.click(self.on_collect, [self.methods, tasks, *merge_settings],
                                        [self.settings_json, self.modifiers_json], api_visibility="private",
                                        show_progress="hidden", **QUICK)
        collecting.success(self.on_sweep, [zoo_state, self.methods, self.settings_json, *picked[1:], tasks,
                                           self.metric, self.modifiers_json],
                           [self.state, self.plot, self.table, self.note, self.stored],
                           api_name="sweep", show_progress_on=self.note, **WORK)
        self.cancel_btn.click(d.on_cancel, None, d.cancel_reply, api_visibility="private", **QUICK)
        self.metric.input(self.on_metric, [self.state, self.metric], self.plot, api_visibility="private", **QUICK)
        self.show_btn.click(self.on_show, [self.stored, self.metric], [self.state, self.plot, self.table, self.note],
                            api_name="sweep_show", **QUICK)
        self.apply_btn.click(self.on_apply, [self.state, zoo_state], [tabs, method, tasks, *merge_settings, status],
                             api_name="sweep_apply", **QUICK)
        demo.load(self.on_history, None, self.stored, api_visibility="private", **QUICK)


def means_table(record: SweepRecord) -> pd.DataFrame:
    """One row per (method, point): mean accuracy and normalized accuracy over the tasks, in percent."""
    names = list(record.grid)
    table = record.table()
    means = table.groupby(["method", *names], sort=False, as_index=False)[["accuracy", "normalized"]].mean()
    means[["accuracy", "normalized"]] = (100 * means[["accuracy", "normalized"]]).round(2)
    return means.rename(columns={"accuracy": "mean accuracy %", "normalized": "mean normalized %",
                                 **{n: symbol(n) for n in names}})


def note(record: SweepRecord) -> str:
    """What the sweep ran, its best point, the references, and edge warnings (escaped Markdown)."""
    titles = dict(zip(record.methods, record.titles))
    lines = [f"**Sweep {record.id}** ({record.seconds:.1f} s): " +
             escape(describe(record.titles, record.grid, [record.settings.get(m, {}) for m in record.methods],
                             record.tasks, record.split, record.modifiers))]
    found = record.best()
    if found is not None:
        method, best = found
        point = ", ".join(f"{symbol(k)} = {v:g}" for k, v in best.point.items())
        levels = sweep_figures.reference_levels(record.references, record.tasks)
        refs = ", ".join(f"{sweep_figures.REFERENCE_STYLE[m][0]} {v:.1f} %" for m, v in levels.items())
        accuracy = 100 * record.best_accuracy()
        lines.append(f"Best: **{escape(titles.get(method, method))}, {point}** — {accuracy:.1f} % "
                     f"mean {record.split} accuracy, {100 * best.mean_normalized:.1f} % of fine-tuned (the best "
                     f"point has the highest mean normalized accuracy). References: {refs}. "
                     "**Apply best** sets it in the Merge tab.")
    lines += [f"⚠️ {escape(w)}" for w in edge_warning(record.bests(), record.grid, titles)]
    return "\n\n".join(lines)
