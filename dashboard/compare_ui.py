"""Compare & download tab additions: the masks of the first two runs picked for comparison side by side with
their difference, and "Open in Merge & see" (a run of the history redrawn, merged again when its tensors left
memory).  Thin glue over :mod:`dashboard.mask_compare` and :meth:`Service.reopen`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from . import figures
from .mask_compare import compare_masks

if TYPE_CHECKING:
    from .ui import Dashboard


class CompareUI:
    def __init__(self, dash: "Dashboard"):
        self.dash = dash

    def masks_layout(self) -> None:
        gr.Markdown("#### Masks of two runs (the first two picked above)")
        self.masks_btn = gr.Button("Compare masks", size="sm", elem_id="mask-compare-btn")
        self.masks_md = gr.Markdown("", elem_id="mask-compare-note", elem_classes="progress-slot")
        waiting = figures.placeholder("pick two runs with masks and press Compare masks")
        with gr.Row():
            self.plot_a = gr.Plot(waiting, label="run A: kept by c tasks per layer", elem_id="plot-mask-a")
            self.plot_b = gr.Plot(waiting, label="run B: kept by c tasks per layer", elem_id="plot-mask-b")
        self.plot_diff = gr.Plot(waiting, label="where the masks differ", elem_id="plot-mask-diff")
        self.numbers = gr.Dataframe(label="mask difference per layer (counts and %)", interactive=False,
                                    elem_id="mask-compare-table")

    def open_layout(self) -> None:
        self.open_btn = gr.Button("Open in Merge & see", elem_id="open-run")

    def on_masks(self, runs: list, request: gr.Request, progress=gr.Progress()):
        from .ui import Stopped, error, escape, owner, run_id

        who = owner(request)
        ids = [run_id(r, "runs to compare") for r in (runs or [])]
        if len(ids) < 2:
            raise error("runs to compare: pick two runs whose masks to compare")
        try:
            comparison = self.dash.submit(lambda p: compare_masks(self.dash.service, ids[0], ids[1], who, progress=p),
                                          request, "compare masks", progress)
        except Stopped as stop:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Cancelled** ({escape(stop)})."
        figs = comparison.figures()
        note = escape(comparison.summary()) + ("" if len(ids) == 2 else f" (runs after #{ids[1]} are not used)")
        return figs["a"], figs["b"], figs["difference"], comparison.numbers(), note

    def on_open(self, run: str, request: gr.Request, progress=gr.Progress()):
        from .ui import Stopped, error, escape, owner, run_id

        who = owner(request)
        if not run:
            raise error("run: pick a run to open")
        number = run_id(run, "run")
        try:
            view = self.dash.submit(lambda p: self.dash.service.reopen(number, who, p), request, "open run", progress)
        except Stopped as stop:
            return [gr.skip()] * (len(self.dash.run_targets)) + [f"**Cancelled** ({escape(stop)})."]
        return [gr.Tabs(selected="merge"), *self.dash.run_outputs(view, who), f"Run #{view.id} reopened."]

    def wire(self, cmp_runs, dl_run, tabs) -> None:
        from .ui import WORK

        self.masks_btn.click(self.on_masks, cmp_runs, [self.plot_a, self.plot_b, self.plot_diff, self.numbers,
                                                      self.masks_md],
                             api_name="compare_masks", show_progress_on=self.masks_md, **WORK)
        self.open_btn.click(self.on_open, dl_run, [tabs, *self.dash.run_targets], api_name="open_run", **WORK)
