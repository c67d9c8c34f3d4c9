"""The dashboard's recipe controls: "Download recipe" for a run (Compare & download tab) and a recipe import in
the Merge tab that sets the method, modifier, tasks and parameter widgets ("Set") or also starts the merge ("Set and
merge").  Thin glue over :mod:`dashboard.recipes`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from .modifier_picker import NONE
from .recipes import import_recipe
from .widgets import per_task_table

if TYPE_CHECKING:
    from .ui import Dashboard


def panel_values(panels: dict, chosen: str, params: dict, tasks: list[str]) -> list[Any]:
    """Values for every component of ``panels`` (``panel.components()`` order): the ``chosen`` panel gets
    ``params`` (a per-task list ticks "per task" and fills the table), every other panel is left as it is."""
    values: list[Any] = []
    for name, panel in panels.items():
        for widget in panel.widgets:
            param = widget.param
            if name != chosen:
                values += [gr.skip()] * len(widget.components())
                continue
            value = params.get(param.name, param.default)
            per_task = param.per_task and isinstance(value, (list, tuple))
            shared = param.default if per_task else value
            values.append(str(shared) if param.type is str or param.auto else shared)
            if widget.per_task is not None:
                values += [per_task, per_task_table(param, tasks, value if per_task else None)]
    return values


def widget_values(dash: "Dashboard", method: str, params: dict, tasks: list[str]) -> list[Any]:
    """Values for every method panel's components: the recipe's method gets its parameters."""
    return panel_values(dash.panels, method, params, tasks)


def modifier_values(dash: "Dashboard", modifiers: list[dict]) -> list[Any]:
    """Values for the modifier picker's components: its choice ("none" or the one modifier) and its fields."""
    picked = modifiers[0] if modifiers else {"name": NONE, "params": {}}
    return [picked["name"], *panel_values(dash.modifiers.panels, picked["name"], picked["params"], [])]


class RecipesUI:
    def __init__(self, dash: "Dashboard"):
        self.dash = dash

    def import_layout(self) -> None:
        """In the Merge tab: the recipe upload and its two buttons."""
        with gr.Accordion("Import a recipe (YAML from a download or python -m merging merge)", open=False):
            self.file = gr.File(file_types=[".yaml", ".yml"], label="recipe", elem_id="recipe-file")
            with gr.Row():
                self.set_btn = gr.Button("Set", size="sm", elem_id="recipe-set")
                self.run_btn = gr.Button("Set and merge", size="sm", variant="primary", elem_id="recipe-run")
            self.note = gr.Markdown("", elem_id="recipe-note")

    def download_layout(self) -> None:
        """Beside the checkpoint download: the chosen run's recipe."""
        self.download_btn = gr.Button("Download recipe (YAML)", elem_id="recipe-download")

    def on_import(self, file, zoo_id: str, request: gr.Request, progress=gr.Progress()):
        from .ui import error, escape, owner

        who = owner(request)
        if file is None:
            raise error("recipe: upload a recipe YAML file first")
        path = getattr(file, "name", file)
        zoo_id = self.dash.current_zoo(zoo_id, progress)
        try:
            imported = import_recipe(self.dash.service, path, zoo_id, who)
        except ValueError as exc:
            raise error(exc) from None
        return [imported.method, imported.tasks,
                *widget_values(self.dash, imported.method, imported.params, imported.tasks),
                *modifier_values(self.dash, imported.modifiers), escape(imported.note)]

    def on_download(self, run: str, request: gr.Request):
        from .recipes import export_recipe
        from .ui import error, owner, run_id

        who = owner(request)
        if not run:
            raise error("run: pick a run to download its recipe")
        try:
            return str(export_recipe(self.dash.service, run_id(run, "run"), who, self.dash.download_folder()))
        except (KeyError, ValueError) as exc:
            raise error(exc.args[0] if isinstance(exc, KeyError) else exc) from None

    def wire(self, zoo_state, method, tasks, panel_inputs: list, merge_chain, merge_event, dl_run, dl_file,
             failed) -> None:
        """``merge_chain(event)`` collects the widgets after ``event``; ``merge_event(event)`` merges after it."""
        from .ui import QUICK, WORK

        outputs = [method, tasks, *panel_inputs, *self.dash.modifiers.components(), self.note]
        self.set_btn.click(self.on_import, [self.file, zoo_state], outputs, api_name="import_recipe",
                           show_progress_on=self.note, **WORK)
        imported = self.run_btn.click(self.on_import, [self.file, zoo_state], outputs, api_visibility="private",
                                      show_progress_on=self.note, **WORK)
        imported.failure(lambda: failed, None, self.note, api_visibility="private")
        merge_event(merge_chain(imported))
        self.download_btn.click(self.on_download, dl_run, dl_file, api_name="download_recipe", **QUICK)
