"""Run history in an embedded SQLite file that survives restarts, and the on-disk baseline cache.

Every merge is one row: method, parameters, per-task accuracy (and normalized accuracy), a statistics summary,
merge and evaluation time, device.  Baseline accuracies (pretrained, individual) are cached per zoo content hash
so a restart does not re-evaluate them.  One short-lived connection per call keeps it safe across threads.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from merging.atomic import atomic_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, zoo TEXT NOT NULL, zoo_hash TEXT NOT NULL,
    method TEXT NOT NULL, params TEXT NOT NULL, tasks TEXT NOT NULL, accuracy TEXT NOT NULL,
    normalized TEXT NOT NULL, mean_accuracy REAL, mean_normalized REAL, statistics TEXT NOT NULL,
    seconds REAL NOT NULL, eval_seconds REAL NOT NULL, device TEXT NOT NULL, zoo_path TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '', name TEXT NOT NULL DEFAULT '', tags TEXT NOT NULL DEFAULT '[]',
    notes TEXT NOT NULL DEFAULT '', deleted REAL, modifiers TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS baselines (
    zoo_hash TEXT NOT NULL, split TEXT NOT NULL, model TEXT NOT NULL, accuracy TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (zoo_hash, split, model));
"""
JSON_FIELDS = ("params", "tasks", "accuracy", "normalized", "statistics", "tags", "modifiers")
ADDED_COLUMNS = {"owner": "TEXT NOT NULL DEFAULT ''", "name": "TEXT NOT NULL DEFAULT ''",  # older history files
                 "tags": "TEXT NOT NULL DEFAULT '[]'", "notes": "TEXT NOT NULL DEFAULT ''", "deleted": "REAL",
                 "modifiers": "TEXT NOT NULL DEFAULT '[]'"}
MAX_TEXT = {"name": 80, "notes": 4000, "tag": 40, "tags": 20}
PRIVATE_FIELDS = ("owner",)  # never exported or shown


class HistoryError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def plain(value: Any) -> Any:
    """JSON-safe copy: numpy/torch scalars → Python numbers, NaN → None, unknown objects → str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None



def modifiers_text(modifiers: Sequence[Mapping[str, Any]]) -> str:
    """"lines(mode=multi-task, beta=0.5)" per modifier, joined by " + " ("" without modifiers)."""
    return " + ".join(f"{m['name']}({', '.join(f'{k}={_short(v)}' for k, v in m['params'].items())})"
                      for m in modifiers)

@dataclass
class RunRecord:
    zoo: str
    zoo_hash: str
    method: str
    params: dict
    tasks: list[str]
    accuracy: dict[str, float]  # task → top-1 accuracy of the merged model (θ̂t for TALL)
    normalized: dict[str, float] = field(default_factory=dict)  # task → accuracy / individual accuracy
    statistics: dict = field(default_factory=dict)
    seconds: float = 0.0
    eval_seconds: float = 0.0
    device: str = ""
    zoo_path: str = ""  # as the user named it (relative to a zoo root), never a server path
    owner: str = ""  # who made the run (login name or session key); "" = shared with every visitor
    name: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    deleted: float | None = None  # when it was deleted (soft: restore() undoes it)
    modifiers: list[dict] = field(default_factory=list)  # [{"name": "lines", "params": {...}}], applied in order
    id: int | None = None
    created: float = field(default_factory=time.time)

    @property
    def mean_accuracy(self) -> float | None:
        return _mean(self.accuracy.values())

    @property
    def mean_normalized(self) -> float | None:
        return _mean(self.normalized.values())

    def params_text(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())

    def modifiers_text(self) -> str:
        return modifiers_text(self.modifiers)

    def label(self) -> str:
        """The run as pickers show it: "#33 ties k=20 λ=1 · 61.2 %" (its name, when it has one)."""
        what = self.name or " ".join([self.method, *(f"{'λ' if k == 'lam' else k}={_short(v)}"
                                                     for k, v in self.params.items()),
                                      *([f"+ {self.modifiers_text()}"] if self.modifiers else [])])
        score = f" · {100 * self.mean_accuracy:.1f} %" if self.mean_accuracy is not None else ""
        return f"#{self.id} {what}{score}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]" if len(set(map(str, value))) > 1 else _short(value[0])
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class History:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(SCHEMA)
            present = {row["name"] for row in con.execute("PRAGMA table_info(runs)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in present:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def _execute(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with closing(self._connect()) as con, con:
            return con.execute(sql, args).fetchall()

    # ---------------------------------------------------------------- runs
    def add(self, record: RunRecord) -> int:
        data = {k: plain(v) for k, v in asdict(record).items()}
        data.pop("id")
        for key in JSON_FIELDS:
            data[key] = json.dumps(data[key])
        data["mean_accuracy"], data["mean_normalized"] = record.mean_accuracy, record.mean_normalized
        columns = ", ".join(data)
        with closing(self._connect()) as con, con:
            cursor = con.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(data))})",
                                 tuple(data.values()))
            record.id = cursor.lastrowid
        return record.id

    def get(self, run_id: int, viewer: str | None = None, deleted: bool = False) -> RunRecord:
        """One run; with ``viewer``, only a shared run or one of the viewer's own (others do not exist for them);
        a deleted run only with ``deleted``."""
        rows = self._execute("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        if not rows or not _visible(rows[0]["owner"], viewer) or (rows[0]["deleted"] is not None and not deleted):
            raise HistoryError(f"run #{run_id} is not in the history")
        return self._record(rows[0])

    def records(self, zoo_hash: str | None = None, viewer: str | None = None,
                deleted: bool = False) -> list[RunRecord]:
        """Runs oldest first (of one zoo); with ``viewer``, the shared runs and the viewer's own; deleted runs
        only with ``deleted`` (and then only those)."""
        where, args = ["deleted IS NOT NULL" if deleted else "deleted IS NULL"], []
        if zoo_hash is not None:
            where.append("zoo_hash = ?"), args.append(zoo_hash)
        if viewer is not None:
            where.append("(owner = '' OR owner = ?)"), args.append(viewer)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [self._record(row) for row in self._execute(sql, tuple(args))]

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        for key in JSON_FIELDS:
            data[key] = json.loads(data[key])
        data.pop("mean_accuracy"), data.pop("mean_normalized")
        return RunRecord(**data)

    def table(self, zoo_hash: str | None = None, viewer: str | None = None, deleted: bool = False) -> pd.DataFrame:
        """One row per run (visible to ``viewer``), newest first: the runs table of the Compare tab (accuracy
        columns first after the run, so they stay in view on narrow screens)."""
        rows = [{"run": r.id, "avg acc %": _percent(r.mean_accuracy), "avg normalized %": _percent(r.mean_normalized),
                 "method": r.method, "params": r.params_text(), "modifiers": r.modifiers_text(), "name": r.name,
                 "tags": ", ".join(r.tags),
                 "tasks": len(r.tasks), "zoo": r.zoo, "time": _time(r.created),
                 "merge s": round(r.seconds, 3), "eval s": round(r.eval_seconds, 3), "device": r.device}
                for r in reversed(self.records(zoo_hash, viewer, deleted))]
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    def labels(self, viewer: str | None = None) -> list[tuple[str, str]]:
        """(label, run id) pairs, newest first, for run pickers."""
        return [(r.label(), str(r.id)) for r in reversed(self.records(viewer=viewer))]

    def _own(self, run_id: int, viewer: str | None) -> RunRecord:
        """A run (deleted or not) that ``viewer`` may change: one of their own."""
        record = self.get(run_id, viewer, deleted=True)
        if viewer is not None and record.owner != viewer:
            raise HistoryError(f"run #{run_id} is shared with every visitor: only your own runs can be changed")
        return record

    def annotate(self, run_id: int, viewer: str | None = None, name: str | None = None,
                 tags: Iterable[str] | str | None = None, notes: str | None = None) -> RunRecord:
        """Name, tag (a list, or comma-separated text) or note one of ``viewer``'s own runs."""
        record = self._own(run_id, viewer)
        if name is not None:
            record.name = _bounded(name.strip(), "name")
        if tags is not None:
            items = tags.split(",") if isinstance(tags, str) else list(tags)
            record.tags = list(dict.fromkeys(_bounded(str(t).strip(), "tag") for t in items if str(t).strip()))
            if len(record.tags) > MAX_TEXT["tags"]:
                raise ValueError(f"tags: at most {MAX_TEXT['tags']} tags")
        if notes is not None:
            record.notes = _bounded(notes, "notes")
        self._execute("UPDATE runs SET name = ?, tags = ?, notes = ? WHERE id = ?",
                      (record.name, json.dumps(record.tags), record.notes, record.id))
        return record

    def delete(self, run_id: int, viewer: str | None = None) -> None:
        """Soft delete (hidden from tables and pickers; :meth:`restore` brings it back)."""
        self._own(run_id, viewer)
        self._execute("UPDATE runs SET deleted = ? WHERE id = ?", (time.time(), int(run_id)))

    def restore(self, run_id: int, viewer: str | None = None) -> None:
        self._own(run_id, viewer)
        self._execute("UPDATE runs SET deleted = NULL WHERE id = ?", (int(run_id),))

    def compare_many(self, run_ids: Iterable[int], viewer: str | None = None,
                     baselines: pd.DataFrame | None = None) -> "Comparison":
        """Several runs side by side: per-task accuracy (with the pretrained and individual references when
        ``baselines`` (task, pretrained, individual) is given), the parameters that differ, and warnings when the
        runs come from different zoos or task sets."""
        records = [self.get(i, viewer) for i in dict.fromkeys(int(i) for i in run_ids)]
        if len(records) < 2:
            raise ValueError("runs: pick at least two runs to compare")
        tasks = list(dict.fromkeys(t for r in records for t in r.tasks))
        long = [{"task": t, "model": r.label(), "accuracy": r.accuracy.get(t)} for r in records for t in tasks
                if r.accuracy.get(t) is not None]
        if baselines is not None and not baselines.empty:
            rows = baselines[baselines["task"].isin(tasks)]
            long += [{"task": row.task, "model": model, "accuracy": getattr(row, model)}
                     for row in rows.itertuples() for model in ("pretrained", "individual")]
        names = list(dict.fromkeys(k for r in records for k in ["method", "modifiers", *r.params]))
        values = {r.label(): {"method": r.method, "modifiers": r.modifiers_text() or "none",
                              **{k: _short(v) for k, v in r.params.items()}} for r in records}
        differing = [n for n in names if len({str(v.get(n, "–")) for v in values.values()}) > 1]
        diff = pd.DataFrame({label: [v.get(n, "–") for n in differing] for label, v in values.items()},
                            index=pd.Index(differing, name="parameter"))
        warnings = []
        if len({r.zoo_hash for r in records}) > 1:
            warnings.append("these runs come from different zoos: their accuracies are not comparable")
        if len({tuple(sorted(r.tasks)) for r in records}) > 1:
            warnings.append("these runs merged different task sets: compare the tasks they share")
        points = pd.DataFrame([{"run": r.label(), "method": r.method, **{k: v for k, v in r.params.items()
                                                                         if isinstance(v, (int, float))},
                                "mean accuracy %": _percent(r.mean_accuracy)} for r in records])
        return Comparison(pd.DataFrame(long, columns=["task", "model", "accuracy"]), diff, points, warnings)

    def compare(self, first: int, second: int, viewer: str | None = None) -> pd.DataFrame:
        """Side by side: parameters, timing, per-task accuracy and the difference (second − first)."""
        a, b = self.get(first, viewer), self.get(second, viewer)
        label_a, label_b = f"#{a.id} {a.method}", f"#{b.id} {b.method}"
        if label_a == label_b:
            label_b += " "
        rows = [{"": "zoo", label_a: a.zoo, label_b: b.zoo, "Δ": ""},
                {"": "params", label_a: a.params_text(), label_b: b.params_text(), "Δ": ""},
                {"": "device", label_a: a.device, label_b: b.device, "Δ": ""},
                {"": "merge seconds", label_a: f"{a.seconds:.3f}", label_b: f"{b.seconds:.3f}",
                 "Δ": f"{b.seconds - a.seconds:+.3f}"}]
        for task in dict.fromkeys(a.tasks + b.tasks):
            va, vb = a.accuracy.get(task), b.accuracy.get(task)
            rows.append({"": f"acc {task} %", label_a: _percent(va), label_b: _percent(vb),
                         "Δ": _delta(va, vb)})
        rows.append({"": "avg acc %", label_a: _percent(a.mean_accuracy), label_b: _percent(b.mean_accuracy),
                     "Δ": _delta(a.mean_accuracy, b.mean_accuracy)})
        rows.append({"": "avg normalized %", label_a: _percent(a.mean_normalized),
                     label_b: _percent(b.mean_normalized), "Δ": _delta(a.mean_normalized, b.mean_normalized)})
        return pd.DataFrame(rows).astype(str).replace("None", "")

    def accuracy_long(self, run_ids: Iterable[int], viewer: str | None = None) -> pd.DataFrame:
        """Long table (task, model, accuracy) with model = "#id method" for the accuracy bar figure."""
        rows = []
        for run_id in run_ids:
            record = self.get(run_id, viewer)
            rows += [{"task": t, "model": f"#{record.id} {record.method}", "accuracy": v}
                     for t, v in record.accuracy.items()]
        return pd.DataFrame(rows, columns=["task", "model", "accuracy"])

    # ---------------------------------------------------------------- baselines
    def save_baseline(self, zoo_hash: str, split: str, model: str, accuracy: dict[str, float]) -> None:
        self._execute("INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?, ?)",
                      (zoo_hash, split, model, json.dumps(plain(accuracy)), time.time()))

    def baseline(self, zoo_hash: str, split: str, model: str) -> dict[str, float] | None:
        rows = self._execute("SELECT accuracy FROM baselines WHERE zoo_hash = ? AND split = ? AND model = ?",
                             (zoo_hash, split, model))
        return json.loads(rows[0]["accuracy"]) if rows else None

    # ---------------------------------------------------------------- exports
    def export(self, target: str | Path, run_ids: Iterable[int] | None = None, viewer: str | None = None) -> Path:
        """Write runs (all visible to ``viewer``, or ``run_ids``) atomically as .csv (one column per task) or .json
        (full records without their owner)."""
        target = Path(target)
        records = self.records(viewer=viewer) if run_ids is None else [self.get(i, viewer) for i in run_ids]
        with atomic_path(target) as tmp:
            if target.suffix == ".json":
                tmp.write_text(json.dumps([_public(r) | {"mean_accuracy": r.mean_accuracy,
                                                             "mean_normalized": r.mean_normalized}
                                           for r in records], indent=1))
            elif target.suffix == ".csv":
                wide = [{"run": r.id, "created": _time(r.created, iso=True), "name": r.name, "tags": ",".join(r.tags),
                         "zoo": r.zoo, "method": r.method,
                         "params": json.dumps(plain(r.params)), "modifiers": json.dumps(plain(r.modifiers)),
                         "device": r.device, "merge_seconds": r.seconds,
                         "eval_seconds": r.eval_seconds, "mean_accuracy": r.mean_accuracy,
                         "mean_normalized": r.mean_normalized, **{f"acc:{t}": v for t, v in r.accuracy.items()}}
                        for r in records]
                pd.DataFrame(wide).to_csv(tmp, index=False)
            else:
                raise ValueError(f"export format must be .csv or .json, got {target.name!r}")
        return target


TABLE_COLUMNS = ["run", "avg acc %", "avg normalized %", "method", "params", "modifiers", "name", "tags", "tasks", "zoo", "time",
                 "merge s", "eval s", "device"]


@dataclass
class Comparison:
    accuracy: pd.DataFrame  # task, model (run label, pretrained, individual), accuracy
    differences: pd.DataFrame  # parameter × run: only the parameters whose values differ
    points: pd.DataFrame  # one row per run: numeric parameters and mean accuracy (parallel coordinates)
    warnings: list[str]


def _time(created: float, iso: bool = False) -> str:
    """Local time as "2026-12-01 21:15:03" (ISO 8601 with its UTC offset for exports)."""
    stamp = time.localtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S%z" if iso else "%Y-%m-%d %H:%M:%S", stamp)


def _bounded(text: str, field: str) -> str:
    if len(text) > MAX_TEXT[field]:
        raise ValueError(f"{field}: at most {MAX_TEXT[field]} characters")
    return text


def _visible(owner: str, viewer: str | None) -> bool:
    return viewer is None or owner in ("", viewer)


def _public(record: RunRecord) -> dict:
    data = plain(asdict(record))
    for key in PRIVATE_FIELDS:
        data.pop(key)
    return data


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _delta(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{100 * (b - a):+.2f}"
