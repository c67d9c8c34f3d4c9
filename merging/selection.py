"""Validation-based hyperparameter selection (never test data).

* Shared λ (Task Arithmetic, Consensus, TIES, ... — any method with a ``lam`` parameter): the λ of the method's
  grid (``Param.grid``) with the highest mean normalized validation accuracy, normalized by the fine-tuned
  models' validation accuracy (Ilharco et al., 2023; Wang et al., 2024).
* TALL: per task t, the λt of the grid {0.2, …, 0.6} whose reconstruction θ̂t = θ0 + mt(λt) ⊙ τMTL has the highest
  validation top-1 on task t (Wang et al., 2024).  mt depends only on λt, so one TALL run per grid value serves
  every task.
* A modifier's parameter (LiNeS's β, :func:`select_modifier`): the grid value (``Param.grid``) with the highest
  mean normalized validation accuracy of the modified merge (the method runs once; Wang et al., ICLR 2025).

Ties go to the smallest λ.
"""
from __future__ import annotations

import math
import copy
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd

from .evaluation import Evaluator, evaluate, evaluate_result
from .progress import as_progress
from .registry import (MergeResult, apply_modifiers, get_method, get_modifier, resolve_modifiers, run_grid,
                       run_merge)


@dataclass
class Selection:
    method: str
    params: dict  # the chosen parameters, ready for run_merge
    table: pd.DataFrame  # one row per (value, task): value, task, accuracy[, normalized]
    result: MergeResult  # the merge with the chosen parameters
    modifiers: list = field(default_factory=list)  # (name, params) for run_merge(..., modifiers=…)


def argmax_smallest(values: Sequence[float], scores: Sequence[float]) -> float:
    """The value with the highest score; ties (and NaN scores, which never win) go to the smallest value."""
    if len(values) != len(scores) or not values:
        raise ValueError("one score per grid value is required")
    best, best_score = None, -math.inf
    for value, score in sorted(zip(values, scores), key=lambda pair: pair[0]):
        if best is None or (not math.isnan(score) and score > best_score):
            best, best_score = value, (score if not math.isnan(score) else -math.inf)
    return best


def _check_split(split: str) -> None:
    if split == "test":
        raise ValueError("hyperparameters are selected on validation data; split='test' is not allowed")


def select(zoo, space, method: str, params: Mapping | None = None, split: str = "val",
           grid: Sequence[float] | None = None, reference: Mapping[str, float] | None = None,
           evaluator: Evaluator | None = None, progress=None, **options) -> Selection:
    """Pick λ (shared, or per task for TALL) on ``split`` of the space's tasks; see the module docstring."""
    _check_split(split)
    spec = get_method(method)
    progress = as_progress(progress)
    evaluator = evaluator if evaluator is not None else Evaluator(zoo, **options)
    tasks = list(space.task_names)
    params = dict(params or {})
    if spec.name == "tall":
        return _select_tall(zoo, space, spec, params, split, grid, evaluator, tasks, progress)
    names = [p.name for p in spec.params]
    if "lam" not in names:
        raise ValueError(f"{spec.title} has no scaling coefficient λ to select")
    grid = list(grid if grid is not None else spec.param("lam").grid)
    if reference is None:
        reference = dict(zip(tasks, evaluate(zoo, zoo.finetuned_state, tasks, split, evaluator=evaluator,
                                             progress=progress.sub(0.0, 0.3))["accuracy"]))
    frames, sub = [], progress.sub(0.3, 1.0)
    results = run_grid(space, spec, [{**params, "lam": lam} for lam in grid])
    for i, (lam, result) in enumerate(zip(grid, results)):
        table = evaluate_result(zoo, space, result, tasks, split, reference=reference, evaluator=evaluator,
                                progress=sub.sub(i / len(grid), (i + 1) / len(grid)))
        frames.append(table.assign(value=lam))
    table = pd.concat(frames, ignore_index=True)
    means = table.groupby("value")["normalized"].mean()
    chosen = argmax_smallest(list(means.index), list(means.to_numpy()))
    final = {**params, "lam": chosen}
    return Selection(spec.name, final, table, run_merge(space, spec, final))


def select_modifier(zoo, space, method: str, params: Mapping | None = None, modifier: str = "lines",
                    param: str = "beta", modifier_params: Mapping | None = None, split: str = "val",
                    grid: Sequence[float] | None = None, reference: Mapping[str, float] | None = None,
                    evaluator: Evaluator | None = None, progress=None, **options) -> Selection:
    """Pick one parameter of a modifier applied to ``method``'s merge (default LiNeS β) on ``split``."""
    _check_split(split)
    spec, mod = get_method(method), get_modifier(modifier)
    progress = as_progress(progress)
    evaluator = evaluator if evaluator is not None else Evaluator(zoo, **options)
    tasks = list(space.task_names)
    grid = list(grid if grid is not None else next(p for p in mod.params if p.name == param).grid)
    if reference is None:
        reference = dict(zip(tasks, evaluate(zoo, zoo.finetuned_state, tasks, split, evaluator=evaluator,
                                             progress=progress.sub(0.0, 0.2))["accuracy"]))
    base = run_merge(space, spec, params)

    def modified(value) -> MergeResult:
        result = copy.copy(base)
        result.info, result.modifiers = dict(base.info), list(base.modifiers)
        return apply_modifiers(space, result, resolve_modifiers([(mod, {**(modifier_params or {}), param: value})],
                                                                space.T))

    frames, sub = [], progress.sub(0.2, 1.0)
    for i, value in enumerate(grid):
        table = evaluate_result(zoo, space, modified(value), tasks, split, reference=reference, evaluator=evaluator,
                                progress=sub.sub(i / len(grid), (i + 1) / len(grid)))
        frames.append(table.assign(value=value))
    table = pd.concat(frames, ignore_index=True)
    means = table.groupby("value")["normalized"].mean()
    result = modified(argmax_smallest(list(means.index), list(means.to_numpy())))
    return Selection(spec.name, dict(base.params), table, result, result.modifiers[len(base.modifiers):])


def _select_tall(zoo, space, spec, params, split, grid, evaluator, tasks, progress) -> Selection:
    grid = list(grid if grid is not None else spec.param("tall_lambda").grid)
    frames = []
    for i, lam in enumerate(grid):
        result = run_merge(space, spec, {**params, "tall_lambda": lam})
        table = evaluate_result(zoo, space, result, tasks, split, evaluator=evaluator,
                                progress=progress.sub(i / len(grid), (i + 1) / len(grid)))
        frames.append(table.assign(value=lam))
    table = pd.concat(frames, ignore_index=True)
    chosen = [argmax_smallest(list(rows["value"]), list(rows["accuracy"]))
              for rows in (table[table["task"] == t] for t in tasks)]
    final = {**params, "tall_lambda": chosen}
    return Selection(spec.name, final, table, run_merge(space, spec, final))
