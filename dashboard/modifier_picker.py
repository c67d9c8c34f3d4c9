"""The Merge tab's modifier picker: "none" or a registered modifier (LiNeS) applied to whichever method is chosen,
with the modifier's widgets generated from its parameter spec exactly as a method's are
(:func:`dashboard.widgets.build_panel`; only the fields that apply are shown and collected).

The picked modifiers travel as JSON, the recipe's form ``[{"name": "lines", "params": {"beta": 0.5}}]``, to
:meth:`dashboard.service.Service.merge`, which records them with the run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from merging.params import ParameterError

from .widgets import MethodPanel, build_panel, collect_params

NONE = "none"
EXAMPLE = '[{"name": "lines", "params": {"beta": 0.5}}]'


def explain(modifier) -> str:
    if modifier is None:
        return "No modifier: the method's merge as it is."
    return f"**{modifier.title}** — {modifier.summary}  \n<small>{modifier.paper}</small>"


@dataclass
class ModifierPicker:
    choice: Any  # gr.Dropdown: NONE or a modifier's name
    note: Any  # gr.Markdown explaining the pick
    panels: dict[str, MethodPanel]

    def components(self) -> list:
        """The picker's inputs for :func:`collect`: the choice, then every panel's widgets."""
        return [self.choice, *(c for p in self.panels.values() for c in p.components())]

    def on_pick(self, name: str) -> list:
        import gradio as gr

        panel = self.panels.get(name)
        return [explain(panel.method if panel else None),
                *(gr.update(visible=key == name) for key in self.panels)]


def build_picker(modifiers: Sequence) -> ModifierPicker:
    """The dropdown, its note and one hidden panel per modifier (call inside a ``gr.Blocks`` context)."""
    import gradio as gr

    choice = gr.Dropdown([("none", NONE), *((m.title, m.name) for m in modifiers)], value=NONE,
                         label="modifier (applied to the merged vector)", elem_id="modifier")
    note = gr.Markdown(explain(None), elem_id="modifier-note")
    picker = ModifierPicker(choice, note, {m.name: build_panel(m, False) for m in modifiers})
    choice.change(picker.on_pick, choice, [note, *(p.group for p in picker.panels.values())],
                  api_visibility="private", concurrency_limit=None)
    return picker


def collect(picker: ModifierPicker, values: Sequence[Any]) -> list[dict]:
    """Values of :meth:`ModifierPicker.components` → ``[{"name", "params"}]`` with the picked modifier's
    applicable parameters, validated (:class:`~merging.params.ParameterError` naming the field); [] for none."""
    name, values = values[0], list(values[1:])
    if name in (None, "", NONE):
        return []
    if name not in picker.panels:
        raise ParameterError(f"modifier: unknown modifier {name!r}")
    names = list(picker.panels)
    start = sum(len(picker.panels[key].components()) for key in names[:names.index(name)])
    panel = picker.panels[name]
    return [{"name": name, "params": collect_params(panel, values[start:start + len(panel.components())], ())}]


def parse(text: str | None) -> list[dict]:
    """The JSON the Merge button sends (or a client gives) → ``[{"name": str, "params": dict}]``; one line
    naming the field otherwise."""
    try:
        items = json.loads(text) if text and text.strip() else []
    except json.JSONDecodeError as exc:
        raise ParameterError(f"modifiers: not valid JSON: {exc}") from None
    if not isinstance(items, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("params", {}), dict)
            and set(m) <= {"name", "params"} for m in items):
        raise ParameterError(f"modifiers: a JSON list such as {EXAMPLE} is expected")
    return [{"name": m["name"], "params": dict(m.get("params", {}))} for m in items]
