"""The dashboard's handlers as plain functions, on a tiny open_clip zoo written to disk."""
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dashboard import figures
from dashboard.service import Service, Settings, UserError
from dashboard_app import zoo_dir  # noqa: F401 (module fixture)
from merging import ParameterError, UnknownMethodError
from merging.compressed import load_compressed
from merging.evaluation import evaluate
from merging.maskstats import mask_statistics


@pytest.fixture(scope="module")
def service(zoo_dir, tmp_path_factory):
    return Service(Settings(tmp_path_factory.mktemp("data"), device="cpu", zoo_roots=[tmp_path_factory.getbasetemp()]))


@pytest.fixture(scope="module")
def entry(service, zoo_dir):
    return service.load_zoo(zoo_dir)


def test_load_builds_the_space_once_and_describes_the_zoo(service, zoo_dir, entry):
    stages = []
    again = service.load_zoo(zoo_dir / "zoo.json", lambda f, s: stages.append(s))
    assert again is entry and stages == ["reading the zoo manifest"]
    visual = entry.zoo.pretrained_state()
    assert entry.space.P == sum(v.numel() for v in visual.values() if v.is_floating_point())
    table = service.zoo_table(entry)
    assert list(table["task"]) == ["task0", "task1", "task2"]
    assert list(table["head"]) == ["weights", "zero-shot", "weights"]
    summary = service.zoo_summary(entry)
    assert "3 tasks" in summary and f"{entry.space.P:,}" in summary and "cpu" in summary


def test_missing_and_corrupt_zoos_give_clear_errors(service, tmp_path, zoo_dir):
    with pytest.raises(UserError, match="no zoo at"):
        service.load_zoo(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(zoo_dir, broken)
    (broken / "finetuned" / "task1.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    with pytest.raises(ValueError, match="task1.safetensors"):
        service.load_zoo(broken)


def test_baselines_are_evaluated_once_and_cached_on_disk(service, entry, monkeypatch):
    table = service.baselines(entry.id)
    pre = evaluate(entry.zoo, None, entry.zoo.task_names, "test", device="cpu")
    assert list(table["pretrained"]) == pytest.approx(list(pre["accuracy"]))
    assert "pretrained %" in service.zoo_table(entry)
    # a restarted app reads them from the history database instead of evaluating again
    import merging.evaluation
    monkeypatch.setattr(merging.evaluation, "evaluate_baselines", lambda *a, **k: pytest.fail("re-evaluated"))
    fresh = Service(service.settings)
    again = fresh.baselines(fresh.load_zoo(entry.path).id)
    pd.testing.assert_frame_equal(again, table)


def test_merge_records_a_run_with_independently_checked_accuracy(service, entry):
    stages = []
    view = service.merge(entry.id, "ties", {"k": 30, "lam": 0.7}, progress=lambda f, s: stages.append((f, s)))
    assert stages[-1] == (1.0, "done") and any(s.startswith("evaluating") for _, s in stages)
    assert [f for f, _ in stages] == sorted(f for f, _ in stages)  # monotone progress bar
    state = view.space.state_dict(view.result.delta)
    direct = evaluate(entry.zoo, state, entry.zoo.task_names, "test", device="cpu")
    record = service.history.get(view.id)
    assert record.accuracy == pytest.approx(dict(zip(direct["task"], direct["accuracy"])))
    assert record.params == {"k": 30.0, "merge": "mean", "lam": 0.7} and record.device == "cpu"
    expected = mask_statistics(view.result.masks["ties_trim"], view.space.index)
    pd.testing.assert_frame_equal(view.stats["ties_trim"].histogram, expected.histogram)
    kept = {figures.KEPT_LABELS[name]: v for name, v in expected.class_fractions().items()}
    assert record.statistics["masks"]["ties_trim"] == pytest.approx(kept)  # TIES trims are no TALL classes
    assert "catastrophic" not in view.summary() and "kept by no task" in view.summary()
    assert 0 <= record.statistics["sign_conflict_rate"] <= 1
    models = set(view.accuracy["model"])
    assert models == {"pretrained", "individual", "merged"}
    figs = view.figures()
    assert figs["histogram"] is not None and figs["table:sign_conflicts"] is not None
    assert "Run #" in view.summary() and "ties_trim masks" in view.summary()


def test_consensus_marks_k_and_tall_reports_reconstruction(service, entry):
    view = service.merge(entry.id, "consensus", {"k": 2})
    assert view.k == 2 and view.figures()["histogram"].layout.shapes[0].x0 == 1.5
    # the consensus keep mask itself is a mask choice: each task's TALL mask restricted to weights with c ≥ 2
    assert list(view.stats) == ["tall", "consensus_keep"]
    keep = view.stats["consensus_keep"].histogram.set_index("c")["count"]
    tall = view.stats["tall"].histogram.set_index("c")["count"]
    assert keep[1] == 0 and keep[0] == tall[0] + tall[1] and (keep[2:] == tall[2:]).all()
    tall = service.merge(entry.id, "tall", {"tall_lambda": 0.4})
    assert set(tall.accuracy["model"]) == {"pretrained", "individual", "TALL-reconstructed"}
    assert tall.k is None


def test_emr_reports_reconstruction_mask_statistics_and_exports_per_task(service, entry, tmp_path):
    view = service.merge(entry.id, "emr")
    assert set(view.accuracy["model"]) == {"pretrained", "individual", "EMR-reconstructed"}
    assert set(view.stats) == {"emr"} and view.figures()["histogram"] is not None
    with pytest.raises(UserError, match="emr serves one model per task"):
        service.export_checkpoint(view.id, "open_clip", "s")
    compressed = load_compressed(service.export_checkpoint(view.id, "tall-compressed", "s"))
    assert compressed.scales == view.result.task_scales


def test_merge_a_subset_of_tasks(service, entry):
    view = service.merge(entry.id, "task_arithmetic", {}, tasks=["task0", "task2"])
    assert view.record.tasks == ["task0", "task2"] and set(view.record.accuracy) == {"task0", "task2"}
    assert torch.equal(view.result.delta, 0.3 * (entry.space.stack[0] + entry.space.stack[2]))


def test_bad_input_is_refused_and_nothing_recorded(service, entry):
    before = len(service.history.records())
    with pytest.raises(ParameterError, match="k: 150.0 is above the maximum"):
        service.merge(entry.id, "ties", {"k": 150})
    with pytest.raises(ParameterError, match="unknown parameter"):
        service.merge(entry.id, "ties", {"bogus": 1})
    with pytest.raises(UnknownMethodError, match="unknown merge method 'magic'"):
        service.merge(entry.id, "magic", {})
    with pytest.raises(UserError, match="load a zoo first"):
        service.merge("nope", "ties", {})
    with pytest.raises(ValueError, match="unknown task"):
        service.merge(entry.id, "ties", {}, tasks=["task0", "dogs"])
    with pytest.raises(UserError, match="^tasks: each task may be merged once; repeated: task1$"):
        service.merge(entry.id, "ties", {}, tasks=["task1"] * 256)
    assert len(service.history.records()) == before


def test_sweep_over_consensus_k_starts_at_task_arithmetic_and_refuses_k_above_T(service, entry):
    record = service.sweep(entry.id, ["consensus"], {"k": [0, 3]}, {"consensus": {"lam": 0.3}}, owner="alice")
    table = record.table()
    assert record.split == "val" and len(table) == 2 * 3 and record.settings["consensus"]["lam"] == 0.3
    # k = 0 keeps every weight: Consensus TA is Task Arithmetic with the same (held fixed) λ
    ta = service.sweep(entry.id, ["task_arithmetic"], {"lam": [0.3]}).table().set_index("task")["accuracy"]
    at_zero = table[table["k"] == 0].set_index("task")["accuracy"]
    assert list(at_zero[ta.index]) == pytest.approx(list(ta))
    assert table["normalized"].notna().all()
    # θ0 and the fine-tuned models on the same split, as the references
    pre = evaluate(entry.zoo, None, record.tasks, "val", device="cpu").set_index("task")["accuracy"]
    assert record.references["pretrained"] == pytest.approx(pre.to_dict())
    assert service.sweeps.get(record.id, "alice").table().equals(table)
    with pytest.raises(KeyError):
        service.sweeps.get(record.id, "bob")  # another session's sweep
    with pytest.raises(ParameterError, match=r"^k: 4 is above the number of merged tasks \(3\)"):
        service.sweep(entry.id, ["consensus"], {"k": [4]})
    with pytest.raises(UserError, match="no numeric parameter 'q'"):
        service.sweep(entry.id, ["consensus"], {"q": [1]})
    with pytest.raises(UserError, match="a 2-D grid sweeps one method"):
        service.sweep(entry.id, ["ties", "dare"], {"k": [10], "lam": [1.0]})


def test_sweep_defaults_to_the_paper_grid(service, entry):
    table = service.sweep(entry.id, ["task_arithmetic"], {"lam": None}).table()
    assert sorted(set(table["lam"])) == pytest.approx([0.1 * i for i in range(1, 11)])


def test_tune_chooses_lambda_on_validation_by_the_selection_rule(service, entry):
    from merging.selection import select
    from merging.sweep import best_point

    tuned = service.tune(entry.id, "task_arithmetic", {})
    swept = service.sweep(entry.id, ["task_arithmetic"], {"lam": None}).table()  # every λ, normalized, on val
    best = best_point(swept, {"lam": sorted(set(swept["lam"]))}).point["lam"]
    assert tuned == {"lam": pytest.approx(best)}
    tall = service.tune(entry.id, "tall", {})
    expected = select(entry.zoo, entry.space, "tall", {}, "val", device="cpu").params["tall_lambda"]
    assert tall == {"tall_lambda": pytest.approx(expected)} and len(expected) == 3
    view = service.merge(entry.id, "tall", tall)  # the per-task λt go straight into a merge
    assert view.record.params["tall_lambda"] == pytest.approx(expected)


def test_exports_are_atomic_files_in_the_session_folder(service, entry, zoo_dir):
    view = service.merge(entry.id, "dare", {"p": 0.5, "seed": 3})
    path = service.export_checkpoint(view.id, "open_clip", "alice")
    assert path.parent == service.session_dir("alice") / "exports"
    saved = load_file(path)
    expected = view.space.state_dict(view.result.delta)
    assert set(saved) == {"visual." + k for k in expected}
    assert all(torch.equal(saved["visual." + k], v) for k, v in expected.items())
    assert service.export_checkpoint(view.id, "hf", "alice").stat().st_size > 0
    csv = pd.read_csv(service.export_results([view.id], "csv", "alice"))
    assert list(csv["run"]) == [view.id]
    with pytest.raises(UserError, match="unknown checkpoint format"):
        service.export_checkpoint(view.id, "zip", "alice")
    tall = service.merge(entry.id, "tall", {})
    with pytest.raises(UserError, match="pick a task"):
        service.export_checkpoint(tall.id, "open_clip", "alice")
    one = load_file(service.export_checkpoint(tall.id, "open_clip", "alice", task="task1"))
    rebuilt = tall.space.state_dict(tall.result.task_delta(1))
    assert all(torch.equal(one["visual." + k], v) for k, v in rebuilt.items())
    compressed = load_compressed(service.export_checkpoint(tall.id, "tall-compressed", "alice"))
    assert compressed.task_names == ["task0", "task1", "task2"]
    assert all(torch.equal(compressed.reconstruct("task1")[k], v) for k, v in rebuilt.items())
    with pytest.raises(ValueError, match="per-task masks"):
        service.export_checkpoint(view.id, "tall-compressed", "alice")
    assert not list((service.session_dir("alice") / "exports").glob(".*.tmp"))


def test_export_after_the_result_left_memory_merges_again(zoo_dir, tmp_path):
    service = Service(Settings(tmp_path / "data", device="cpu", keep_results=1, zoo_roots=[zoo_dir]))
    entry = service.load_zoo(zoo_dir)
    first = service.merge(entry.id, "dare", {"p": 0.3, "seed": 7})
    expected = first.space.state_dict(first.result.delta)
    service.merge(entry.id, "averaging", {})
    with pytest.raises(UserError, match="no longer in memory"):
        service.run(first.id)
    saved = load_file(service.export_checkpoint(first.id, "open_clip", "bob"))
    assert all(torch.equal(saved["visual." + k], v) for k, v in expected.items())


def test_uploads(service, entry, zoo_dir, tmp_path):
    pre, fine = zoo_dir / "pretrained.safetensors", zoo_dir / "finetuned"
    with pytest.raises(UserError, match="only .safetensors"):
        service.load_uploads([pre, zoo_dir / "zoo.json"], "carol")
    with pytest.raises(UserError, match="exactly one pretrained"):
        service.load_uploads([fine / "task0.safetensors", fine / "task1.safetensors"], "carol")
    small = Service(Settings(service.settings.data_dir, device="cpu", upload_limit=1000))
    with pytest.raises(UserError, match="over the limit"):
        small.load_uploads([pre, fine / "task0.safetensors"], "carol")
    corrupt = tmp_path / "cars.safetensors"
    corrupt.write_bytes((fine / "task0.safetensors").read_bytes()[:500])
    with pytest.raises(UserError, match=r"^finetuned/cars.safetensors: (truncated|corrupt)"):
        service.load_uploads([pre, corrupt], "carol", like=entry.id)
    # the tiny ViT matches no open_clip model: its architecture comes from the loaded zoo
    uploaded = service.load_uploads([pre, fine / "task0.safetensors", fine / "task2.safetensors"], "carol",
                                    like=entry.id)
    assert uploaded.zoo.task_names == ["task0", "task2"] and uploaded.evaluable() == []
    with pytest.raises(UserError, match="load a zoo first"):  # another session's upload does not exist for you
        service.merge(uploaded.id, "ties", {}, owner="dave")
    view = service.merge(uploaded.id, "ties", {}, owner="carol")
    assert view.record.zoo_path == "upload" and view.record.owner == "carol"
    assert view.record.accuracy == {} and view.stats["ties_trim"].density.shape[0] == 2
    assert torch.equal(uploaded.space.stack, entry.space.stack[[0, 2]])


def test_old_session_folders_are_pruned(tmp_path):
    import os
    import time
    service = Service(Settings(tmp_path / "data", device="cpu"))
    old, fresh = service.session_dir("old"), service.session_dir("fresh")
    (old / "exports").mkdir()
    (old / "exports" / "run1.safetensors").write_bytes(b"x")
    (fresh / "f.csv").write_text("a")
    long_ago = time.time() - 30 * 86400
    for path in [old / "exports" / "run1.safetensors", old / "exports", old]:
        os.utime(path, (long_ago, long_ago))
    assert service.prune_sessions(7) == [old]
    assert not old.exists() and (fresh / "f.csv").exists()
