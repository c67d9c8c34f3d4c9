"""The method registry: every merge method is one :class:`MergeMethod` registered by its module.

The CLI and the dashboard list methods, render their parameter specs and run them through :func:`run_merge`.
Modeled on open_clip's model-config registry: methods register themselves on import of ``merging.methods``.

*Modifiers* (:class:`Modifier`, registered on import of ``merging.modifiers``; LiNeS) post-process any method's
merged vector: ``run_merge(..., modifiers=[("lines", {"beta": 0.5})])`` applies them in order to
``result.delta``.  For per-task results (TALL, EMR) ``delta`` is the shared vector that every task's mask and
rescaler act on, so θ̂t = θ0 + s_t·m_t ⊙ modifier(delta); for a per-tensor scaling such as LiNeS this equals
applying the modifier to every task's own θ̂t − θ0, since it commutes with masks and scalars.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from .maskset import MaskSet
from .params import Param, resolve_params
from .progress import Progress, as_progress


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class UnknownModifierError(UnknownMethodError):
    pass


@dataclass
class MergeResult:
    """θ = θ0 + ``delta``; ``task_delta(t)`` differs from ``delta`` only for per-task methods (TALL, EMR)."""

    method: str
    params: dict
    delta: torch.Tensor
    masks: dict[str, MaskSet] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    task_masks: MaskSet | None = None  # per-task reconstruction θ̂t = θ0 + s_t·m_t ⊙ delta (TALL, EMR)
    task_scales: list[float] | None = None  # per-task rescalers s_t (EMR's λt); None means s_t = 1 (TALL)
    modifiers: list[tuple[str, dict]] = field(default_factory=list)  # applied to delta, in order
    seconds: float = 0.0
    device: str = ""

    @property
    def per_task(self) -> bool:
        return self.task_masks is not None

    def task_delta(self, t: int) -> torch.Tensor:
        if self.task_masks is None:
            return self.delta
        masked = self.delta * self.task_masks.get(t)
        return masked if self.task_scales is None else masked.mul_(self.task_scales[t])


@dataclass(frozen=True)
class MergeMethod:
    name: str
    title: str
    summary: str  # one line for non-experts
    paper: str
    params: tuple[Param, ...]
    run: Callable[..., MergeResult]  # run(space, params, progress, context) -> MergeResult
    needs_data: bool = False  # CALM / AdaMerging need a model and unlabeled images (context)
    needs_labels: bool = False  # PCB + ES maximises accuracy: the context's images need their labels
    # grid(space, points, progress) -> iterable of MergeResult: run() for each resolved parameter dict of a sweep,
    # sharing work between points (CART decomposes each matrix once); None: run() per point
    grid: Callable[..., Iterable[MergeResult]] | None = None

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


METHODS: dict[str, MergeMethod] = {}


def _register(table: dict, item, kind: str):
    if item.name in table:
        raise ValueError(f"{kind} {item.name!r} registered twice")
    table[item.name] = item
    return item


def _lookup(table: dict, name: str, kind: str, error: type[KeyError]):
    key = name.strip().lower().replace("-", "_")
    if key not in table:
        raise error(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    return table[key]


def register(method: MergeMethod) -> MergeMethod:
    return _register(METHODS, method, "method")


def list_methods() -> list[MergeMethod]:
    from . import methods  # noqa: F401  (registers the built-in methods)
    return list(METHODS.values())


def get_method(name: str) -> MergeMethod:
    from . import methods  # noqa: F401
    return _lookup(METHODS, name, "merge method", UnknownMethodError)


@dataclass(frozen=True)
class Modifier:
    """A post-processing step of any method's merged vector: ``apply(space, result, params) -> new delta``."""

    name: str
    title: str
    summary: str  # one line for non-experts
    paper: str
    params: tuple[Param, ...]
    apply: Callable[..., torch.Tensor]

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


MODIFIERS: dict[str, Modifier] = {}


def register_modifier(modifier: Modifier) -> Modifier:
    return _register(MODIFIERS, modifier, "modifier")


def list_modifiers() -> list[Modifier]:
    from . import modifiers  # noqa: F401  (registers the built-in modifiers)
    return list(MODIFIERS.values())


def get_modifier(name: str) -> Modifier:
    from . import modifiers  # noqa: F401
    return _lookup(MODIFIERS, name, "modifier", UnknownModifierError)


ModifierSpec = tuple[str | Modifier, Mapping[str, Any] | None]


def resolve_modifiers(modifiers: Sequence[ModifierSpec], num_tasks: int | None = None) -> list[tuple[Modifier, dict]]:
    """``(name or Modifier, params)`` pairs → ``(Modifier, validated params)``; raises on unknown names/values."""
    chain = []
    for modifier, given in modifiers:
        modifier = get_modifier(modifier) if isinstance(modifier, str) else modifier
        chain.append((modifier, resolve_params(modifier.params, given, num_tasks)))
    return chain


def apply_modifiers(space, result: MergeResult, chain: Sequence[tuple[Modifier, dict]], progress=None) -> MergeResult:
    """Apply resolved modifiers in order to ``result.delta`` (in place on the result; returns it)."""
    progress = as_progress(progress)
    for modifier, values in chain:
        progress(1.0, f"modifier {modifier.title}")
        result.delta = modifier.apply(space, result, values)
        result.modifiers.append((modifier.name, values))
    return result


def run_merge(space, method: str | MergeMethod, params: Mapping[str, Any] | None = None, progress=None,
              context: Any = None, modifiers: Sequence[ModifierSpec] = ()) -> MergeResult:
    """Validate ``params`` against the method's spec and run it, then apply ``modifiers`` (``(name, params)``
    pairs, in order) to its delta; the result records time, device and the resolved modifiers."""
    method = get_method(method) if isinstance(method, str) else method
    resolved = resolve_params(method.params, params, space.T)
    chain = resolve_modifiers(modifiers, space.T)
    if method.needs_data and context is None:
        raise ValueError(f"{method.title} needs a model and unlabeled data (an evaluation context)")
    progress = as_progress(progress)
    start = time.perf_counter()
    result = method.run(space, resolved, progress, context)
    apply_modifiers(space, result, chain, progress)
    if space.device.type == "cuda":
        torch.cuda.synchronize(space.device)
    result.seconds = time.perf_counter() - start
    result.device = str(space.device)
    progress(1.0, "done")
    return result


def run_grid(space, method: str | MergeMethod, points: Sequence[Mapping[str, Any]], progress=None,
             context: Any = None, modifiers: Sequence[ModifierSpec] = ()) -> Iterator[MergeResult]:
    """:func:`run_merge` for every parameter dict in ``points``, in order and lazily; a method with a ``grid``
    function computes them together (the same merges, sharing work; its results carry no figure tables)."""
    method = get_method(method) if isinstance(method, str) else method
    resolved = [resolve_params(method.params, p, space.T) for p in points]
    chain = resolve_modifiers(modifiers, space.T)
    if method.grid is None or method.needs_data:
        for params in resolved:
            yield run_merge(space, method, params, progress, context, modifiers)
        return
    for result in method.grid(space, resolved, as_progress(progress)):
        result.device = str(space.device)
        yield apply_modifiers(space, result, chain)


def lam_param(default: float, help: str = "scaling coefficient λ: θ = θ0 + λ·τ_merged",
              grid: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), high: float = 3.0) -> Param:
    return Param("lam", float, default, help, low=0.0, high=high, step=0.05, grid=tuple(grid))
