"""Per-task evaluation plug-in for models that are not open_clip image encoders (LLMs, any architecture).

The plug-in is a Python callable written by the user::

    def evaluate(state_dict: dict[str, torch.Tensor], task: str, split: str = "test") -> float:
        '''Accuracy in [0, 1] of the model holding ``state_dict`` on ``task`` (``split``: "test" for --eval,
        "val" for sweeps; the parameter is optional: a callable without it is called with two arguments).'''

``state_dict`` is the full CPU state dict of θ0 + δ (keys as in the pretrained checkpoint, tensors in their own
dtype), a fresh copy the callable may keep or load with ``model.load_state_dict(state_dict)``.  It is given to the
CLI as ``--evaluator module:function`` (a module on ``sys.path`` such as ``mypkg.evals:evaluate``, or a file,
``path/to/evals.py:evaluate``; importing it runs that file's code, as ``python path/to/evals.py`` would) and
used by ``merge --eval`` and ``sweep`` in place of a zoo's heads and data; in the library it is the ``evaluator``
of :func:`merging.selection.select` (``zoo`` None, ``reference=dict(zip(tasks, plugin.finetuned(space, tasks,
"val")))``) and of :func:`merging.evaluation.evaluate_result`.  There is none by default: the merge,
its export, the mask statistics and their figures never need it.

:class:`PluginEvaluator` offers the methods :func:`merging.evaluation.evaluate_result` and the sweep runner call
on a zoo's :class:`~merging.evaluation.Evaluator` (``load_flat``, ``load_state``, ``run``), plus
:meth:`PluginEvaluator.baselines` (θ0 and θ0 + τt per task, the reference of normalized accuracy).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd



class EvaluatorError(ValueError):
    """An ``--evaluator`` that cannot be imported or called, or that returned something other than a number."""


def load_evaluator(spec: str) -> "PluginEvaluator":
    """``"module:function"`` or ``"path/to/file.py:function"`` → a :class:`PluginEvaluator`."""
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise EvaluatorError(f"--evaluator: {spec!r} is not MODULE:FUNCTION or FILE.py:FUNCTION")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise EvaluatorError(f"--evaluator: {path}: no such file")
        name = f"mergescope_evaluator_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise EvaluatorError(f"--evaluator: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EvaluatorError(f"--evaluator: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise EvaluatorError(f"--evaluator: {module_name} has no callable {attr!r}")
    return PluginEvaluator(fn, spec)


class PluginEvaluator:
    """Per-task accuracy from ``fn(state_dict, task[, split])`` (see the module docstring)."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "evaluator")
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        self._takes_split = any(p.name == "split" or p.kind is p.VAR_KEYWORD for p in parameters)
        self._state: Callable[[], dict] | None = None

    def load_flat(self, space, delta) -> None:
        """θ0 + δ (δ None: θ0), materialised as a state dict only when a task is evaluated."""
        self._state = lambda: space.state_dict(delta)

    def load_state(self, state) -> None:
        self._state = lambda: dict(state)

    def accuracy(self, task: str, split: str) -> float:
        if self._state is None:
            raise RuntimeError("no weights loaded: call load_flat or load_state first")
        state = self._state()
        try:
            value = self.fn(state, task, split=split) if self._takes_split else self.fn(state, task)
        except Exception as exc:
            raise EvaluatorError(f"evaluator {self.name} failed on task {task!r}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise EvaluatorError(f"evaluator {self.name} returned {str(value)[:40]!r} for task {task!r}; expected "
                                 "a finite number (accuracy)")
        return number

    def run(self, set_weights: Callable[[str], None], tasks: Sequence[str], split: str, progress=None) -> pd.DataFrame:
        """The table of :meth:`merging.evaluation.Evaluator.run` (``correct`` and ``n`` are not known: NaN)."""
        from .evaluation import run_tasks

        return run_tasks(lambda task, split, _: (self.accuracy(task, split), math.nan, math.nan), set_weights,
                         tasks, split, progress)

    def baselines(self, space, tasks: Sequence[str] | None = None, split: str = "test") -> pd.DataFrame:
        """θ0's and each fine-tuned model's (θ0 + τt, from the space) accuracy: the columns of
        :func:`merging.evaluation.evaluate_baselines`."""
        tasks = list(tasks) if tasks is not None else list(space.task_names)
        self.load_flat(space, None)
        pretrained = [self.accuracy(task, split) for task in tasks]
        return pd.DataFrame({"task": tasks, "split": split, "pretrained": pretrained,
                             "finetuned": self.finetuned(space, tasks, split)})

    def finetuned(self, space, tasks: Sequence[str], split: str) -> list[float]:
        """Each task's fine-tuned model θ0 + τt (rebuilt from the space) on its own task."""
        accuracies = []
        for task in tasks:
            self.load_flat(space, space.tau(space.task_names.index(task)))
            accuracies.append(self.accuracy(task, split))
        return accuracies
