"""Stored sweeps: every dashboard sweep (its grid, the Merge-tab settings it held fixed, its table and the θ0 /
individual references on the same split) is one row of a ``sweeps`` table in the history file, so it survives a
restart, can be reopened and compared.

Which parameters a sweep may vary (:func:`sweepable`): the numeric ones (int or float, no choice lists), the
paper's tuned ones (those with a search grid) first.  The best point is :func:`merging.sweep.best_point`'s
(highest mean normalized accuracy, ties: the first in grid order), per method; the overall best is the method
whose best scores highest (ties: the first method).
"""
from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from merging.sweep import Best, best_point

from .history import History, HistoryError, _short, _visible, modifiers_text, plain

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, owner TEXT NOT NULL DEFAULT '',
    zoo_hash TEXT NOT NULL, record TEXT NOT NULL);
"""
SYMBOLS = {"lam": "λ"}  # how a parameter is written for people


def symbol(name: str) -> str:
    return SYMBOLS.get(name, name)


def sweepable(method) -> list:
    """The parameters of ``method`` (a :class:`merging.registry.MergeMethod`) a sweep can vary: numbers without
    a choice list, those with the paper's search grid first."""
    numeric = [p for p in method.params if p.type in (int, float) and not p.choices]
    return sorted(numeric, key=lambda p: p.grid is None)


def values_text(values: Sequence[Any]) -> str:
    return ", ".join(_short(v) for v in values)


@dataclass
class SweepRecord:
    zoo: str
    zoo_hash: str
    methods: list[str]
    titles: list[str]  # the methods' display names, same order
    grid: dict[str, list]  # swept parameter → its values, in grid order (the first is the x axis)
    settings: dict[str, dict]  # method → the parameters held fixed (as set in the Merge tab, applicable ones)
    tasks: list[str]
    split: str
    rows: list[dict]  # method, the swept values, task, accuracy, normalized
    references: dict[str, dict[str, float]]  # "pretrained" / "individual" → task → accuracy on ``split``
    seconds: float = 0.0
    zoo_path: str = ""
    owner: str = ""
    modifiers: list[dict] = field(default_factory=list)  # applied to every point's merge: [{"name", "params"}]
    id: int | None = None
    created: float = field(default_factory=time.time)

    def table(self) -> pd.DataFrame:
        columns = ["method", *self.grid, "task", "accuracy", "normalized"]
        return pd.DataFrame(self.rows, columns=columns)

    def reference_means(self) -> dict[str, float]:
        """Mean accuracy of θ0 ("pretrained") and of the fine-tuned models ("individual") over the tasks."""
        return {model: sum(acc[t] for t in self.tasks) / len(self.tasks) for model, acc in self.references.items()
                if self.tasks and all(t in acc for t in self.tasks)}

    def bests(self) -> dict[str, Best]:
        """Each method's best point (:func:`merging.sweep.best_point`), its values plain Python numbers."""
        table = self.table()
        bests = {m: best_point(table[table["method"] == m], self.grid) for m in self.methods
                 if (table["method"] == m).any()}
        return {m: Best(plain(b.point), b.mean_normalized, b.on_edge) for m, b in bests.items()}

    def best(self) -> tuple[str, Best] | None:
        """(method, best point) of the method whose best scores highest; None for an empty sweep."""
        bests = self.bests()
        if not bests:
            return None
        method = max(bests, key=lambda m: (bests[m].mean_normalized, -self.methods.index(m)))
        return method, bests[method]

    def best_accuracy(self) -> float | None:
        """Mean accuracy at the overall best point."""
        found = self.best()
        if found is None:
            return None
        method, best = found
        table = self.table()
        rows = table[table["method"] == method]
        for name, value in best.point.items():
            rows = rows[rows[name] == value]
        return float(rows["accuracy"].mean())

    def label(self) -> str:
        """How pickers show it: "sweep 3 · ties k × λ · best k=20 λ=1 · 61.2 %"."""
        what = ", ".join(self.methods) + (f" + {modifiers_text(self.modifiers)}" if self.modifiers else "") + \
            " " + " × ".join(symbol(n) for n in self.grid)
        found, accuracy = self.best(), self.best_accuracy()
        best = ""
        if found is not None:
            point = " ".join(f"{symbol(k)}={_short(v)}" for k, v in found[1].point.items())
            best = f" · best {found[0] + ' ' if len(self.methods) > 1 else ''}{point} · {100 * accuracy:.1f} %"
        return f"sweep {self.id} · {what}{best}"


def describe(titles: Sequence[str], grid: Mapping[str, Sequence[Any]], settings: Sequence[Mapping[str, Any]],
             tasks: Sequence[str], split: str = "val", modifiers: Sequence[Mapping[str, Any]] = ()) -> str:
    """One line saying exactly what a sweep runs: "Sweeping k over 5, 10 × λ over 0.8, 1 for **TIES-Merging**
    with merge=mean · then lines(mode=multi-task, beta=0.5) · tasks a, b, c · validation split" (``settings``:
    each method's fixed parameters; ``modifiers``: applied to every point's merge)."""
    axes = " × ".join(f"{symbol(name)} over {values_text(values) or '(no values)'}" for name, values in grid.items())
    fixed = []
    for title, params in zip(titles, settings):
        rest = ", ".join(f"{symbol(k)}={_short(v)}" for k, v in params.items() if k not in grid)
        fixed.append(f"**{title}**" + (f" with {rest}" if rest else ""))
    split_name = {"val": "validation", "train": "training"}.get(split, split)
    then = f" · then {modifiers_text(modifiers)}" if modifiers else ""
    return (f"Sweeping {axes} for {'; '.join(fixed)}{then} · tasks {', '.join(tasks) or '(none)'} · "
            f"{split_name} split")


def edge_warning(bests: Mapping[str, Best], grid: Mapping[str, Sequence[Any]],
                 titles: Mapping[str, str] | None = None) -> list[str]:
    """One line per method whose best value of a swept parameter lies on the grid's edge (first or last value):
    the optimum may lie outside the grid."""
    lines = []
    for method, best in bests.items():
        for name in best.on_edge:
            values = list(grid[name])
            side = "largest" if best.point[name] == values[-1] else "smallest"
            lines.append(f"{(titles or {}).get(method, method)}: the best {symbol(name)} = {_short(best.point[name])}"
                         f" is the {side} value of the grid ({_short(values[0])} … {_short(values[-1])}); the "
                         f"optimum may lie outside it: widen the grid")
    return lines


def profile(record: SweepRecord, metric: str = "accuracy") -> pd.DataFrame:
    """The sweep as lines over its first parameter (series, x, value): a 1-D sweep's mean per point and method;
    a 2-D sweep's best over the second parameter at each x ("ties, best over λ")."""
    table = record.table()
    x, others = next(iter(record.grid)), list(record.grid)[1:]
    means = table.groupby(["method", *record.grid], sort=False, as_index=False)[metric].mean()
    line = means.groupby(["method", x], sort=False, as_index=False)[metric].max()
    suffix = f", best over {' × '.join(symbol(o) for o in others)}" if others else ""
    line["series"] = [f"sweep {record.id} · {m}{suffix}" for m in line["method"]]
    return line.rename(columns={x: "x", metric: "value"})[["series", "x", "value"]]


@dataclass
class SweepComparison:
    profiles: pd.DataFrame  # series, x, value (mean accuracy)
    differences: pd.DataFrame  # setting × sweep: only what differs
    x: str  # the shared first parameter (or "" when they differ)
    warnings: list[str]


class SweepStore:
    """The sweeps table of a :class:`~dashboard.history.History` file (its short-lived connections)."""

    def __init__(self, history: History):
        self._connect = history._connect
        with closing(self._connect()) as con, con:
            con.executescript(SCHEMA)

    def add(self, record: SweepRecord) -> int:
        data = plain(asdict(record))
        data.pop("id")
        with closing(self._connect()) as con, con:
            cursor = con.execute("INSERT INTO sweeps (created, owner, zoo_hash, record) VALUES (?, ?, ?, ?)",
                                 (record.created, record.owner, record.zoo_hash, json.dumps(data)))
            record.id = cursor.lastrowid
        return record.id

    def get(self, sweep_id: int, viewer: str | None = None) -> SweepRecord:
        """One sweep; with ``viewer``, only a shared one or the viewer's own (others do not exist for them)."""
        with closing(self._connect()) as con:
            row = con.execute("SELECT * FROM sweeps WHERE id = ?", (int(sweep_id),)).fetchone()
        if row is None or not _visible(row["owner"], viewer):
            raise HistoryError(f"sweep {sweep_id} is not in the history")
        return SweepRecord(**json.loads(row["record"]), id=row["id"])

    def records(self, viewer: str | None = None) -> list[SweepRecord]:
        """The sweeps ``viewer`` may see, newest first."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT * FROM sweeps WHERE ? IS NULL OR owner = '' OR owner = ? ORDER BY id DESC",
                               (viewer, viewer)).fetchall()
        return [SweepRecord(**json.loads(row["record"]), id=row["id"]) for row in rows]

    def labels(self, viewer: str | None = None) -> list[tuple[str, str]]:
        return [(r.label(), str(r.id)) for r in self.records(viewer)]

    def compare(self, sweep_ids: Iterable[int], viewer: str | None = None) -> SweepComparison:
        """Several sweeps side by side: their lines over the first parameter on one figure (2-D sweeps: the best
        over the second), the settings that differ, and warnings when zoos, tasks, splits or axes differ."""
        records = [self.get(i, viewer) for i in dict.fromkeys(int(i) for i in sweep_ids)]
        if len(records) < 2:
            raise ValueError("sweeps: pick at least two sweeps to compare")
        columns = {}
        for r in records:
            items = {"methods": ", ".join(r.methods), "modifiers": modifiers_text(r.modifiers) or "none",
                     "zoo": r.zoo, "tasks": ", ".join(r.tasks), "split": r.split,
                     **{f"grid {symbol(n)}": values_text(v) for n, v in r.grid.items()}}
            for method, params in r.settings.items():
                items.update({f"{method} {symbol(k)}": _short(v) for k, v in params.items() if k not in r.grid})
            found = r.best()
            if found is not None:
                items["best"] = f"{found[0]} " + " ".join(f"{symbol(k)}={_short(v)}" for k, v in found[1].point.items())
                items["best mean accuracy %"] = f"{100 * r.best_accuracy():.2f}"
            columns[r.label()] = items
        names = list(dict.fromkeys(k for items in columns.values() for k in items))
        differing = [n for n in names if len({items.get(n, "–") for items in columns.values()}) > 1]
        differences = pd.DataFrame({label: [items.get(n, "–") for n in differing]
                                    for label, items in columns.items()}, index=pd.Index(differing, name="setting"))
        firsts = {next(iter(r.grid)) for r in records}
        warnings = []
        if len(firsts) > 1:
            warnings.append("these sweeps vary different parameters first: their lines share an axis only by value")
        if len({r.zoo_hash for r in records}) > 1:
            warnings.append("these sweeps come from different zoos: their accuracies are not comparable")
        if len({tuple(sorted(r.tasks)) for r in records}) > 1 or len({r.split for r in records}) > 1:
            warnings.append("these sweeps were evaluated on different tasks or splits")
        profiles = pd.concat([profile(r) for r in records], ignore_index=True)
        return SweepComparison(profiles, differences, firsts.pop() if len(firsts) == 1 else "", warnings)
