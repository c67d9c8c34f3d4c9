"""SQLite run history: survives reopening, compares runs, caches baselines, exports atomically."""
import json
import threading

import numpy as np
import pandas as pd
import pytest

from dashboard.history import History, HistoryError, RunRecord


def _record(method="ties", acc=(0.5, 0.7), **extra):
    return RunRecord(zoo="demo", zoo_hash="h1", method=method, params={"k": 20.0, "lam": [0.3, 0.3]},
                     tasks=["x", "y"], accuracy=dict(zip(["x", "y"], acc)),
                     normalized={"x": acc[0] / 0.8, "y": acc[1] / 0.9},
                     statistics={"ties_trim": {"selfish": np.float32(0.25)}, "rate": np.float64("nan")},
                     seconds=0.12, eval_seconds=1.5, device="cpu", **extra)


def test_runs_survive_reopening(tmp_path):
    path = tmp_path / "h" / "history.sqlite"
    first = History(path).add(_record())
    second = History(path).add(_record("task_arithmetic", (0.4, 0.9)))
    reopened = History(path)
    assert [r.id for r in reopened.records()] == [first, second]
    back = reopened.get(first)
    assert back.accuracy == {"x": 0.5, "y": 0.7} and back.params == {"k": 20.0, "lam": [0.3, 0.3]}
    assert back.statistics == {"ties_trim": {"selfish": 0.25}, "rate": None}
    assert back.mean_accuracy == pytest.approx(0.6)
    with pytest.raises(HistoryError, match="run #99"):
        reopened.get(99)


def test_table_newest_first_with_summary(tmp_path):
    h = History(tmp_path / "h.sqlite")
    h.add(_record())
    h.add(_record("consensus", (0.6, 0.8)))
    table = h.table()
    assert list(table["method"]) == ["consensus", "ties"]
    assert list(table["avg acc %"]) == [70.0, 60.0]
    assert table["params"].iloc[0] == "k=20, lam=0.3"
    assert h.table(zoo_hash="other").empty


def test_compare_side_by_side(tmp_path):
    h = History(tmp_path / "h.sqlite")
    a, b = h.add(_record()), h.add(_record("consensus", (0.6, 0.65)))
    table = h.compare(a, b).set_index("")
    assert table.loc["acc x %", f"#{a} ties"] == "50.0"
    assert table.loc["acc x %", f"#{b} consensus"] == "60.0"
    assert table.loc["acc x %", "Δ"] == "+10.00" and table.loc["acc y %", "Δ"] == "-5.00"
    long = h.accuracy_long([a, b])
    assert set(long["model"]) == {f"#{a} ties", f"#{b} consensus"} and len(long) == 4
    same = h.compare(a, a)
    assert same.shape[1] == 4  # two distinct columns even for the same run


def test_baseline_cache(tmp_path):
    h = History(tmp_path / "h.sqlite")
    assert h.baseline("h1", "test", "pretrained") is None
    h.save_baseline("h1", "test", "pretrained", {"x": np.float64(0.1)})
    h.save_baseline("h1", "test", "pretrained", {"x": 0.2})
    assert History(tmp_path / "h.sqlite").baseline("h1", "test", "pretrained") == {"x": 0.2}


def test_exports_csv_and_json(tmp_path):
    h = History(tmp_path / "h.sqlite")
    ids = [h.add(_record()), h.add(_record("dare", (0.1, 0.2)))]
    csv = pd.read_csv(h.export(tmp_path / "out" / "runs.csv"))
    assert list(csv["method"]) == ["ties", "dare"] and list(csv["acc:y"]) == [0.7, 0.2]
    data = json.loads(h.export(tmp_path / "runs.json", ids[1:]).read_text())
    assert len(data) == 1 and data[0]["accuracy"] == {"x": 0.1, "y": 0.2}
    assert data[0]["mean_accuracy"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="csv or .json"):
        h.export(tmp_path / "runs.txt")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_concurrent_writers(tmp_path):
    h = History(tmp_path / "h.sqlite")
    ids, errors = [], []

    def write():
        try:
            for _ in range(10):
                ids.append(h.add(_record()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=write) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(set(ids)) == 40 and len(h.records()) == 40


def test_a_viewer_sees_shared_runs_and_their_own_only(tmp_path):
    h = History(tmp_path / "h.sqlite")
    shared, ann, bob = (h.add(_record(owner=o)) for o in ("", "user:ann", "user:bob"))
    assert [r.id for r in h.records(viewer="user:ann")] == [shared, ann]
    assert list(h.table(viewer="user:bob")["run"]) == [bob, shared]
    assert list(h.table(viewer="")["run"]) == [shared]
    assert len(h.records()) == 3  # no viewer: the operator's view
    for call in (lambda: h.get(bob, "user:ann"), lambda: h.compare(shared, bob, "user:ann"),
                 lambda: h.accuracy_long([bob], "user:ann"), lambda: h.export(tmp_path / "x.csv", [bob], "user:ann")):
        with pytest.raises(HistoryError, match=f"run #{bob} is not in the history"):
            call()
    exported = json.loads(h.export(tmp_path / "ann.json", viewer="user:ann").read_text())
    assert [r["id"] for r in exported] == [shared, ann] and all("owner" not in r for r in exported)


def test_an_older_history_file_gains_owners_and_its_runs_stay_shared(tmp_path):
    import sqlite3
    from dashboard.history import SCHEMA
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:  # the schema before runs had owners
        con.executescript(SCHEMA.replace(",\n    owner TEXT NOT NULL DEFAULT ''", ""))
    con.close()
    with sqlite3.connect(path) as con:
        assert "owner" not in {row[1] for row in con.execute("PRAGMA table_info(runs)")}
        con.execute("INSERT INTO runs (created, zoo, zoo_hash, method, params, tasks, accuracy, normalized, "
                    "statistics, seconds, eval_seconds, device) VALUES (1, 'demo', 'h', 'ties', '{}', '[]', '{}', "
                    "'{}', '{}', 0, 0, 'cpu')")
    con.close()
    h = History(path)
    (old,) = h.records(viewer="user:ann")
    assert old.owner == "" and old.method == "ties"
    new = h.add(_record(owner="user:bob"))
    assert [r.id for r in h.records(viewer="user:bob")] == [old.id, new]


def test_name_tags_notes_and_the_picker_label(tmp_path):
    h = History(tmp_path / "h.sqlite")
    mine = h.add(_record(owner="alice"))
    shared = h.add(_record("task_arithmetic", (0.4, 0.9)))
    assert h.get(mine).label() == f"#{mine} ties k=20 λ=0.3 · 60.0 %"
    h.annotate(mine, "alice", name="trimmed", tags="best, ties,best", notes="k from the sweep <b>")
    back = History(tmp_path / "h.sqlite").get(mine)
    assert (back.name, back.tags, back.notes) == ("trimmed", ["best", "ties"], "k from the sweep <b>")
    assert back.label() == f"#{mine} trimmed · 60.0 %"
    row = h.table(viewer="alice").set_index("run").loc[mine]
    assert row["name"] == "trimmed" and row["tags"] == "best, ties"
    assert h.labels("alice")[0] == (f"#{shared} task_arithmetic k=20 λ=0.3 · 65.0 %", str(shared))
    with pytest.raises(HistoryError, match="shared with every visitor"):
        h.annotate(shared, "alice", name="mine now")
    with pytest.raises(HistoryError, match="not in the history"):
        h.annotate(mine, "bob", name="bob's")
    with pytest.raises(ValueError, match="name: at most 80"):
        h.annotate(mine, "alice", name="x" * 81)


def test_soft_delete_and_restore(tmp_path):
    h = History(tmp_path / "h.sqlite")
    run = h.add(_record(owner="alice"))
    other = h.add(_record(owner="bob"))
    h.delete(run, "alice")
    assert run not in list(h.table(viewer="alice")["run"]) and list(h.table(viewer="alice", deleted=True)["run"]) == [run]
    with pytest.raises(HistoryError):
        h.get(run, "alice")
    with pytest.raises(HistoryError):
        h.delete(other, "alice")  # bob's run does not exist for alice
    h.restore(run, "alice")
    assert h.get(run, "alice").deleted is None and run in list(h.table(viewer="alice")["run"])


def test_compare_many_runs_with_references_diff_and_warnings(tmp_path):
    h = History(tmp_path / "h.sqlite")
    a = h.add(_record(acc=(0.5, 0.7)))
    b = h.add(RunRecord(zoo="demo", zoo_hash="h1", method="ties", params={"k": 40.0, "lam": [0.3, 0.3]},
                        tasks=["x", "y"], accuracy={"x": 0.6, "y": 0.8}))
    c = h.add(RunRecord(zoo="other", zoo_hash="h2", method="tall", params={"tall_lambda": [0.4, 0.4]},
                        tasks=["x"], accuracy={"x": 0.9}))
    baselines = pd.DataFrame({"task": ["x", "y"], "pretrained": [0.2, 0.3], "individual": [0.9, 0.95]})
    two = h.compare_many([a, b], baselines=baselines)
    assert two.warnings == [] and list(two.differences.index) == ["k"]  # method and λ are equal
    assert two.differences.loc["k"].tolist() == ["20", "40"]
    models = set(two.accuracy["model"])
    assert {"pretrained", "individual", h.get(a).label(), h.get(b).label()} == models
    assert two.points["mean accuracy %"].tolist() == [60.0, 70.0] and two.points["k"].tolist() == [20.0, 40.0]
    three = h.compare_many([a, b, c])
    assert len(three.warnings) == 2 and "different zoos" in three.warnings[0]
    assert {"method", "k", "lam", "tall_lambda"} == set(three.differences.index)
    with pytest.raises(ValueError, match="at least two"):
        h.compare_many([a, a])


def test_csv_dates_are_readable(tmp_path):
    h = History(tmp_path / "h.sqlite")
    h.add(_record())
    h.export(tmp_path / "runs.csv")
    created = pd.read_csv(tmp_path / "runs.csv")["created"][0]
    assert len(created) >= 19 and created[4] == "-" and created[10] == "T"
