"""The launched app driven through gradio_client: load, merge, errors, cancel, history, downloads, concurrency."""
import json
import threading
import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

from dashboard_app import SLOW, SLOW_METHOD, running_app, zoo_dir  # noqa: F401 (module fixture)
from merging.registry import METHODS


@pytest.fixture(scope="module")
def app(zoo_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, SLOW, SLOW_METHOD)
        with running_app(zoo_dir, tmp_path_factory.mktemp("data")) as (url, demo):
            yield url, demo


def _client(app):
    return Client(app[0], verbose=False)


def _loaded(app):
    client = _client(app)
    summary, table, tasks, *_ = client.predict("demo", "", [], api_name="/load_zoo")
    return client, summary, table


HISTOGRAM, ACCURACY = 3, 7  # positions in /merge's outputs (after the summary and two dropdowns)


def _traces(plot) -> list:
    return json.loads(plot["plot"])["data"]


def test_load_shows_tasks_parameter_count_device_and_baselines(app):
    client, summary, table = _loaded(app)
    assert "3 tasks" in summary and "merged parameters" in summary and "`cpu`" in summary
    assert [row[0] for row in table["data"]] == ["task0", "task1", "task2"]
    table, note = client.predict(api_name="/baselines")
    assert "pretrained %" in table["headers"] and "individual %" in table["headers"]
    assert "Baselines ready for 3 tasks" in note


def test_merge_returns_figures_and_is_recorded(app):
    client, *_ = _loaded(app)
    out = client.predict("ties", json.dumps({"k": 30, "lam": 0.8}), ["task0", "task2"], api_name="/merge")
    summary, status = out[0], out[-1]
    run_id = int(summary.split("Run #")[1].split(":")[0])
    assert f"Run #{run_id} done" in status and "ties" in summary
    names = {t["name"] for t in _traces(out[HISTOGRAM])}
    assert names == {"weights kept by c tasks"}  # TIES trims: no catastrophic / selfish / general
    accuracy = _traces(out[ACCURACY])
    assert [t["name"] for t in accuracy] == ["pretrained", "individual", "merged"]
    runs = client.predict(api_name="/history")[0]
    row = dict(zip(runs["headers"], next(r for r in runs["data"] if r[0] == run_id)))
    assert row["method"] == "ties" and row["params"] == "k=30, merge=mean, lam=0.8" and row["tasks"] == 2
    assert runs["headers"][:3] == ["run", "avg acc %", "avg normalized %"]
    record = app[1].dashboard.service.history.get(run_id)
    assert set(record.accuracy) == {"task0", "task2"}


def test_compare_and_download(app):
    client, *_ = _loaded(app)
    first = client.predict("task_arithmetic", json.dumps({"lam": 0.3}), [], api_name="/merge")
    second = client.predict("consensus", json.dumps({"k": 2}), [], api_name="/merge")
    a, b = (int(o[0].split("Run #")[1].split(":")[0]) for o in (first, second))
    history = app[1].dashboard.service.history
    labels = [history.get(a).label(), history.get(b).label()]
    third = client.predict("ties", json.dumps({"k": 30}), [], api_name="/merge")
    c = int(third[0].split("Run #")[1].split(":")[0])
    table, plot, parallel, note = client.predict([str(a), str(b), str(c)], api_name="/compare")
    assert table["headers"][0] == "parameter" and table["headers"][1:] == [*labels, history.get(c).label()]
    assert [row[0] for row in table["data"]][0] == "method"  # only what differs: the method, λ, k, …
    assert labels[0].startswith(f"#{a} task_arithmetic λ=0.3 · ") and labels[0].endswith(" %")
    assert {t["name"] for t in _traces(plot)} == {"pretrained", "individual", *labels, history.get(c).label()}
    assert _traces(parallel)[0]["type"] == "parcoords"
    assert "3 runs of the same zoo" in note
    path = client.predict(str(b), "open_clip", "", api_name="/download")
    tensors = load_file(path)
    assert tensors and all(k.startswith("visual.") for k in tensors)
    results = client.predict("json", api_name="/download_results")
    assert {r["id"] for r in json.load(open(results))} >= {a, b}


def _run_id(out) -> int:
    return int(out[0].split("Run #")[1].split(":")[0])


def test_lines_modifier_is_applied_recorded_and_replayed_as_the_library_does(app, zoo_dir):
    import torch
    from safetensors import safe_open

    from merging import run_merge
    from merging.zoo import load_zoo

    client, *_ = _loaded(app)
    ta = json.dumps({"lam": 1.0})
    lines = json.dumps([{"name": "lines", "params": {"mode": "multi-task", "beta": 0.7}}])
    a = _run_id(client.predict("task_arithmetic", ta, [], "", api_name="/merge"))
    out = client.predict("task_arithmetic", ta, [], lines, api_name="/merge")
    b = _run_id(out)
    assert "task_arithmetic + lines(mode=multi-task, beta=0.7)" in out[0]
    service = app[1].dashboard.service
    record = service.history.get(b)
    assert record.modifiers == [{"name": "lines", "params": {"mode": "multi-task", "beta": 0.7}}]  # α: from norms
    assert service.history.get(a).modifiers == [] and "lines_alpha" in record.statistics
    runs = client.predict(api_name="/history")[0]
    rows = {r[0]: dict(zip(runs["headers"], r)) for r in runs["data"]}
    assert rows[b]["modifiers"] == "lines(mode=multi-task, beta=0.7)" and rows[a]["modifiers"] == ""
    assert f"#{b} task_arithmetic λ=1 + lines(mode=multi-task, beta=0.7) · " in record.label()
    table = client.predict([str(a), str(b)], api_name="/compare")[0]
    assert ["modifiers", "none", "lines(mode=multi-task, beta=0.7)"] in table["data"]

    space = load_zoo(zoo_dir).build_space(device="cpu")
    expected = run_merge(space, "task_arithmetic", {"lam": 1.0}, modifiers=[("lines", {"beta": 0.7})])
    assert torch.equal(service.run(b).result.delta, expected.delta)
    assert not torch.equal(service.run(a).result.delta, expected.delta)
    weights = {k: v for k, v in space.state_dict(expected.delta).items() if v.is_floating_point()}
    files = [client.predict(str(b), "open_clip", "", api_name="/download")]
    with service._lock:
        service._runs.pop(b)  # dropped from memory: the download merges again from the history
    files.append(client.predict(str(b), "open_clip", "", api_name="/download"))
    for path in files:
        tensors = load_file(path)
        assert all(torch.equal(tensors["visual." + k], v) for k, v in weights.items())
        with safe_open(path, "pt") as handle:
            assert json.loads(handle.metadata()["mergescope_modifiers"]) == [
                ["lines", {"mode": "multi-task", "alpha": 1.0, "beta": 0.7}]]
    exported = {r["id"]: r for r in json.load(open(client.predict("json", api_name="/download_results")))}
    assert exported[b]["modifiers"] == record.modifiers


def test_a_bad_modifier_gives_one_escaped_line(app):
    client, *_ = _loaded(app)
    before = len(app[1].dashboard.service.history.records())
    for beta, message in ((50, "beta: 50.0 is above the maximum 10.0"),
                          ("<b>big</b>", "beta: expected float, got '&lt;b&gt;big&lt;/b&gt;'")):
        bad = json.dumps([{"name": "lines", "params": {"beta": beta}}])
        with pytest.raises(AppError) as info:
            client.predict("task_arithmetic", "{}", [], bad, api_name="/merge")
        assert str(info.value) == message
    with pytest.raises(AppError, match="^modifiers: a JSON list such as"):
        client.predict("task_arithmetic", "{}", [], '{"name": "lines"}', api_name="/merge")
    assert len(app[1].dashboard.service.history.records()) == before


def test_bad_input_gives_a_message_and_the_app_keeps_working(app, zoo_dir, tmp_path):
    client, *_ = _loaded(app)
    with pytest.raises(AppError, match="k: 500.0 is above the maximum 100.0"):
        client.predict("ties", json.dumps({"k": 500}), [], api_name="/merge")
    with pytest.raises(AppError, match="not valid JSON"):
        client.predict("ties", "{k: 1", [], api_name="/merge")
    with pytest.raises(AppError, match="is not inside the zoo roots"):
        client.predict("path", str(tmp_path / "missing"), [], api_name="/load_zoo")
    corrupt = tmp_path / "cars.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    pre = zoo_dir / "pretrained.safetensors"
    with pytest.raises(AppError, match=r"^finetuned/cars\.safetensors: (corrupt|truncated|not a checkpoint)"):
        client.predict("upload", "", [handle_file(corrupt), handle_file(pre)], api_name="/load_zoo")
    # the session still has its zoo: a merge works
    out = client.predict("averaging", "{}", [], api_name="/merge")
    assert "done" in out[-1]


def _wait_running(demo, label, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [j for j in demo.dashboard.jobs.active() if j.label == label and j.state == "running"]
        if running and running[0].fraction > 0:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no running {label!r} job")


def test_cancel_stops_a_running_merge(app):
    client, *_ = _loaded(app)
    before = len(app[1].dashboard.service.history.records())
    pending = client.submit(SLOW, json.dumps({"seconds": 60}), [], api_name="/merge")
    job = _wait_running(app[1], f"merge {SLOW}")
    started = time.time()
    assert "Cancelling 1 job" in client.predict(api_name="/cancel")
    out = pending.result(timeout=30)
    assert "Cancelled" in out[-1] and "slow step" in out[-1]
    assert job.state == "cancelled" and time.time() - started < 10
    assert len(app[1].dashboard.service.history.records()) == before


def test_cancel_stops_a_real_sweep(app):
    client, *_ = _loaded(app)
    values = ", ".join(f"{i / 100:g}" for i in range(1, 201))  # 200 merges + evaluations
    before = len(app[1].dashboard.service.sweeps.records())
    pending = client.submit(["task_arithmetic"], "{}", "lam", values, "", "", [], "accuracy", api_name="/sweep")
    job = _wait_running(app[1], "sweep task_arithmetic lam")
    client.predict(api_name="/cancel")
    plot, table, note, stored = pending.result(timeout=30)
    assert "Sweep cancelled" in note and job.state == "cancelled"
    assert job.fraction < 0.5 and len(app[1].dashboard.service.sweeps.records()) == before


def test_2d_sweep_with_the_merge_settings_heatmap_history_and_apply_best(app, zoo_dir):
    from merging import run_merge
    from merging.evaluation import evaluate_result
    from merging.zoo import load_zoo

    demo = app[1]
    offered = next(c for c in demo.config["components"] if c["props"].get("elem_id") == "sweep-methods")
    names = [value for _, value in offered["props"]["choices"]]
    assert "ties" in names and "averaging" not in names and "emr" not in names  # nothing to sweep
    client, *_ = _loaded(app)
    settings = json.dumps({"ties": {"merge": "sum", "k": 99}})  # k is swept: its Merge-tab value is not used
    plot, table, note, stored = client.predict(["ties"], settings, "k", "20, 60", "lam", "0.5, 1", [], "accuracy",
                                               api_name="/sweep")
    assert "Sweeping k over 20, 60 × λ over 0.5, 1 for **TIES-Merging** with merge=sum · tasks task0, task1, " \
           "task2 · validation split" in note
    record = demo.dashboard.service.sweeps.records()[0]
    assert record.grid == {"k": [20.0, 60.0], "lam": [0.5, 1.0]} and record.settings["ties"] == {"merge": "sum"}
    assert record.owner.startswith("session:") and any(label.startswith(f"sweep {record.id} ")
                                                       for label, _ in stored["choices"])
    # the stored numbers are those of a merge made with the Merge tab's settings
    zoo = load_zoo(zoo_dir)
    space = zoo.build_space(device="cpu")
    direct = evaluate_result(zoo, space, run_merge(space, "ties", {"k": 60.0, "lam": 0.5, "merge": "sum"}),
                             split="val")
    rows = record.table()
    swept = rows[(rows["k"] == 60.0) & (rows["lam"] == 0.5)]
    assert list(swept["accuracy"]) == list(direct["accuracy"])
    heat = _traces(plot)[0]
    assert heat["type"] == "heatmap" and heat["x"] == ["20", "60"] and heat["y"] == ["0.5", "1"]
    means = rows.groupby(["lam", "k"])["accuracy"].mean()
    assert heat["z"] == [pytest.approx([100 * means[(lam, k)] for k in (20.0, 60.0)]) for lam in (0.5, 1.0)]
    assert [row[1:3] for row in table["data"]] == [[20, 0.5], [20, 1], [60, 0.5], [60, 1]]
    # another session neither sees nor reopens it
    other = _client(app)
    with pytest.raises(AppError, match=f"sweep {record.id} is not in the history"):
        other.predict([str(record.id)], "accuracy", api_name="/sweep_show")
    # apply best: the Merge tab gets TIES with the best k and λ (and the settings held fixed)
    out = client.predict(api_name="/sweep_apply")
    best = record.best()[1].point
    components = [c for p in demo.dashboard.panels.values() for c in p.components()]
    ties = {w.param.name: out[2 + components.index(w.value)] for w in demo.dashboard.panels["ties"].widgets}
    assert out[0] == "ties" and ties == {"k": best["k"], "lam": best["lam"], "merge": "sum"}
    assert f"Applied the best point of sweep {record.id}" in out[-1]


def test_a_sweep_applies_the_merge_tabs_modifier_to_every_point_and_apply_best_sets_it_back(app, zoo_dir):
    from merging import run_merge
    from merging.evaluation import evaluate_result
    from merging.zoo import load_zoo

    demo = app[1]
    service = demo.dashboard.service
    client, *_ = _loaded(app)
    lines = json.dumps([{"name": "lines", "params": {"mode": "multi-task", "beta": 0.7}}])
    plain_sweep = client.predict(["task_arithmetic"], "{}", "lam", "0.5, 1", "", "", [], "accuracy", "",
                                 api_name="/sweep")
    without = service.sweeps.records()[0]
    plot, table, note, stored = client.predict(["task_arithmetic"], "{}", "lam", "0.5, 1", "", "", [], "accuracy",
                                               lines, api_name="/sweep")
    record = service.sweeps.records()[0]
    assert record.id != without.id and without.modifiers == [] and "then" not in plain_sweep[2]
    assert record.modifiers == [{"name": "lines", "params": {"mode": "multi-task", "beta": 0.7}}]
    assert "for **Task Arithmetic** · then lines(mode=multi-task, beta=0.7) · tasks" in note
    assert record.label().startswith(f"sweep {record.id} · task_arithmetic + lines(mode=multi-task, beta=0.7) λ")
    # every point is the merge followed by LiNeS, exactly as a merge with that modifier
    space = load_zoo(zoo_dir).build_space(device="cpu")
    rows = record.table()
    for lam in (0.5, 1.0):
        direct = evaluate_result(load_zoo(zoo_dir), space, run_merge(space, "task_arithmetic", {"lam": lam},
                                 modifiers=[("lines", {"beta": 0.7})]), split="val")
        assert list(rows[rows["lam"] == lam]["accuracy"]) == list(direct["accuracy"])
    differences = service.sweeps.compare([without.id, record.id]).differences
    assert list(differences.loc["modifiers"]) == ["none", "lines(mode=multi-task, beta=0.7)"]
    # apply best: the Merge tab gets the method, the point and the modifier with its β
    out = client.predict(api_name="/sweep_apply")
    dash = demo.dashboard
    start = 2 + sum(len(p.components()) for p in dash.panels.values())
    picked = dict(zip(dash.modifiers.components(), out[start:start + len(dash.modifiers.components())]))
    assert picked[dash.modifiers.choice] == "lines"
    beta = next(w for w in dash.modifiers.panels["lines"].widgets if w.param.name == "beta")
    assert picked[beta.value] == 0.7 and "then lines(mode=multi-task, beta=0.7)" in out[-1]
    # a bad modifier is one line naming the field, and nothing is recorded
    count = len(service.sweeps.records())
    for bad, message in ((json.dumps([{"name": "lines", "params": {"beta": 50}}]), "beta"),
                         ("[{name", "modifiers: not valid JSON"), (json.dumps([{"name": "nope"}]), "nope")):
        with pytest.raises(AppError, match=message):
            client.predict(["task_arithmetic"], "{}", "lam", "0.5", "", "", [], "accuracy", bad, api_name="/sweep")
    assert len(service.sweeps.records()) == count


def test_cancel_in_one_session_leaves_others_alone(app):
    mine, theirs = _client(app), _client(app)
    for client in (mine, theirs):
        client.predict("demo", "", [], api_name="/load_zoo")
    slow = theirs.submit(SLOW, json.dumps({"seconds": 1.0}), [], api_name="/merge")
    _wait_running(app[1], f"merge {SLOW}")
    assert mine.predict(api_name="/cancel") == "Nothing to cancel."
    assert "done" in slow.result(timeout=60)[-1]


def test_concurrent_clients_all_get_their_own_results(app):
    methods = ["task_arithmetic", "ties", "tall", "consensus"]
    results, errors = {}, []

    def session(method):
        try:
            client, *_ = _loaded(app)
            results[method] = client.predict(method, "{}", [], api_name="/merge")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=session, args=(m,)) for m in methods]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors
    ids = set()
    for method, out in results.items():
        assert f": {method}**" in out[0] and "done" in out[-1]
        ids.add(int(out[0].split("Run #")[1].split(":")[0]))
    assert len(ids) == len(methods)
    history = app[1].dashboard.service.history
    assert {history.get(i).method for i in ids} == set(methods)


def test_app_flags_and_environment(monkeypatch):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("app", Path(__file__).resolve().parent.parent / "app.py")
    app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_module)
    for name in ("MERGESCOPE_HOST", "MERGESCOPE_PORT", "MERGESCOPE_ZOO", "MERGESCOPE_GPU_SLOTS"):
        monkeypatch.delenv(name, raising=False)
    args = app_module.parse_args([])
    assert (args.host, args.port, args.gpu_slots) == ("127.0.0.1", 7860, 1)
    assert Path(args.zoo) == Path(__file__).resolve().parent.parent / "assets" / "demo-zoo"
    monkeypatch.setenv("MERGESCOPE_PORT", "8123")
    monkeypatch.setenv("MERGESCOPE_ZOO", "/srv/zoo")
    args = app_module.parse_args(["--host", "0.0.0.0"])
    assert (args.host, args.port, args.zoo) == ("0.0.0.0", 8123, "/srv/zoo")


def _app_module():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("app", Path(__file__).resolve().parent.parent / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hosting_flags_roots_job_limit_and_login(monkeypatch, tmp_path, capsys):
    app_module = _app_module()
    for name in ("MERGESCOPE_ZOO_ROOTS", "MERGESCOPE_JOBS_PER_SESSION", "MERGESCOPE_AUTH", "MERGESCOPE_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = app_module.parse_args([])
    assert (args.zoo_roots, args.jobs_per_session, args.logins) == (None, 2, None)  # roots: demo zoo + data/zoos
    args = app_module.parse_args(["--zoo-root", "/srv/a", "--zoo-root", "/srv/b", "--jobs-per-session", "3",
                                  "--auth", "ann:secret:with:colons"])
    assert (args.zoo_roots, args.jobs_per_session, args.logins) == (["/srv/a", "/srv/b"], 3,
                                                                    [("ann", "secret:with:colons")])
    logins = tmp_path / "logins"
    logins.write_text("# team\nbob:pw1\n\ncarol:pw2\n")
    monkeypatch.setenv("MERGESCOPE_ZOO_ROOTS", "/srv/a:/srv/c")
    monkeypatch.setenv("MERGESCOPE_AUTH", "ann:pw0")
    args = app_module.parse_args(["--auth-file", str(logins)])
    assert args.zoo_roots == ["/srv/a", "/srv/c"]
    assert args.logins == [("ann", "pw0"), ("bob", "pw1"), ("carol", "pw2")]
    logins.write_text("bob:pw1\nnocolon\n")
    with pytest.raises(SystemExit):
        app_module.parse_args(["--auth-file", str(logins)])
    assert "--auth-file line 2: expected USER:PASSWORD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_module.parse_args(["--jobs-per-session", "0"])


def test_command_line_paths_are_relative_to_the_working_folder(monkeypatch, tmp_path, zoo_dir):
    """``python app.py --zoo zoo --zoo-root .`` from the zoo's parent opens that zoo (not <root>/zoo)."""
    import dashboard.ui as ui
    from dashboard.service import Service
    app_module, seen = _app_module(), {}
    monkeypatch.setattr(ui, "create_app", lambda settings, zoo, slots: seen.update(settings=settings, zoo=zoo))
    monkeypatch.setattr(ui, "launch", lambda *args, **kwargs: None)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.chdir(zoo_dir.parent)
    app_module.main(["--zoo", zoo_dir.name, "--zoo-root", ".", "--data-dir", str(tmp_path / "data")])
    assert seen["zoo"] == str(zoo_dir.resolve())
    assert Service(seen["settings"]).load_zoo(seen["zoo"]).zoo.task_names == ["task0", "task1", "task2"]


def test_a_merge_before_any_load_uses_the_default_zoo(app):
    client = _client(app)  # no /load_zoo call: the page may not have finished loading the default zoo yet
    out = client.predict("task_arithmetic", "{}", [], api_name="/merge")
    assert "done" in out[-1] and "on 3 tasks" in out[0]
