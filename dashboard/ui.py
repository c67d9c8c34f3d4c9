"""The Gradio app: layout and event wiring over :class:`~dashboard.service.Service` and the job queue.

Gradio state holds only ids (zoo id, run id); everything heavy stays in the service.  Long work runs as a
background job (:mod:`dashboard.jobs`): the event handler follows the job and mirrors its stage names into
``gr.Progress``; the Cancel button sets the job's cancel token, so the merge itself stops.  Failures become a
``gr.Error`` message and leave every output as it was.
"""
from __future__ import annotations

import html
import json
import secrets
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from merging.atomic import clean_stale_temp

from . import figures, guide, modifier_picker
from .compare_ui import CompareUI
from .recipes_ui import RecipesUI
from .sweep_figures import sweep_figure
from .jobs import CANCELLED, DONE, QUEUED, RUNNING, Job, JobQueue
from .service import Service, Settings, zoos_folder
from .uploads import ARCHIVE_SUFFIXES, is_archive, load_archive
from .widgets import HIDDEN, build_panel, collect_params, explain, method_choices, per_task_table

MASK_PLOTS = ("histogram", "layers", "jaccard", "density")
PLOTS = MASK_PLOTS + ("accuracy", "normalized")
WORK = {"concurrency_limit": 16, "concurrency_id": "work"}  # handlers that wait on the job queue
QUICK = {"concurrency_limit": None}
CSS = """
#status {min-height: 2em}
.progress-slot {min-height: 4em}
.gradio-container {max-width: 1500px !important}
.drag-only input[type=number], .drag-only button {display: none !important}
.%s {display: none !important}
""" % HIDDEN
NO_SESSION = ("this action needs a session: use the web page or gradio_client (a bare REST call must send a "
              "session_hash, so that its job has an owner who can cancel it)")


class Stopped(Exception):
    """The job was cancelled by the user."""


def escape(text: Any) -> str:
    """``text`` for a toast or Markdown: HTML special characters shown literally, never rendered."""
    return html.escape(str(text), quote=False)


def error(message: Any) -> gr.Error:
    """A toast with ``message`` shown literally (Gradio renders error messages as HTML)."""
    return gr.Error(escape(message), duration=None, title="mergescope", print_exception=False)


def decode_sent(field: str, text: str, modifiers_json: str) -> tuple[Any, list[dict]]:
    """(the JSON ``text`` a button sent for ``field``, the modifiers it sent); one line naming the field if bad."""
    try:
        return json.loads(text or "{}"), modifier_picker.parse(modifiers_json)
    except json.JSONDecodeError as exc:
        raise error(f"{field}: not valid JSON: {exc}") from None
    except ValueError as exc:
        raise error(exc) from None


def owner(request: gr.Request | None) -> str:
    """Who a request acts for: the login name when the app has a login, else the browser session; refused
    without either (a job nobody could cancel)."""
    username = getattr(request, "username", None)
    if username:
        return f"user:{username}"
    session = getattr(request, "session_hash", None)
    if not session or not _sent_session(request):
        raise error(NO_SESSION)
    return f"session:{session}"


def _sent_session(request: gr.Request) -> bool:
    """False for a bare REST call (``/call/<api>`` whose body has no session_hash): Gradio then makes one up
    from the event id, which the caller never learns, so it could neither cancel the job nor be held to the
    per-session limit."""
    raw = getattr(request, "request", None)
    if raw is None or "/call/" not in raw.url.path:
        return True  # the page and gradio_client join the queue with their session
    try:
        return bool(json.loads(getattr(raw, "_body", b"") or b"{}").get("session_hash"))
    except ValueError:
        return False


def run_id(value: Any, field: str) -> int:
    """A run number typed or picked in ``field``; a clean message otherwise."""
    text = str(value if value is not None else "").strip().lstrip("#")
    if not text.isdigit():
        raise error(f"{field}: a run number such as 12 is expected, got {str(value)!r}")
    return int(text)


class Dashboard:
    def __init__(self, service: Service, jobs: JobQueue, default_zoo: str | None = None):
        self.service, self.jobs, self.default_zoo = service, jobs, default_zoo
        self.methods = service.methods()
        self._shared: dict[tuple, Job] = {}
        self._shared_lock = threading.Lock()
        self.downloads: Path | None = None  # set by create_app: under Gradio's cache, served only by exact URL

    # ---------------------------------------------------------------- jobs
    def shared(self, key: tuple, fn: Callable) -> Job:
        """One job per key for work every session wants (loading a zoo, its baselines); failures are retried."""
        with self._shared_lock:
            job = self._shared.get(key)
            if job is None or job.state not in (DONE, QUEUED, RUNNING):
                job = self._shared[key] = self.jobs.submit(fn, owner="", label=" ".join(map(str, key)))
            return job

    def preload(self) -> None:
        """Load the default zoo and evaluate its baselines in the background (at app start)."""
        job = self.default_load()
        threading.Thread(target=self._baselines_after, args=(job,), daemon=True).start()

    def _baselines_after(self, load: Job) -> None:
        if load.wait() and load.state == DONE:
            self.baseline_job(load.result.id)
        figures.warm_up()

    def baseline_job(self, zoo_id: str) -> Job:
        return self.shared(("baselines", zoo_id), lambda p: self.service.baselines(zoo_id, p))

    def follow(self, job: Job, progress) -> Any:
        """Mirror the job's progress into Gradio until it ends; its result, or gr.Error / :class:`Stopped`."""
        for fraction, stage in self.jobs.follow(job, 0.1):
            progress(fraction, desc=stage)
        if job.state == DONE:
            return job.result
        if job.state == CANCELLED:
            raise Stopped(job.error)
        raise error(job.error)

    def submit(self, fn: Callable, request: gr.Request | None, label: str, progress) -> Any:
        """Run ``fn`` as a job owned by the request's session (at most ``jobs_per_session`` at once)."""
        who, limit = owner(request), self.service.settings.jobs_per_session
        with self._shared_lock:
            if len(self.jobs.active(who)) >= limit:
                raise error(f"you already have {limit} job{'s' if limit != 1 else ''} running or queued: wait for "
                            "one to finish or press Cancel")
            job = self.jobs.submit(fn, owner=who, label=label)
        return self.follow(job, progress)

    def download_folder(self) -> Path:
        """A fresh folder with an unguessable name under Gradio's cache: a file there is served to whoever has
        its exact URL (only the session that asked for it); folders are never listed."""
        return Path(self.downloads) / secrets.token_urlsafe(24)

    # ---------------------------------------------------------------- load
    def load_outputs(self, entry) -> list:
        tasks = entry.zoo.task_names
        tables = [per_task_table(w.param, tasks) for p in self.panels.values() for w in p.widgets if w.table]
        return [entry.id, escape(self.service.zoo_summary(entry)), self.service.zoo_table(entry),
                gr.update(choices=tasks, value=tasks), *tables,
                f"Loaded **{escape(entry.name)}**. Baselines are evaluated in the background; pick a method and "
                "press Merge."]

    def default_load(self) -> Job | None:
        """The (shared) job loading the default zoo."""
        if not self.default_zoo:
            return None
        path = self.default_zoo
        return self.shared(("load", str(Path(path).resolve())), lambda p: self.service.load_zoo(path, p))

    def current_zoo(self, zoo_id: str, progress) -> str:
        """The session's zoo; before the page's first load has finished, the default zoo (waiting for it)."""
        job = None if zoo_id else self.default_load()
        return self.follow(job, progress).id if job is not None else zoo_id

    def on_page_load(self, request: gr.Request, progress=gr.Progress()):
        job = self.default_load()
        if job is None:
            return [gr.skip()] * (len(self.load_targets) - 1) + ["Load a zoo to begin (tab **Load zoo**)."]
        return self.load_outputs(self.follow(job, progress))

    def on_load(self, source: str, path: str, files, zoo_id: str, request: gr.Request, progress=gr.Progress()):
        """Load the demo zoo, a folder/manifest inside the zoo roots, uploaded safetensors (moved out of
        Gradio's upload folder into the session's own, so they are stored once) or a zoo archive."""
        who = owner(request)
        if source == "archive":
            paths = [getattr(f, "name", f) for f in files or []]
            if len(paths) != 1 or not is_archive(paths[0]):
                raise error(f"zoo archive: upload one archive ({', '.join(ARCHIVE_SUFFIXES)}) holding zoo.json, "
                            "the checkpoints, heads and data")
            entry = self.submit(lambda p: load_archive(self.service, paths[0], who, progress=p), request,
                                "load archive", progress)
        elif source == "upload":
            paths = [getattr(f, "name", f) for f in files or []]
            entry = self.submit(lambda p: self.service.load_uploads(paths, who, zoo_id or None, p, move=True),
                                request, "load upload", progress)
        else:
            path = self.default_zoo if source == "demo" else path
            if not path:
                raise error(f"zoo path: give a zoo folder or zoo.json inside the zoo roots "
                            f"({self.service.roots.describe()})")
            entry = self.submit(lambda p: self.service.load_zoo(path, p), request, "load zoo", progress)
        return self.load_outputs(entry)

    def on_baselines(self, zoo_id: str, progress=gr.Progress()):
        if not zoo_id:
            return gr.skip(), gr.skip()
        try:
            self.follow(self.baseline_job(zoo_id), progress)
        except Stopped:
            return gr.skip(), "Baseline evaluation was cancelled."
        entry = self.service.zoo(zoo_id)
        n = len(entry.baselines)
        note = f"Baselines ready for {n} task{'s' if n != 1 else ''} (pretrained and individual fine-tuned, " \
            "test split)." if n else "This zoo has no heads or test data: merges show mask statistics only."
        return self.service.zoo_table(entry), note

    # ---------------------------------------------------------------- merge
    def on_method(self, method: str):
        spec = next(m for m in self.methods if m.name == method)
        return [explain(spec)] + [gr.update(visible=name == method) for name in self.panels]

    def panel_params(self, method: str, tasks: list[str], values: tuple) -> dict:
        """The Merge tab's values of ``method``'s panel (``values``: every panel's widget values, in order) → its
        applicable parameters, validated (ValueError naming the field)."""
        if method not in self.panels:
            raise ValueError(f"merge method: unknown method {method!r}")
        if not tasks:
            raise ValueError("tasks to merge: tick at least one task")
        start = 0
        for name, panel in self.panels.items():
            count = len(panel.components())
            if name == method:
                return collect_params(panel, values[start:start + count], tasks)
            start += count

    def on_collect(self, method: str, tasks: list[str], *values):
        """Widget values of the chosen method and modifier only (``values``: every panel's widget values, then the
        modifier picker's) → their applicable parameters, validated, as JSON."""
        count = len(self.modifiers.components())
        try:
            modifiers = modifier_picker.collect(self.modifiers, values[len(values) - count:])
            params = self.panel_params(method, tasks, values[:len(values) - count])
        except ValueError as exc:
            raise error(exc) from None
        return json.dumps(params), json.dumps(modifiers), "Working… (progress under the Merge button)"

    def on_merge(self, zoo_id: str, method: str, params_json: str, tasks: list[str], modifiers_json: str,
                 request: gr.Request, progress=gr.Progress()):
        """Run a merge (with the picked modifiers) as a background job; show its figures and record it."""
        who = owner(request)
        params, modifiers = decode_sent("parameters", params_json, modifiers_json)
        if not isinstance(params, dict):
            raise error("parameters: must be a JSON object such as {\"lam\": 0.3}")
        try:
            zoo_id = self.current_zoo(zoo_id, progress)
            view = self.submit(lambda p: self.service.merge(zoo_id, method, params, tasks or None, p, who,
                                                            modifiers), request, f"merge {method}", progress)
        except Stopped as stop:
            return [gr.skip()] * (len(self.run_targets) - 1) + [f"**Cancelled** ({escape(stop)}). Nothing was "
                                                                "recorded."]
        return self.run_outputs(view, who) + [f"Run #{view.id} done."]

    def run_outputs(self, view, who: str, mask_kind: str | None = None, table: str | None = None) -> list:
        figs = view.figures(mask_kind)
        kinds = list(view.stats)
        tables = list(view.tables)
        table = table if table in tables else (tables[0] if tables else None)
        summary = escape(view.summary())
        if not kinds:
            summary += "\n\nThis method makes no masks; TIES, DARE, PCB, TALL and Consensus show mask statistics."
        runs, pickers = self.history_outputs(who)
        for name in PLOTS:
            if figs[name] is None:
                figs[name] = figures.placeholder("this method makes no masks" if name in MASK_PLOTS
                                                 else "no heads or test data in this zoo")
        return [view.id, summary,
                gr.update(choices=kinds, value=mask_kind if mask_kind in kinds else (kinds[0] if kinds else None)),
                gr.update(visible=bool(tables)), gr.update(choices=tables, value=table),
                *[figs[name] for name in PLOTS],
                figs.get(f"table:{table}") if table else None,
                view.tables[table].round(4) if table else None,
                runs, *pickers, gr.update(choices=[""] + view.record.tasks, value="")]

    def on_view(self, run, mask_kind: str, table: str, request: gr.Request):
        """Re-draw the current run for another mask kind or method table (no recomputation)."""
        if run is None:
            return [gr.skip()] * (len(self.run_targets) - 1)
        who = owner(request)
        try:
            view = self.service.run(run, who)
        except ValueError as exc:
            raise error(exc) from None
        return self.run_outputs(view, who, mask_kind, table)

    def on_cancel(self, request: gr.Request):
        """Cancel the caller's own jobs (never another session's, never the shared loads)."""
        cancelled = self.jobs.cancel_owner(owner(request))
        message = f"Cancelling {len(cancelled)} job(s)…" if cancelled else "Nothing to cancel."
        gr.Info(message)  # a toast: the status line is the job's own, and its "Cancelled" must not be overwritten
        return message

    def on_unload(self, request: gr.Request) -> None:
        """A closed or reloaded tab cancels its session's jobs (shared loads and baselines are not its own; with
        a login, a user's other tabs keep theirs)."""
        if not getattr(request, "username", None) and getattr(request, "session_hash", None):
            self.jobs.cancel_owner(owner(request))

    # ---------------------------------------------------------------- compare, runs and download
    def history_outputs(self, who: str, deleted: bool = False) -> tuple:
        """The runs table and the run pickers (compare, download, edit), labelled "#33 ties k=20 λ=1 · 61.2 %"."""
        history = self.service.history
        labels = history.labels(who)
        own = [(label, run) for label, run in labels if history.get(int(run), who).owner == who]
        deleted_own = [(r.label(), str(r.id)) for r in history.records(viewer=who, deleted=True) if r.owner == who]
        return history.table(viewer=who, deleted=deleted), (gr.update(choices=labels), gr.update(choices=labels),
                                                            gr.update(choices=own + deleted_own))

    def on_compare(self, runs: list, request: gr.Request):
        """Any number of runs: per-task accuracy with θ0 and individual as references, the parameters that
        differ, parameters vs mean accuracy (parallel coordinates), and warnings."""
        who = owner(request)
        ids = [run_id(r, "runs to compare") for r in (runs or [])]
        try:
            first = self.service.history.get(ids[0], who) if ids else None
            comparison = self.service.history.compare_many(ids, who, self.service.cached_baselines(first))
        except (KeyError, ValueError) as exc:
            raise error(exc.args[0] if isinstance(exc, KeyError) else exc) from None
        note = "\n\n".join(f"⚠️ {escape(w)}" for w in comparison.warnings) or \
            f"{len(ids)} runs of the same zoo and tasks; only the parameters that differ are listed."
        bars = figures.accuracy_bars(comparison.accuracy, "Accuracy per task: the runs, θ0 and individual")
        return (comparison.differences.reset_index(), bars, figures.parallel_coordinates(comparison.points),
                note)

    def on_history(self, deleted: bool, request: gr.Request):
        """The runs this visitor may see: the shared ones and their own (their deleted ones on request)."""
        runs, pickers = self.history_outputs(owner(request), bool(deleted))
        return runs, *pickers

    def on_edit_pick(self, run: str, request: gr.Request):
        if not run:
            return "", "", "", ""
        record = self.service.history.get(run_id(run, "run"), owner(request), deleted=True)
        state = " (deleted)" if record.deleted is not None else ""
        return record.name, ", ".join(record.tags), record.notes, f"Editing run #{record.id}{state}."

    def edit_handler(self, action: str) -> Callable:
        def edit(run: str, name: str, tags: str, notes: str, deleted: bool, request: gr.Request):
            return self.on_edit(action, run, name, tags, notes, deleted, request)
        return edit

    def on_edit(self, action: str, run: str, name: str, tags: str, notes: str, deleted: bool, request: gr.Request):
        """Save the name/tags/notes of one of the visitor's runs, delete it (soft) or undo the delete."""
        who, history = owner(request), self.service.history
        number = run_id(run, "run")
        try:
            if action == "save":
                history.annotate(number, who, name=name, tags=tags, notes=notes)
                message = f"Saved run #{number}."
            elif action == "delete":
                history.delete(number, who)
                message = f"Deleted run #{number}: press Undo delete to bring it back."
            else:
                history.restore(number, who)
                message = f"Run #{number} is back."
        except (KeyError, ValueError) as exc:
            raise error(exc.args[0] if isinstance(exc, KeyError) else exc) from None
        runs, pickers = self.history_outputs(who, bool(deleted))
        return runs, *pickers, message

    def on_download(self, run: str, fmt: str, task: str, request: gr.Request, progress=gr.Progress()):
        who = owner(request)
        if not run:
            raise error("run: pick a run to download")
        number, folder = run_id(run, "run"), self.download_folder()
        try:
            return str(self.submit(lambda p: self.service.export_checkpoint(number, fmt, who, task or None, folder),
                                   request, "export", progress))
        except Stopped:
            return gr.skip()

    def on_results(self, fmt: str, request: gr.Request):
        try:
            return str(self.service.export_results(None, fmt, owner(request), self.download_folder()))
        except ValueError as exc:
            raise error(exc) from None

    # ---------------------------------------------------------------- guide
    def explore_targets(self) -> list:
        """What "Explore" sets: every parameter's field, then every per-task parameter's checkbox and table."""
        widgets = [w for p in self.panels.values() for w in p.widgets]
        return [w.value for w in widgets] + [c for w in widgets if w.table is not None for c in (w.per_task, w.table)]

    def on_guide(self, index: int, found: dict | None = None):
        """"Explore": the step's method and parameters (once run, the λ it chose on validation; per-task λt into
        the per-task table) in the Merge tab; the sweep step opens the Sweep tab on its method."""
        step = guide.STEPS[index]
        explored = (found or {}).get(f"explore{index + 1}") or {}
        params, tasks = {**step.params, **explored.get("params", {})}, explored.get("tasks", [])
        values, tables = [], []
        for name, panel in self.panels.items():
            for widget in panel.widgets:
                value = params.get(widget.param.name, gr.skip()) if name == step.method else gr.skip()
                listed = isinstance(value, (list, tuple))
                values.append(gr.skip() if listed else value)
                if widget.table is not None:
                    tables += [True, per_task_table(widget.param, tasks, value)] if listed else [gr.skip()] * 2
        return [gr.Tabs(selected="sweep" if step.figure == "sweep" else "merge"), step.method, *values, *tables]

    def guide_handler(self, index: int) -> Callable:
        def run_step(zoo_id: str, found: dict, request: gr.Request, progress=gr.Progress()):
            return self.on_guide_step(index, zoo_id, found, request, progress)
        return run_step

    def on_guide_step(self, index: int, zoo_id: str, found: dict, request: gr.Request, progress=gr.Progress()):
        """Run step ``index`` in place: its figure, what the numbers show, and the session's headline numbers."""
        who, step, tuned = owner(request), guide.STEPS[index], None
        try:
            zoo_id = self.current_zoo(zoo_id, progress)
            if step.figure == "sweep":
                record = self.submit(lambda p: self.service.sweep(zoo_id, [step.method], {"lam": None},
                                                                  {step.method: step.params}, None, p, who),
                                     request, "guide sweep", progress)
                figure, (text, headline) = sweep_figure(record), guide.sweep_finding(record.table(), "lam")
            else:
                def run(p):  # p: the job's Progress
                    tuned = self.service.tune(zoo_id, step.method, step.params, p.sub(0.0, 0.7), who) \
                        if step.tune else None
                    return tuned, self.service.merge(zoo_id, step.method, tuned or step.params, None,
                                                     p.sub(0.7 if step.tune else 0.0, 1.0), who)

                tuned, view = self.submit(run, request, f"guide {step.method}", progress)
                figure = view.figures(step.mask_kind).get(step.figure) or figures.placeholder(
                    "no figure: this zoo has no heads or test data")
                tall = view.stats.get("tall")
                text, headline = guide.finding(index, view.accuracy, view.tables,
                                               tall.class_fractions() if tall is not None else None, found,
                                               view.result.info if view.result is not None else None)
                if step.tune:
                    text += guide.tuning_note(step.method, tuned)
                text += f" (run #{view.id})"
        except Stopped as stop:
            return gr.skip(), f"**Cancelled** ({escape(stop)}).", gr.skip()
        found = {**(found or {}), **({str(index + 1): headline} if headline is not None else {})}
        if tuned is not None:
            found[f"explore{index + 1}"] = {"params": tuned, "tasks": list(view.record.tasks)}
        return figure, text, found

    # ---------------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        from .sweep_tab import SweepTab  # it uses this module's helpers

        names = [m.name for m in self.methods]
        first = "consensus" if "consensus" in names else names[0]
        self.recipes, self.compare = RecipesUI(self), CompareUI(self)
        with gr.Blocks(title="mergescope") as demo:
            zoo_state, run_state = gr.State(""), gr.State(None)
            gr.Markdown("# mergescope\nMerge fine-tuned models and see why a merge works. "
                        "New to merging? Start with the **Guide** tab.")
            status = gr.Markdown("Starting…", elem_id="status")
            with gr.Tabs(selected="merge") as tabs:
                with gr.Tab("Guide", id="guide"):
                    gr.Markdown(guide.INTRO)
                    found = gr.State({})
                    step_buttons, explore_buttons, step_outputs = [], [], []
                    for i, step in enumerate(guide.STEPS):
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=2, min_width=320):
                                gr.Markdown(f"#### {step.title}\n{step.text}")
                                with gr.Row():
                                    step_buttons.append(gr.Button(f"Run step {i + 1}", size="sm", variant="primary",
                                                                  elem_id=f"guide-{i + 1}"))
                                    where = "Sweep" if step.figure == "sweep" else "Merge & see"
                                    explore_buttons.append(gr.Button(f"Explore in {where}", size="sm",
                                                                     elem_id=f"guide-explore-{i + 1}"))
                                result_md = gr.Markdown("", elem_id=f"guide-result-{i + 1}",
                                                        elem_classes="progress-slot")
                            with gr.Column(scale=3):
                                plot = gr.Plot(figures.placeholder(f"press Run step {i + 1}"),
                                               label=step.title, elem_id=f"guide-plot-{i + 1}")
                        step_outputs.append((plot, result_md))
                with gr.Tab("Merge & see", id="merge"):
                    with gr.Row():
                        with gr.Column(scale=1, min_width=320):
                            method = gr.Dropdown(method_choices(self.methods), value=first, label="merge method",
                                                 elem_id="method")
                            method_md = gr.Markdown(explain(next(m for m in self.methods if m.name == first)))
                            self.panels = {m.name: build_panel(m, m.name == first) for m in self.methods}
                            self.modifiers = modifier_picker.build_picker(self.service.modifiers())
                            tasks = gr.CheckboxGroup([], label="tasks to merge", elem_id="tasks")
                            with gr.Row():
                                merge_btn = gr.Button("Merge", variant="primary", elem_id="merge-btn", min_width=100)
                                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", min_width=100)
                            self.cancel_reply = gr.Textbox("", visible=False, elem_id="cancel-reply")  # the API's
                            merge_progress = gr.Markdown("", elem_classes="progress-slot")
                            params_json = gr.Textbox(label="parameters sent (JSON)", interactive=False,
                                                     elem_id="params-json")
                            modifiers_json = gr.Textbox("", label="modifiers sent (JSON)", interactive=False,
                                                        elem_id="modifiers-json")
                            self.recipes.import_layout()
                        with gr.Column(scale=3):
                            run_md = gr.Markdown("Press **Merge** to run the selected method.", elem_id="run-summary")
                            waiting = figures.placeholder("press Merge to see this figure")
                            mask_kind = gr.Dropdown([], label="mask set shown", elem_id="mask-kind")
                            with gr.Row():
                                p_hist = gr.Plot(waiting, label="agreement histogram", elem_id="plot-histogram")
                                p_layers = gr.Plot(waiting, label="agreement per layer", elem_id="plot-layers")
                            with gr.Row():
                                p_jaccard = gr.Plot(waiting, label="mask overlap", elem_id="plot-jaccard")
                                p_density = gr.Plot(waiting, label="mask density", elem_id="plot-density")
                            with gr.Row():
                                p_acc = gr.Plot(waiting, label="accuracy", elem_id="plot-accuracy")
                                p_norm = gr.Plot(waiting, label="normalized accuracy", elem_id="plot-normalized")
                            with gr.Row(visible=False) as table_row:
                                with gr.Column():
                                    table_choice = gr.Dropdown([], label="method table shown")
                                    p_table = gr.Plot(label="method table", elem_id="plot-table")
                                table_df = gr.Dataframe(label="method table (numbers)", interactive=False)
                with gr.Tab("Load zoo", id="load"):
                    source = gr.Radio([("demo zoo", "demo"), ("server folder or manifest", "path"),
                                       ("upload safetensors", "upload"),
                                       ("upload a zoo archive (zip/tar: zoo.json + checkpoints + heads + data)",
                                        "archive")], value="demo", label="zoo source",
                                      elem_id="source")
                    roots = self.service.roots
                    path = gr.Textbox(roots.display(self.default_zoo) if self.default_zoo else "",
                                      label=f"zoo folder or zoo.json inside the zoo roots ({roots.describe()})",
                                      elem_id="zoo-path")
                    limit = self.service.settings.upload_limit / 2**20
                    upload = gr.File(file_count="multiple", file_types=[".safetensors", *ARCHIVE_SUFFIXES],
                                     elem_id="upload", label=f"pretrained*.safetensors + one fine-tuned file per task, "
                                                             f"or one zoo archive (at most {limit:.0f} MiB)")
                    load_btn = gr.Button("Load", variant="primary", elem_id="load-btn")
                    load_progress = gr.Markdown("", elem_classes="progress-slot")
                    baseline_md = gr.Markdown("")
                    zoo_md = gr.Markdown("", elem_id="zoo-summary")
                    zoo_table = gr.Dataframe(label="tasks", interactive=False, elem_id="zoo-table")
                with gr.Tab("Sweep", id="sweep") as sweep_tab:
                    sweeps = SweepTab(self)
                    sweeps.build(first)
                with gr.Tab("Compare & download", id="compare") as compare_tab:
                    runs_table = gr.Dataframe(self.service.history.table(viewer=""), elem_id="runs-table",
                                              label="runs, newest first (sort by a column header; filter to search)",
                                              interactive=False, show_search="filter", pinned_columns=1,
                                              max_height=420, wrap=False)
                    with gr.Row():
                        refresh = gr.Button("Refresh", size="sm")
                        show_deleted = gr.Checkbox(False, label="show my deleted runs", elem_id="show-deleted")
                    with gr.Row():
                        cmp_runs = gr.Dropdown([], multiselect=True, label="runs to compare (two or more)",
                                               elem_id="compare-runs", scale=4, allow_custom_value=True)
                        cmp_btn = gr.Button("Compare", elem_id="compare-btn", scale=1)
                    cmp_md = gr.Markdown("", elem_id="compare-note")
                    with gr.Row():
                        cmp_plot = gr.Plot(label="accuracy per task", elem_id="plot-compare")
                        cmp_parallel = gr.Plot(label="parameters vs mean accuracy", elem_id="plot-parallel")
                    cmp_table = gr.Dataframe(label="parameters that differ", interactive=False,
                                             elem_id="compare-table")
                    self.compare.masks_layout()
                    gr.Markdown("#### My runs: name, tags, notes")
                    with gr.Row():
                        edit_run = gr.Dropdown([], label="run", elem_id="edit-run", allow_custom_value=True)
                        edit_name = gr.Textbox(label="name", elem_id="edit-name")
                        edit_tags = gr.Textbox(label="tags (comma-separated)", elem_id="edit-tags")
                    edit_notes = gr.Textbox(label="notes", lines=2, elem_id="edit-notes")
                    with gr.Row():
                        save_btn = gr.Button("Save", size="sm", elem_id="edit-save")
                        delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="edit-delete")
                        undo_btn = gr.Button("Undo delete", size="sm", elem_id="edit-undo")
                    edit_md = gr.Markdown("", elem_id="edit-note")
                    gr.Markdown("#### Downloads")
                    with gr.Row():
                        dl_run = gr.Dropdown([], label="run", allow_custom_value=True)
                        dl_fmt = gr.Radio([("open_clip safetensors", "open_clip"), ("Hugging Face CLIP", "hf"),
                                           ("TALL compressed", "tall-compressed")], value="open_clip",
                                          label="checkpoint format")
                        dl_task = gr.Dropdown([""], value="", label="task (TALL: one model per task)",
                                              allow_custom_value=True)
                        dl_btn = gr.Button("Download checkpoint")
                        self.recipes.download_layout()
                        self.compare.open_layout()
                    with gr.Row():
                        res_fmt = gr.Radio(["csv", "json"], value="csv", label="results format")
                        res_btn = gr.Button("Download all runs")
                    dl_file = gr.File(label="file", interactive=False, elem_id="download")

            panel_tables = [w.table for p in self.panels.values() for w in p.widgets if w.table]
            panel_inputs = [c for p in self.panels.values() for c in p.components()]
            merge_inputs = [*panel_inputs, *self.modifiers.components()]
            self.load_targets = [zoo_state, zoo_md, zoo_table, tasks, *panel_tables, status]
            self.run_targets = [run_state, run_md, mask_kind, table_row, table_choice, p_hist, p_layers, p_jaccard,
                                p_density, p_acc, p_norm, p_table, table_df, runs_table, cmp_runs, dl_run, edit_run,
                                dl_task, status]
            failed = "⚠️ The last action failed — see the message in the corner. Nothing you had was changed."

            demo.load(self.on_page_load, None, self.load_targets, api_visibility="private", show_progress_on=status,
                      **WORK) \
                .then(self.on_baselines, zoo_state, [zoo_table, baseline_md], api_visibility="private",
                      show_progress_on=baseline_md, **WORK)
            loading = load_btn.click(self.on_load, [source, path, upload, zoo_state], self.load_targets,
                                     api_name="load_zoo", show_progress_on=load_progress, **WORK)
            loading.success(self.on_baselines, zoo_state, [zoo_table, baseline_md], api_name="baselines",
                            show_progress_on=baseline_md, **WORK)
            loading.failure(lambda: failed, None, status, api_visibility="private")
            method.change(self.on_method, method, [method_md] + [p.group for p in self.panels.values()],
                          api_visibility="private", **QUICK)

            def merge_chain(dependency):
                return dependency.success(self.on_collect, [method, tasks, *merge_inputs],
                                          [params_json, modifiers_json, status],
                                          api_visibility="private", show_progress="hidden", **QUICK)

            def merge_after(dependency):
                return dependency.success(self.on_merge, [zoo_state, method, params_json, tasks, modifiers_json],
                                          self.run_targets, api_visibility="private",
                                          show_progress_on=merge_progress, **WORK)

            collecting = merge_btn.click(self.on_collect, [method, tasks, *merge_inputs],
                                         [params_json, modifiers_json, status],
                                         api_visibility="private", show_progress="hidden", **QUICK)
            collecting.failure(lambda: failed, None, status, api_visibility="private")
            collecting.success(self.on_merge, [zoo_state, method, params_json, tasks, modifiers_json],
                               self.run_targets,
                               api_name="merge", show_progress_on=merge_progress, **WORK) \
                .failure(lambda: failed, None, status, api_visibility="private")
            for i, (button, (plot, result_md)) in enumerate(zip(step_buttons, step_outputs)):
                button.click(self.guide_handler(i), [zoo_state, found], [plot, result_md, found],
                             api_visibility="private", show_progress_on=result_md, **WORK)
            for i, button in enumerate(explore_buttons):
                chosen = button.click(lambda found, i=i: self.on_guide(i, found), found,
                                      [tabs, method, *self.explore_targets()], api_visibility="private", **QUICK)
                if guide.STEPS[i].figure != "sweep":  # the sweep step leaves the user on the Sweep tab to run one
                    merge_after(merge_chain(chosen))
            cancel_btn.click(self.on_cancel, None, self.cancel_reply, api_name="cancel", **QUICK)
            gr.on([mask_kind.input, table_choice.input], self.on_view, [run_state, mask_kind, table_choice],
                  self.run_targets[:-1], api_visibility="private", **QUICK)

            sweeps.wire(demo, sweep_tab, tabs, zoo_state, method, tasks, status, panel_inputs)

            history_targets = [runs_table, cmp_runs, dl_run, edit_run]
            refresh.click(self.on_history, show_deleted, history_targets, api_name="history", **QUICK)
            show_deleted.change(self.on_history, show_deleted, history_targets, api_visibility="private", **QUICK)
            demo.load(self.on_history, show_deleted, history_targets, api_visibility="private", **QUICK)
            compare_tab.select(self.on_history, show_deleted, history_targets, api_visibility="private", **QUICK)
            cmp_btn.click(self.on_compare, cmp_runs, [cmp_table, cmp_plot, cmp_parallel, cmp_md], api_name="compare",
                          **QUICK)
            edit_run.input(self.on_edit_pick, edit_run, [edit_name, edit_tags, edit_notes, edit_md],
                           api_visibility="private", **QUICK)
            for action, button in (("save", save_btn), ("delete", delete_btn), ("restore", undo_btn)):
                button.click(self.edit_handler(action), [edit_run, edit_name, edit_tags, edit_notes, show_deleted],
                             [*history_targets, edit_md], api_name=f"run_{action}", **QUICK)
            dl_btn.click(self.on_download, [dl_run, dl_fmt, dl_task], dl_file, api_name="download", **WORK)
            res_btn.click(self.on_results, res_fmt, dl_file, api_name="download_results", **QUICK)
            self.recipes.wire(zoo_state, method, tasks, panel_inputs, merge_chain, merge_after, dl_run, dl_file, failed)
            self.compare.wire(cmp_runs, dl_run, tabs)
            demo.unload(self.on_unload)
        return demo


def create_app(settings: Settings, default_zoo: str | None = None, slots: int = 1,
               preload: bool = True) -> gr.Blocks:
    """The Blocks app with its service and job queue (``demo.dashboard``); starts loading ``default_zoo``, which
    joins the zoo roots (its folder)."""
    if default_zoo:
        folder = Path(default_zoo).parent if Path(default_zoo).is_file() else Path(default_zoo)
        settings = replace(settings, zoo_roots=[*(settings.zoo_roots or [zoos_folder(settings.data_dir)]), folder])
    service = Service(settings)
    service.prune_sessions()
    clean_stale_temp(service.data_dir, recursive=True)  # half-written exports and history files of killed writes
    dashboard = Dashboard(service, JobQueue(slots), default_zoo)
    if default_zoo and preload:
        dashboard.preload()
    demo = dashboard.build()
    dashboard.downloads = Path(demo.GRADIO_CACHE) / "downloads"
    demo.dashboard = dashboard
    demo.queue(default_concurrency_limit=4)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, auth=None,
           clean: tuple[int, int] = (600, 3600), **options):
    """Start the server.  Nothing of the data folder is served: uploads and session folders are private, and a
    download is written under an unguessable folder in Gradio's cache, where only its exact URL (given to the
    session that asked) fetches it.  Every ``clean[0]`` seconds Gradio's cache drops files older than ``clean[1]``
    (uploads nobody used, old downloads), and all of them at shutdown.  ``auth``: Gradio's login ((user, password)
    pairs)."""
    settings = demo.dashboard.service.settings
    demo.delete_cache = clean  # (Gradio takes it at Blocks(); the server reads it at launch)
    return demo.launch(server_name=host, server_port=port, theme=gr.themes.Soft(), css=CSS, auth=auth,
                       max_file_size=settings.upload_limit,
                       footer_links=["api", "gradio"], **options)
