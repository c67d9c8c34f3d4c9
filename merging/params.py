"""Typed hyperparameter specs shared by the CLI and the dashboard.

Every merge method declares a tuple of :class:`Param` (name, type, default, range, help), in the spirit of
mergekit's ``ConfigParameterDef``.  :func:`resolve_params` turns user input (CLI strings, widget values) into
validated Python values and raises :class:`ParameterError` with a message naming the parameter otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


class ParameterError(ValueError):
    """A hyperparameter is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # float, int, bool or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    per_task: bool = False  # value is one number or a list of one number per task (λt)
    step: float | None = None  # slider resolution for the dashboard
    grid: tuple[Any, ...] | None = None  # the paper's search grid, for sweeps and validation selection
    when: tuple[str, Any] | None = None  # (other parameter, value or tuple of values): applies only when that
    # parameter has that value (one of those values)
    auto: bool = False  # a number that may also be "auto": a default the method derives (CART's λ, CALM's lr)

    def applies(self, params: Mapping[str, Any]) -> bool:
        """Whether this parameter applies given the others' values (see ``when``)."""
        return self.when is None or params.get(self.when[0]) in self.when_values()

    def when_values(self) -> tuple:
        """The values of ``when``'s parameter for which this one applies (empty when ``when`` is None)."""
        if self.when is None:
            return ()
        return self.when[1] if isinstance(self.when[1], tuple) else (self.when[1],)

    def coerce(self, value: Any, num_tasks: int | None = None) -> Any:
        """Convert and range-check ``value``; per-task params return a list of ``num_tasks`` values."""
        if self.per_task:
            if isinstance(value, str) and "," in value:
                value = [v for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)):
                items = [self._scalar(v) for v in value]
                if num_tasks is not None and len(items) == 1:
                    items = items * num_tasks
                if num_tasks is not None and len(items) != num_tasks:
                    raise ParameterError(
                        f"{self.name}: expected 1 or {num_tasks} values (one per task), got {len(items)}")
                return items
            one = self._scalar(value)
            return [one] * num_tasks if num_tasks is not None else one
        return self._scalar(value)

    def _scalar(self, value: Any) -> Any:
        if self.auto and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = low in ("true", "1", "yes")
                elif not isinstance(value, (bool, int)):
                    raise ValueError(value)
                return bool(value)
            if self.type is int:
                if isinstance(value, bool):
                    raise ValueError(value)
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                value = int(number)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
                if value != value:
                    raise ValueError("NaN")
            else:
                value = str(value)
        except (TypeError, ValueError):
            expected = f"'auto' or a {self.type.__name__}" if self.auto else self.type.__name__
            raise ParameterError(f"{self.name}: expected {expected}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{self.name}: must be one of {', '.join(self.choices)}; got {value!r}")
        if self.low is not None and value < self.low:
            raise ParameterError(f"{self.name}: {value} is below the minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ParameterError(f"{self.name}: {value} is above the maximum {self.high}")
        return value

    def describe(self) -> str:
        rng = ""
        if self.choices:
            rng = " {" + "|".join(self.choices) + "}"
        elif self.low is not None or self.high is not None:
            rng = f" [{self.low}, {self.high}]"
        per = " (one value or one per task)" if self.per_task else ""
        return f"{self.name}={self.default!r}{rng}{per}: {self.help}"


def resolve_params(spec: Sequence[Param], given: Mapping[str, Any] | None, num_tasks: int | None = None) -> dict:
    """Defaults overridden by ``given``; unknown names and bad values raise :class:`ParameterError`."""
    given = dict(given or {})
    by_name = {p.name: p for p in spec}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; this method takes: {known}")
    return {p.name: p.coerce(given.get(p.name, p.default), num_tasks) for p in spec}


def applicable(spec: Sequence[Param], params: Mapping[str, Any]) -> dict:
    """``params`` without the ones that do not apply given the others (DARE's TIES ``k`` with the TA base)."""
    by_name = {p.name: p for p in spec}
    return {name: value for name, value in params.items() if name not in by_name or by_name[name].applies(params)}


def parse_assignments(items: Sequence[str], option: str = "--set") -> dict[str, str]:
    """``["k=20", "lam=0.3"]`` → ``{"k": "20", "lam": "0.3"}`` (CLI ``--set``, or ``option``)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"{option} expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
