"""The dashboard's server side: loaded zoos, their task-vector spaces and baselines, merge results — all kept
here keyed by small ids (Gradio state holds only the ids, never tensors) — and the handlers as plain functions.

Every handler takes a ``progress`` (:class:`merging.progress.Progress`) and raises on bad input; the UI runs
them as background jobs (:mod:`dashboard.jobs`), which turns errors into messages.  Heavy imports (torch,
open_clip, the engine) happen on first use so the page is up before they are needed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from merging.params import applicable, resolve_params
from merging.sweep import grid_points
from merging.progress import as_progress
from merging.roots import RootError, Roots

from . import figures
from .history import History, RunRecord, plain
from .sweeps import SweepRecord, SweepStore, sweepable

if TYPE_CHECKING:
    from merging.registry import MergeResult
    from merging.space import TaskVectorSpace

SPLIT = "test"  # what the accuracy figures report
SWEEP_SPLITS = ("val", "train")  # sweeps pick hyperparameters on held-out data, never test
MAX_SWEEP_POINTS = 500  # merges (grid points × methods) one sweep may ask for
RECONSTRUCTED = {"tall": "TALL-reconstructed", "emr": "EMR-reconstructed"}  # per-task models' accuracy label
CHECKPOINT_FORMATS = {"open_clip": ".safetensors", "hf": ".hf.safetensors", "tall-compressed": ".tall.safetensors"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


class UserError(ValueError):
    """Bad input the user can fix (wrong path, too-large upload, nothing to compare, …)."""


@dataclass
class Settings:
    data_dir: Path
    device: str = "auto"
    upload_limit: int = 2 << 30  # bytes per upload
    keep_results: int = 8  # merge results (P-sized deltas and masks) held in memory
    keep_zoos: int = 3
    zoo_roots: Sequence[Path] = ()  # folders zoos may be opened from (default: <data_dir>/zoos)
    jobs_per_session: int = 2  # queued or running jobs one session may have


def zoos_folder(data_dir: Path) -> Path:
    """``<data_dir>/zoos``: where an operator puts zoos for visitors to open (a default zoo root)."""
    folder = Path(data_dir) / "zoos"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class ZooEntry:
    """A loaded zoo with its cached task-vector space, evaluator and baselines."""

    id: str
    path: Path
    zoo: Any
    fingerprint: str
    space: "TaskVectorSpace | None" = None
    owner: str = ""  # "" = a zoo from the roots, shared; else the session that uploaded it
    label: str = ""  # the path as users see it (relative to a zoo root)
    baselines: pd.DataFrame | None = None  # task, pretrained, individual (test split)
    _evaluator: Any = None
    _reference: dict = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)  # one encoder module: one evaluation at a time

    @property
    def name(self) -> str:
        return self.zoo.name

    def evaluable(self, split: str = SPLIT) -> list[str]:
        """Tasks with a head and a ``split`` split (uploads without data can be merged but not evaluated)."""
        manifest = self.zoo.manifest
        return [t for t in self.zoo.task_names if manifest.task(t).head is not None and split in self.zoo.splits(t)]

    def held_out_split(self, tasks: Sequence[str]) -> str | None:
        """The first of :data:`SWEEP_SPLITS` on which every task has a head and images (None: none has)."""
        return next((s for s in SWEEP_SPLITS if not set(tasks) - set(self.evaluable(s))), None)

    def reference(self, split: str, tasks: Sequence[str], evaluator, progress=None,
                  model: str = "individual") -> dict[str, float]:
        """Accuracy of the fine-tuned models (``model="individual"``: the denominator of normalized accuracy) or
        of θ0 (``"pretrained"``) on ``split`` per task, cached."""
        from merging.evaluation import evaluate
        known = self._reference.setdefault((model, split), {})
        todo = [t for t in tasks if t not in known]
        if todo:
            weights = self.zoo.finetuned_state if model == "individual" else None
            table = evaluate(self.zoo, weights, todo, split, evaluator=evaluator, progress=progress)
            known.update(zip(table["task"], table["accuracy"]))
        return {t: known[t] for t in tasks}

    def evaluator(self, device):
        from merging.evaluation import Evaluator
        if self._evaluator is None:
            self._evaluator = Evaluator(self.zoo, device=device)
        return self._evaluator


@dataclass
class RunView:
    """One merge as the UI shows it: the history record, small tables, and the result while it is cached."""

    record: RunRecord
    stats: dict  # mask kind → MaskStats
    tables: dict[str, pd.DataFrame]
    accuracy: pd.DataFrame  # task, model, accuracy (baselines and this merge)
    k: int | None = None  # consensus threshold to mark on the agreement histogram
    result: "MergeResult | None" = None
    space: "TaskVectorSpace | None" = None

    @property
    def id(self) -> int:
        return self.record.id

    def figures(self, mask_kind: str | None = None) -> dict:
        return figures.run_figures(self.stats, self.tables, self.accuracy, self.k, mask_kind)

    def summary(self) -> str:
        r = self.record
        modified = f" + {r.modifiers_text()}" if r.modifiers else ""
        lines = [f"**Run #{r.id}: {r.method}{modified}** ({r.params_text() or 'no parameters'}) on {len(r.tasks)} "
                 f"tasks — "
                 f"merge {r.seconds:.2f} s, evaluation {r.eval_seconds:.2f} s on {r.device}."]
        if r.mean_accuracy is not None:
            norm = f", {100 * r.mean_normalized:.1f}% of fine-tuned" if r.mean_normalized is not None else ""
            lines.append(f"Average {SPLIT} accuracy **{100 * r.mean_accuracy:.1f}%**{norm}.")
        for kind, fractions in r.statistics.get("masks", {}).items():
            parts = ", ".join(f"{name} {100 * v:.1f}%" for name, v in fractions.items())
            lines.append(f"{kind} masks: {parts} of weights.")
        return "\n\n".join(lines)


def _open_zoo(path: Path, architecture=None):
    from merging.manifest import ManifestError, find_manifest, infer_manifest
    from merging.zoo import Zoo, load_zoo

    try:
        return load_zoo(path)
    except ManifestError:
        if architecture is None or not path.is_dir() or find_manifest(path) is not None:
            raise
    return Zoo(*infer_manifest(path, architecture))


def fingerprint(zoo) -> str:
    """Content key of a zoo: its manifest plus size and mtime of every file and data folder it reads."""
    digest = hashlib.sha256(json.dumps(zoo.manifest.to_dict(), sort_keys=True).encode())
    paths = list(zoo.inputs())
    for task in zoo.manifest.tasks:
        paths += [split.path for split in task.data.values()]
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def safe_name(name: str) -> str:
    name = _SAFE_NAME.sub("_", Path(str(name)).name).strip("._")
    return name or "file"


class Service:
    def __init__(self, settings: Settings, history: History | None = None):
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.roots = Roots(settings.zoo_roots or [zoos_folder(self.data_dir)])
        self.history = history or History(self.data_dir / "history.sqlite")
        self.sweeps = SweepStore(self.history)
        self._secret = _secret(self.data_dir / "secret.key")
        self._zoos: OrderedDict[str, ZooEntry] = OrderedDict()
        self._runs: OrderedDict[int, RunView] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def device(self):
        from merging.device import pick_device
        return pick_device(self.settings.device)

    # ---------------------------------------------------------------- zoos
    def load_zoo(self, path: str | Path, progress=None) -> ZooEntry:
        """Load (or reuse) the zoo at ``path`` — a folder or manifest inside the zoo roots, shared by every
        session — and build its task-vector space on the device.  Every path its manifest references must lie
        inside the roots; messages name paths relative to a root."""
        from merging.manifest import find_manifest
        try:
            found = self.roots.resolve(str(path))
            self.roots.check_manifest(found)
            if found.is_dir() and find_manifest(found) is None:
                self.roots.check_tree(found)
        except RootError as exc:
            raise UserError(str(exc)) from None
        return self._load(found, progress, self.roots, self.roots.redact, label=self.roots.display(found))

    def _load(self, path: Path, progress, roots: Roots, redact: Callable[[str], str], owner: str = "",
              architecture=None, label: str = "") -> ZooEntry:
        """``architecture`` is used for a folder without a manifest whose architecture cannot be read from the
        weights; every error is one line passed through ``redact`` (no server paths)."""
        progress = as_progress(progress)
        with self._lock:
            gate = self._loading.setdefault(str(path.resolve()), threading.Lock())
        with gate:  # two sessions loading the same zoo build its space once
            progress(0.0, "reading the zoo manifest")
            try:
                zoo = _open_zoo(path, architecture)
                roots.check_zoo(zoo)
            except ValueError as exc:  # ManifestError, CheckpointError, RootError
                raise UserError(redact(str(exc))) from None
            key = fingerprint(zoo)
            with self._lock:
                entry = self._zoos.get(key)
                if entry is not None:
                    self._zoos.move_to_end(key)
                    return entry
            space = zoo.build_space(device=self.device, progress=progress.sub(0.05, 1.0))
            entry = ZooEntry(key, path.resolve(), zoo, key, space, owner, label)
            with self._lock:
                self._zoos[key] = entry
                while len(self._zoos) > self.settings.keep_zoos:
                    self._zoos.popitem(last=False)
            return entry

    def load_uploads(self, files: Iterable[str | Path], session: str, like: str | None = None,
                     progress=None, move: bool = False) -> ZooEntry:
        """A zoo from uploaded safetensors (see :meth:`save_uploads`); the architecture is read from the weights,
        or taken from the loaded zoo ``like`` when the weights match no open_clip model."""
        folder = self.save_uploads(files, session, move)
        architecture = None
        if like:
            with self._lock:
                entry = self._zoos.get(like)
            architecture = entry.zoo.architecture if entry is not None else None
        here = folder.resolve()

        def redact(message: str) -> str:  # name the uploaded file, not our copy
            return message.replace(str(here) + "/", "").replace(str(folder) + "/", "").replace(str(here), "upload")

        return self._load(folder, progress, Roots([folder]), redact, session, architecture, "upload")

    def zoo(self, zoo_id: str, owner: str | None = None) -> ZooEntry:
        """A loaded zoo; with ``owner``, only a shared one or the owner's own upload."""
        with self._lock:
            entry = self._zoos.get(zoo_id or "")
        if entry is None or (owner is not None and entry.owner not in ("", owner)):
            raise UserError("no zoo is loaded (or it was unloaded to free memory): load a zoo first")
        return entry

    def zoo_table(self, entry: ZooEntry) -> pd.DataFrame:
        """One row per task: classes, splits, head kind, and baseline accuracies once known."""
        rows = []
        for task in entry.zoo.task_names:
            spec = entry.zoo.manifest.task(task)
            head = "none" if spec.head is None else "weights" if spec.head.weights else "zero-shot"
            rows.append({"task": task, "classes": len(spec.classnames or []), "splits": ", ".join(spec.data),
                         "head": head})
        table = pd.DataFrame(rows)
        if entry.baselines is not None:
            known = entry.baselines.set_index("task")
            for column in ("pretrained", "individual"):
                table[f"{column} %"] = [round(100 * known[column][t], 1) if t in known.index else None
                                        for t in table["task"]]
        return table

    def zoo_summary(self, entry: ZooEntry) -> str:
        space = entry.space
        size = f"{space.P:,} merged parameters per model, stack {space.memory_bytes() / 2**20:.1f} MiB" \
            if space is not None else "space not built"
        missing = sorted(set(entry.zoo.task_names) - set(entry.evaluable()))
        note = f"\n\nNo head or {SPLIT} data for {', '.join(missing)}: merged and analysed, not evaluated." \
            if missing else ""
        report = "\n".join(f"- {line}" for line in getattr(entry.zoo, "report", []))
        report = report.replace(str(entry.path), entry.label or entry.name)  # no server paths
        return (f"**{entry.name}** — {len(entry.zoo.task_names)} tasks, architecture "
                f"`{entry.zoo.architecture.name}`, {size}, device `{space.device if space else self.device}`."
                + note + (f"\n\n{report}" if report else ""))

    # ---------------------------------------------------------------- baselines
    def baselines(self, zoo_id: str, progress=None) -> pd.DataFrame:
        """Pretrained and individual fine-tuned accuracy per evaluable task (cached in memory and on disk)."""
        entry = self.zoo(zoo_id)
        if entry.baselines is not None:
            return entry.baselines
        tasks = entry.evaluable()
        cached = {m: self.history.baseline(entry.fingerprint, SPLIT, m) for m in ("pretrained", "individual")}
        if all(c is not None and set(tasks) <= set(c) for c in cached.values()):
            table = pd.DataFrame({"task": tasks, "pretrained": [cached["pretrained"][t] for t in tasks],
                                  "individual": [cached["individual"][t] for t in tasks]})
        elif not tasks:
            table = pd.DataFrame(columns=["task", "pretrained", "individual"])
        else:
            from merging.evaluation import evaluate_baselines
            with entry.lock:
                raw = evaluate_baselines(entry.zoo, tasks, SPLIT, evaluator=entry.evaluator(self.device),
                                         progress=as_progress(progress))
            table = raw.rename(columns={"finetuned": "individual"})[["task", "pretrained", "individual"]]
            for model in ("pretrained", "individual"):
                self.history.save_baseline(entry.fingerprint, SPLIT, model, dict(zip(table["task"], table[model])))
        entry.baselines = table
        return table

    def cached_baselines(self, record) -> pd.DataFrame | None:
        """The pretrained and individual test accuracies cached for ``record``'s zoo (None when not evaluated)."""
        if record is None:
            return None
        cached = {m: self.history.baseline(record.zoo_hash, SPLIT, m) for m in ("pretrained", "individual")}
        if any(c is None for c in cached.values()):
            return None
        tasks = [t for t in record.tasks if t in cached["pretrained"] and t in cached["individual"]]
        return pd.DataFrame({"task": tasks, "pretrained": [cached["pretrained"][t] for t in tasks],
                             "individual": [cached["individual"][t] for t in tasks]})

    # ---------------------------------------------------------------- merging
    @staticmethod
    def methods() -> list:
        from merging.registry import list_methods
        return list_methods()

    @staticmethod
    def modifiers() -> list:
        from merging.registry import list_modifiers
        return list_modifiers()

    def _space(self, entry: ZooEntry, tasks: Sequence[str] | None):
        tasks = list(tasks or [])
        repeated = sorted({str(t) for t in tasks if tasks.count(t) > 1})
        if repeated:  # each copy would cost a task vector
            raise UserError(f"tasks: each task may be merged once; repeated: {', '.join(repeated[:5])}")
        if not tasks or tasks == entry.space.task_names:
            return entry.space
        return entry.space.subset(tasks)

    @staticmethod
    def data_split(entry: ZooEntry, method, tasks: Sequence[str]) -> str | None:
        """The split a data-driven method learns from (val, else train; never test), None for the others."""
        if not method.needs_data:
            return None
        splits = [s for s in SWEEP_SPLITS if all(s in entry.zoo.splits(t) for t in tasks)]
        if not splits:
            raise UserError(f"{method.title} needs unlabeled validation or training images for every task")
        return splits[0]

    def _context(self, entry: ZooEntry, method, tasks: Sequence[str]):
        split = self.data_split(entry, method, tasks)
        return None if split is None else entry.zoo.data_context(tasks, split=split, device=self.device)

    def merge(self, zoo_id: str, method: str, params: Mapping[str, Any] | None = None,
              tasks: Sequence[str] | None = None, progress=None, owner: str = "",
              modifiers: Sequence[Mapping[str, Any]] = ()) -> RunView:
        """Merge, apply ``modifiers`` (``[{"name": "lines", "params": {...}}]``, in order), compute mask statistics,
        evaluate on the test split, record the run in the history as ``owner``'s ("" = shared) with only the
        parameters (of the method and of each modifier) that apply."""
        from merging.evaluation import evaluate_result
        from merging.maskstats import mask_statistics
        from merging.registry import get_method, get_modifier, run_merge

        progress = as_progress(progress)
        entry = self.zoo(zoo_id, owner)
        spec = get_method(method)
        space = self._space(entry, tasks)
        context = self._context(entry, spec, space.task_names)
        result = run_merge(space, spec, params or {}, progress.sub(0.0, 0.45), context, _pairs(modifiers))
        progress(0.45, "mask statistics")
        stats = {kind: mask_statistics(masks, space.index) for kind, masks in result.masks.items()}
        evaluable = [t for t in space.task_names if t in entry.evaluable()]
        baselines = self.baselines(zoo_id, progress.sub(0.5, 0.6)) if evaluable else None
        start = time.perf_counter()
        merged = pd.DataFrame(columns=["task", "accuracy", "normalized"])
        if evaluable:
            reference = dict(zip(baselines["task"], baselines["individual"]))
            with entry.lock:
                merged = evaluate_result(entry.zoo, space, result, evaluable, SPLIT, reference=reference,
                                         evaluator=entry.evaluator(space.device), progress=progress.sub(0.6, 0.98))
        eval_seconds = time.perf_counter() - start
        record = RunRecord(zoo=entry.name, zoo_hash=entry.fingerprint, method=spec.name,
                           params=plain(applicable(spec.params, result.params)),
                           modifiers=[{"name": name, "params": plain(applicable(get_modifier(name).params, values))}
                                      for name, values in result.modifiers],
                           tasks=list(space.task_names), accuracy=dict(zip(merged["task"], merged["accuracy"])),
                           normalized=dict(zip(merged["task"], merged["normalized"])),
                           statistics=self._statistics(stats, result), seconds=result.seconds,
                           eval_seconds=eval_seconds, device=result.device, zoo_path=entry.label, owner=owner)
        self.history.add(record)
        label = RECONSTRUCTED.get(spec.name, "reconstructed") if result.per_task else "merged"
        view = RunView(record, stats, dict(result.tables), self._accuracy_table(baselines, merged, label),
                       result.params.get("k") if spec.name == "consensus" else None, result, space)
        self._keep(view)
        progress(1.0, "done")
        return view

    def tune(self, zoo_id: str, method: str, params: Mapping[str, Any] | None = None, progress=None,
             owner: str = "") -> dict | None:
        """``params`` with the method's λ (TALL: λt per task) chosen on held-out data (the validation split, else
        the training one, as sweeps) by :func:`merging.selection.select` (the rule of the README's tables), ready
        for :meth:`merge`; None when no such split has a head and images for every task."""
        from merging.selection import select

        progress = as_progress(progress)
        entry = self.zoo(zoo_id, owner)
        space = self._space(entry, None)
        split = entry.held_out_split(space.task_names)
        if split is None:
            return None
        with entry.lock:
            evaluator = entry.evaluator(space.device)
            reference = entry.reference(split, space.task_names, evaluator, progress.sub(0.0, 0.2))
            chosen = select(entry.zoo, space, method, params, split, reference=reference, evaluator=evaluator,
                            progress=progress.sub(0.2, 1.0))
        return plain(chosen.params)

    @staticmethod
    def _statistics(stats: Mapping, result) -> dict:
        order = ("catastrophic", "selfish", "general")  # c = 0, 1, ≥ 2; named so only for TALL masks
        masks = {kind: {figures.class_label(kind, name): s.class_fractions()[name] for name in order
                        if name in s.class_fractions()} for kind, s in stats.items()}
        summary = {"masks": masks,
                   "density": {kind: float(s.density["density"].mean()) for kind, s in stats.items()}}
        summary.update({k: v for k, v in result.info.items() if isinstance(v, (int, float))})
        return plain(summary)

    @staticmethod
    def _accuracy_table(baselines: pd.DataFrame | None, merged: pd.DataFrame, label: str) -> pd.DataFrame:
        frames = []
        if baselines is not None and not merged.empty:
            rows = baselines[baselines["task"].isin(merged["task"])]
            for model in ("pretrained", "individual"):
                frames.append(pd.DataFrame({"task": rows["task"], "model": model, "accuracy": rows[model]}))
        if not merged.empty:
            frames.append(pd.DataFrame({"task": merged["task"], "model": label,
                                        "accuracy": merged["accuracy"]}))
        if not frames:
            return pd.DataFrame(columns=["task", "model", "accuracy"])
        return pd.concat(frames, ignore_index=True)

    def run(self, run_id: int, owner: str | None = None) -> RunView:
        with self._lock:
            view = self._runs.get(int(run_id))
        if view is not None and owner is not None and view.record.owner not in ("", owner):
            raise UserError(f"run #{run_id} is not in the history")
        if view is None:
            raise UserError(f"run #{run_id} is no longer in memory; its numbers are in the history")
        return view

    # ---------------------------------------------------------------- sweeps
    def sweep(self, zoo_id: str, methods: Sequence[str], grid: Mapping[str, Sequence[Any] | None],
              settings: Mapping[str, Mapping[str, Any]] | None = None, tasks: Sequence[str] | None = None,
              progress=None, owner: str = "", modifiers: Sequence[Mapping[str, Any]] = ()) -> SweepRecord:
        """Every point of a 1-D or 2-D ``grid`` (parameter → values; None: the paper's grid) merged with each of
        ``methods`` — the rest of each method's parameters from ``settings`` (as set in the Merge tab), then
        ``modifiers`` applied as :meth:`merge` does — and evaluated on held-out data (:func:`merging.sweep.sweep`),
        with θ0 and the fine-tuned models on the same split; recorded in the history as ``owner``'s.  Several
        methods share a 1-D grid (overlaid)."""
        from merging.registry import get_method, resolve_modifiers
        from merging.sweep import InProcess, check_points, sweep

        progress = as_progress(progress)
        entry = self.zoo(zoo_id, owner)
        if not methods:
            raise UserError("sweep methods: pick at least one method")
        specs = [get_method(m) for m in dict.fromkeys(methods)]
        if not grid or len(grid) > 2:
            raise UserError("sweep grid: give one parameter (a line) or two (a heatmap)")
        if len(grid) == 2 and len(specs) > 1:
            raise UserError("sweep methods: a 2-D grid sweeps one method; overlay several methods on a 1-D grid")
        names = list(grid)
        for spec in specs:
            missing = [n for n in names if n not in {p.name for p in sweepable(spec)}]
            if missing:
                offered = ", ".join(p.name for p in sweepable(spec)) or "none"
                raise UserError(f"sweep parameter: {spec.title} has no numeric parameter {missing[0]!r} to sweep "
                                f"(it has {offered})")
        grid = {n: list(v if v is not None else specs[0].param(n).grid or ()) for n, v in grid.items()}
        empty = [n for n, v in grid.items() if not v]
        if empty:
            raise UserError(f"sweep values for {empty[0]}: it has no paper grid; type the values to sweep")
        total = len(specs) * len(grid_points(grid))
        if total > MAX_SWEEP_POINTS:
            raise UserError(f"sweep values: {total} merges asked for, at most {MAX_SWEEP_POINTS} per sweep")
        space = self._space(entry, tasks)
        split = entry.held_out_split(space.task_names)
        if split is None:
            raise UserError("a sweep needs a head and validation (or training) images for every task")
        fixed = {}
        for spec in specs:  # the Merge tab's values (validated) that apply, less the swept ones
            given = resolve_params(spec.params, (settings or {}).get(spec.name), space.T)
            fixed[spec.name] = {k: v for k, v in applicable(spec.params, given).items() if k not in grid}
        for spec in specs:  # every point of every method is valid before anything runs
            check_points(spec, grid, fixed[spec.name], space.T)
        chain = [(m.name, plain(applicable(m.params, v))) for m, v in resolve_modifiers(_pairs(modifiers), space.T)]
        contexts = {spec.name: self._context(entry, spec, space.task_names) for spec in specs}
        start = time.perf_counter()
        with entry.lock:
            evaluator = entry.evaluator(space.device)
            references = {model: entry.reference(split, space.task_names, evaluator,
                                                 progress.sub(0.05 * i, 0.05 * (i + 1)), model)
                          for i, model in enumerate(("individual", "pretrained"))}
            frames = []
            for i, spec in enumerate(specs):
                step = progress.sub(0.1 + 0.9 * i / len(specs), 0.1 + 0.9 * (i + 1) / len(specs))
                table = sweep(entry.zoo, space, spec.name, grid, fixed[spec.name], chain, split=split,
                              runner=InProcess(evaluator, contexts[spec.name]), progress=step,
                              reference=references["individual"])
                frames.append(table.assign(method=spec.name))
        table = pd.concat(frames, ignore_index=True)[["method", *names, "task", "accuracy", "normalized"]]
        record = SweepRecord(entry.name, entry.fingerprint, [s.name for s in specs], [s.title for s in specs], grid,
                             plain(fixed), list(space.task_names), split, plain(table.to_dict("records")),
                             plain(references), time.perf_counter() - start, entry.label, owner,
                             [{"name": name, "params": params} for name, params in chain])
        self.sweeps.add(record)
        progress(1.0, "done")
        return record

    # ---------------------------------------------------------------- files
    def session_key(self, session: str) -> str:
        """A session's folder name: a keyed hash, so neither a folder name nor a path reveals the session."""
        return hmac.new(self._secret, str(session).encode(), hashlib.sha256).hexdigest()[:32]

    def session_dir(self, session: str) -> Path:
        """The session's private folder (uploads; exports made outside the app); never served over HTTP."""
        folder = self.data_dir / "sessions" / self.session_key(session)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def prune_sessions(self, max_age_days: float = 7.0) -> list[Path]:
        """Delete session folders (uploads, downloads) untouched for ``max_age_days`` (run at app start)."""
        root, cutoff = self.data_dir / "sessions", time.time() - max_age_days * 86400
        old = [d for d in root.iterdir() if d.is_dir() and max((p.stat().st_mtime for p in d.rglob("*")),
                                                                default=d.stat().st_mtime) < cutoff] \
            if root.is_dir() else []
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return old

    def save_uploads(self, files: Iterable[str | Path], session: str, move: bool = False) -> Path:
        """Copy (``move``: move, so the web server's upload copy is not kept too) uploaded safetensors into a
        fresh zoo folder in the session's folder: ``pretrained*`` → pretrained.safetensors, every other file →
        finetuned/<name>.safetensors (a manifest is then inferred)."""
        files = [Path(f) for f in files or []]
        if not files:
            raise UserError("no files uploaded")
        bad = [f.name for f in files if f.suffix != ".safetensors"]
        if bad:
            raise UserError(f"only .safetensors uploads are accepted (got {', '.join(bad)})")
        total = sum(f.stat().st_size for f in files)
        if total > self.settings.upload_limit:
            raise UserError(f"upload of {total / 2**20:.1f} MiB is over the limit of "
                            f"{self.settings.upload_limit / 2**20:.0f} MiB")
        pretrained = [f for f in files if f.stem.lower().startswith(("pretrained", "zeroshot"))]
        if len(pretrained) != 1:
            raise UserError("upload exactly one pretrained checkpoint named pretrained*.safetensors, plus one "
                            "fine-tuned checkpoint per task (named after the task)")
        if len(files) < 2:
            raise UserError("upload at least one fine-tuned checkpoint besides the pretrained one")
        uploads = self.session_dir(session) / "uploads"
        uploads.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=uploads)) / "zoo"
        (folder / "finetuned").mkdir(parents=True)
        for f in files:
            target = folder / "pretrained.safetensors" if f in pretrained else \
                folder / "finetuned" / (safe_name(f.stem) + ".safetensors")
            if move:
                shutil.move(f, target)
            else:
                shutil.copyfile(f, target)
        return folder

    def export_checkpoint(self, run_id: int, fmt: str, session: str, task: str | None = None,
                          folder: Path | None = None) -> Path:
        """Write the merged model (or one task's TALL reconstruction, or the TALL compressed form) of one of
        ``session``'s runs (or a shared run) into ``folder`` (default: the session's exports), atomically, never over
        a zoo input."""
        from merging.checkpoints import export_merge

        if fmt not in CHECKPOINT_FORMATS:
            raise UserError(f"unknown checkpoint format {fmt!r}; choose {', '.join(CHECKPOINT_FORMATS)}")
        result, space, record = self._result_for(run_id, session)
        row = None
        if task:
            if task not in space.task_names:
                raise UserError(f"task {task!r} is not in run #{run_id}")
            row = space.task_names.index(task)
        if result.per_task and fmt != "tall-compressed" and row is None:
            raise UserError(f"{record.method} serves one model per task: pick a task, or download the compressed "
                            f"TALL form")
        name = f"run{run_id}-{record.method}" + (f"-{safe_name(task)}" if task else "")
        target = Path(folder or self.session_dir(session) / "exports") / (name + CHECKPOINT_FORMATS[fmt])
        zoo = self._zoos.get(record.zoo_hash)
        export_merge(target, space, result, fmt, inputs=zoo.zoo.inputs() if zoo else (), task=row)
        return target

    def _result_for(self, run_id: int, viewer: str, purpose: str = "download its checkpoint"):
        """(result, space, record) of a run ``viewer`` may see: cached, or merged again from the recorded
        parameters (methods are deterministic given their seeds) when it was dropped from memory."""
        from merging.registry import get_method, run_merge

        record = self.history.get(run_id, viewer)
        with self._lock:
            view = self._runs.get(int(run_id))
        if view is not None:
            return view.result, view.space, view.record
        entry = self.entry_for(record, viewer, purpose)
        spec = get_method(record.method)
        space = self._space(entry, record.tasks)
        result = run_merge(space, spec, record.params, None, self._context(entry, spec, space.task_names),
                           _pairs(record.modifiers))
        return result, space, record

    def entry_for(self, record: RunRecord, viewer: str, purpose: str) -> ZooEntry:
        """The loaded zoo a run was made on, if ``viewer`` may use it; else a message naming it (for an
        uploaded archive: its name and sha256, which loads it again)."""
        with self._lock:
            entry = self._zoos.get(record.zoo_hash)
        if entry is None or entry.owner not in ("", viewer):
            raise UserError(f"run #{record.id} was made on zoo {record.zoo!r}, which is not loaded now: load "
                            f"{record.zoo_path or 'it'} again to {purpose}")
        return entry

    def reopen(self, run_id: int, viewer: str, progress=None) -> RunView:
        """A run of the history as the Merge tab shows it: from memory, or merged again from its recorded
        parameters (mask statistics recomputed; accuracy from the history, not evaluated again)."""
        from merging.maskstats import mask_statistics

        record = self.history.get(run_id, viewer)
        with self._lock:
            view = self._runs.get(int(run_id))
        if view is not None:
            return view
        progress = as_progress(progress)
        progress(0.0, f"merging run #{record.id} again")
        result, space, _ = self._result_for(record.id, viewer, "open it")
        progress(0.6, "mask statistics")
        stats = {kind: mask_statistics(masks, space.index) for kind, masks in result.masks.items()}
        merged = pd.DataFrame({"task": list(record.accuracy), "accuracy": list(record.accuracy.values())})
        label = RECONSTRUCTED.get(record.method, "reconstructed") if result.per_task else "merged"
        view = RunView(record, stats, dict(result.tables),
                       self._accuracy_table(self.cached_baselines(record), merged, label),
                       result.params.get("k") if record.method == "consensus" else None, result, space)
        self._keep(view)
        progress(1.0, "done")
        return view

    def _keep(self, view: RunView) -> None:
        with self._lock:
            self._runs[view.id] = view
            while len(self._runs) > self.settings.keep_results:
                self._runs.popitem(last=False)

    def export_results(self, run_ids: Sequence[int] | None, fmt: str, session: str,
                       folder: Path | None = None) -> Path:
        """The runs ``session`` may see (shared and its own; or ``run_ids`` among them) as CSV or JSON."""
        if fmt not in ("csv", "json"):
            raise UserError(f"results export format must be csv or json, got {fmt!r}")
        ids = list(run_ids) if run_ids else None
        name = "runs" if ids is None else "runs-" + "-".join(map(str, ids[:5]))
        target = Path(folder or self.session_dir(session) / "exports") / f"{name}.{fmt}"
        return self.history.export(target, ids, viewer=session)


def _pairs(modifiers: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict]]:
    """``[{"name", "params"}]`` (the recipe's and the history's form) → run_merge's ``(name, params)`` pairs."""
    return [(m["name"], dict(m.get("params") or {})) for m in modifiers]


def _secret(path: Path) -> bytes:
    """The app's secret key (created once, readable by its owner only)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        key = secrets.token_bytes(32)
        from merging.atomic import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_text(key.hex())
            tmp.chmod(0o600)
        return key
