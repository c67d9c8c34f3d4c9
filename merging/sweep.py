"""Grid sweeps: every point of a 1-D or 2-D (or larger) parameter grid merged and evaluated on a held-out split.

``sweep(zoo, space, method, grid={"k": [10, 20], "lam": [0.5, 1.0]}, params=..., split="val")`` returns one row
per (point, task) with the point's values, accuracy and normalized accuracy (by the fine-tuned models on the
same split); :func:`check_points` validates every point before anything runs.  Points run in-process by default
(``InProcess(evaluator, context)`` reuses an evaluator and gives data-driven methods their data), or as Ray tasks
(``runner=RayRunner(address)``): the space's θ0 and stack go into Ray's object store once (zero-copy numpy arrays)
and each task rebuilds the space from them and loads the zoo from its path, so the zoo folder must be readable on
every node.  Both runners give the same table.  ``evaluator`` (a :class:`merging.plugin_eval.PluginEvaluator`,
in-process only) replaces the zoo's heads and data, and ``zoo`` may then be None.  :func:`best_point` picks the
point with the highest mean normalized accuracy (ties: the first in grid order) and says whether a value lies on
the grid's edge.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from .progress import as_progress


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """The Cartesian product of ``grid``'s values, the last parameter varying fastest."""
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ValueError("a sweep needs at least one value for every swept parameter")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _evaluate_point(zoo, space, method: str, params: Mapping, modifiers, split: str, reference, evaluator,
                    context=None, progress=None):
    from .evaluation import evaluate_result
    from .registry import run_merge

    progress = as_progress(progress)
    result = run_merge(space, method, dict(params), progress.sub(0.0, 0.3), context, modifiers)
    return evaluate_result(zoo, space, result, split=split, reference=reference, evaluator=evaluator,
                           progress=progress.sub(0.3, 1.0))


class InProcess:
    """Run the points one after another in this process (the default); a method with a grid function (CART) gets
    all points at once through :func:`merging.registry.run_grid`, sharing work between them.  ``evaluator``: an
    :class:`~merging.evaluation.Evaluator` to reuse (default: a new one); ``context``: the evaluation context a
    data-driven method learns from (CALM, AdaMerging, PCB + ES)."""

    def __init__(self, evaluator=None, context=None):
        self.evaluator, self.context = evaluator, context

    def map(self, zoo, space, method, points, base, modifiers, split, reference, progress, evaluator=None):
        from .evaluation import Evaluator, evaluate_result
        from .registry import get_method, run_grid

        evaluator = evaluator or self.evaluator or Evaluator(zoo, device=space.device)
        spec = get_method(method)
        shared = None
        if spec.grid is not None and not spec.needs_data:
            shared = run_grid(space, spec, [{**base, **point} for point in points], progress.sub(0.0, 1 / len(points)),
                              modifiers=modifiers)
        tables = []
        for i, point in enumerate(points):
            values = ", ".join(f"{k}={v}" for k, v in point.items())
            step = progress.sub(i / len(points), (i + 1) / len(points))
            step(0.0, f"point {i + 1}/{len(points)}: {values}")
            if shared is None:
                tables.append(_evaluate_point(zoo, space, method, {**base, **point}, modifiers, split, reference,
                                              evaluator, self.context, step))
            else:
                tables.append(evaluate_result(zoo, space, next(shared), split=split, reference=reference,
                                              evaluator=evaluator, progress=step))
        return tables


class RayRunner:
    """Run each point as a Ray task (``address``: a cluster address, "auto", or None for a local instance)."""

    def __init__(self, address: str | None = None, num_cpus_per_task: float = 1, num_gpus_per_task: float = 0):
        self.address, self.cpus, self.gpus = address, num_cpus_per_task, num_gpus_per_task

    def map(self, zoo, space, method, points, base, modifiers, split, reference, progress, evaluator=None):
        import ray

        if evaluator is not None:
            raise ValueError("an --evaluator plug-in runs in-process only; drop --ray")

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        parts = {"theta0": space.theta0.cpu().numpy(), "stack": space.stack.cpu().numpy(), "rows": space.rows,
                 "index": space.index, "base": space.base, "names": space.task_names}
        shared = ray.put(parts)  # once; every task reads the same object
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_ray_point)
        pending = [remote.remote(shared, str(zoo.manifest.path or zoo.root), method, {**base, **point}, modifiers,
                                 split, reference) for point in points]
        tables = []
        for i, ref in enumerate(pending):  # in grid order
            tables.append(ray.get(ref))
            progress((i + 1) / len(points), f"point {i + 1}/{len(points)} done")
        return tables


def _ray_point(parts, zoo_path, method, params, modifiers, split, reference):
    import torch

    from .evaluation import Evaluator
    from .space import TaskVectorSpace
    from .zoo import load_zoo

    zoo = load_zoo(zoo_path)
    space = TaskVectorSpace(parts["index"], parts["base"], torch.from_numpy(parts["theta0"]),
                            torch.from_numpy(parts["stack"]), parts["names"], parts["rows"])
    return _evaluate_point(zoo, space, method, params, modifiers, split, reference, Evaluator(zoo, device="cpu"))


def check_points(spec, grid: Mapping[str, Sequence[Any]], params: Mapping | None, num_tasks: int) -> list[dict]:
    """The grid's points, each validated with ``params`` against the method's spec (``spec``: a
    :class:`merging.registry.MergeMethod`) before anything runs; a swept parameter must apply (not one that
    ``when`` switches off given the other values)."""
    from .params import ParameterError, applicable, resolve_params

    points = grid_points(grid)
    for point in points:
        values = resolve_params(spec.params, {**(params or {}), **point}, num_tasks)
        ignored = [name for name in point if name not in applicable(spec.params, values)]
        if ignored:
            other, value = spec.param(ignored[0]).when
            raise ParameterError(f"{ignored[0]}: {spec.title} uses it only with {other}={value}")
    return points


def sweep(zoo, space, method: str, grid: Mapping[str, Sequence[Any]], params: Mapping | None = None,
          modifiers: Sequence = (), split: str = "val", runner=None, progress=None, evaluator=None,
          reference: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per (grid point, task): the swept values, task, accuracy, normalized; ``params`` fixes the rest.
    ``reference``: the fine-tuned models' ``split`` accuracy per task (default: evaluated here)."""
    from .evaluation import evaluate
    from .registry import get_method

    if split == "test":
        raise ValueError("sweeps choose hyperparameters on held-out data; split='test' is not allowed")
    spec = get_method(method)
    points = check_points(spec, grid, params, space.T)
    progress = as_progress(progress)
    if reference is None and evaluator is not None:
        reference = dict(zip(space.task_names, evaluator.finetuned(space, space.task_names, split)))
    elif reference is None:
        reference = dict(zip(space.task_names, evaluate(zoo, zoo.finetuned_state, space.task_names, split,
                                                        device=space.device)["accuracy"]))
    tables = (runner or InProcess()).map(zoo, space, spec.name, points, dict(params or {}), list(modifiers),
                                         split, reference, progress, evaluator)
    rows = [table.assign(**{name: [value] * len(table) for name, value in point.items()})
            for point, table in zip(points, tables)]
    out = pd.concat(rows, ignore_index=True)
    return out[[*grid, *[c for c in out.columns if c not in grid]]]


@dataclass
class Best:
    point: dict
    mean_normalized: float
    on_edge: list[str]  # swept parameters whose best value is the grid's first or last


def parse_grid(spec, items: Sequence[str], num_tasks: int) -> dict[str, list]:
    """``["k=10,20", "lam=0.5,1"]`` → ``{"k": [10.0, 20.0], "lam": [0.5, 1.0]}``, each value checked by the
    method's parameter spec (``spec``: a :class:`merging.registry.MergeMethod`)."""
    from .params import ParameterError, parse_assignments

    grid = {}
    for name, text in parse_assignments(items, "--grid").items():
        param = next((p for p in spec.params if p.name == name), None)
        if param is None:
            raise ParameterError(f"--grid: {spec.title} has no parameter {name!r}")
        values = [v for v in text.split(",") if v.strip()]
        if not values:
            raise ParameterError(f"--grid {name}: give comma-separated values")
        grid[name] = [param.coerce(v) for v in values]
    return grid


def best_point(table: pd.DataFrame, grid: Mapping[str, Sequence[Any]]) -> Best:
    names = list(grid)
    means = table.groupby(names, sort=False)["normalized"].mean()
    key = means.idxmax()
    key = key if isinstance(key, tuple) else (key,)
    point = dict(zip(names, key))
    edge = [n for n in names if len(grid[n]) > 1 and point[n] in (grid[n][0], grid[n][-1])]
    return Best(point, float(means.max()), edge)
