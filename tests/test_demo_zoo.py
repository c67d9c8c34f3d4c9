"""The demo zoo: training pieces on hand-computed cases, a reproducible and atomic build, and the shipped
assets/demo-zoo (small, loads, reproduces its recorded accuracies, shows the interference the papers show)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import merging.zoo.__main__ as zoo_cli
from merging.evaluation import Evaluator, evaluate_baselines, evaluate_result
from merging.selection import select
from merging.zoo import load_zoo
from merging.zoo.demo import build as build_module
from merging.zoo.demo import tasks as demo_tasks
from merging.zoo.demo.build import DEFAULT_OUT, BuildConfig, build, digests
from merging.zoo.demo.train import FINETUNE, PRETRAIN, augment, nt_xent, prototype_head, to_input

TINY = BuildConfig(n_train=48, n_val=10, n_test=10, pretrain=replace(PRETRAIN, steps=2, batch_size=16, warmup=1),
                   finetune=replace(FINETUNE, steps=2, batch_size=16, warmup=1))
quiet = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "zoo"
    build(out, TINY, "cpu", **quiet)
    return out


# ---------------------------------------------------------------------------------------------------- training
def test_nt_xent_matches_a_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])  # views: (0, 2) and (1, 3)
    tau = 0.5
    sims = z @ z.T / tau
    expected = 0.0
    for i, j in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        others = [k for k in range(4) if k != i]
        expected += -(sims[i, j] - torch.logsumexp(sims[i, others], 0))
    assert nt_xent(z, tau).item() == pytest.approx(expected.item() / 4, rel=1e-6)


def test_prototype_head_is_the_scaled_normalized_centred_class_mean():
    encoder = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(2))
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    head = prototype_head(encoder, x, torch.tensor([0, 0, 1]), 2, scale=10.0)
    # μ0 = mean of (0.6, 0.8) and (1, 0) = (0.8, 0.4); μ1 = (0, 1); centre (0.4, 0.7)
    assert torch.allclose(head.weight, torch.tensor([[8.0, -6.0], [-8.0, 6.0]]))


def test_augment_is_seeded_and_keeps_shape():
    x = to_input(demo_tasks.generate("shapes", "train", 6)[0])
    a = augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, augment(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(4)))


def test_training_inputs_equal_what_the_zoo_evaluates(tiny_zoo):
    zoo = load_zoo(tiny_zoo)
    dataset = zoo.dataset("letters", "test")
    images, _ = demo_tasks.generate("letters", "test", TINY.n_test)
    for k in (0, 5, len(dataset) - 1):
        path, label = dataset.samples[k]
        index = int(path.stem)
        assert label == index % len(demo_tasks.TASKS["letters"].classnames)
        assert torch.allclose(dataset[k][0], to_input(images[index:index + 1])[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- build
def test_build_is_reproducible_bit_for_bit(tiny_zoo, tmp_path):
    build(tmp_path / "again", TINY, "cpu", **quiet)
    first, second = digests(tiny_zoo), digests(tmp_path / "again")
    assert first == second and len(first) == 2 + 2 * 8 + 8 * (TINY.n_val + TINY.n_test)  # manifest, θ0, ft, heads, PNGs


def test_built_zoo_records_what_its_evaluation_measures(tiny_zoo):
    zoo = load_zoo(tiny_zoo)
    assert zoo.task_names == list(demo_tasks.TASKS)
    assert zoo.classnames("colours") == list(demo_tasks.TASKS["colours"].classnames)
    table = evaluate_baselines(zoo, split="test", device="cpu")
    for row in table.itertuples():
        recorded = zoo.recorded(row.task)
        assert recorded["pretrained_test_acc"] == pytest.approx(row.pretrained, abs=1e-6)
        assert recorded["finetuned_test_acc"] == pytest.approx(row.finetuned, abs=1e-6)
    theta0 = zoo.pretrained_state()
    assert all(v.dtype == torch.float16 for v in theta0.values())


def test_failed_build_leaves_the_existing_zoo_untouched(tiny_zoo, tmp_path, monkeypatch):
    out = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, out)
    before = digests(out)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(build_module, "finetune", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        build(out, TINY, "cpu", **quiet)
    assert digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # no temporary folder left behind


def test_cli_builds_and_verifies(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo_cli, "BuildConfig", lambda seed: replace(TINY, seed=seed))
    out = tmp_path / "zoo"
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu"]) == 0
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu", "--verify"]) == 0
    assert f"{len(digests(out))} of {len(digests(out))} files identical" in capsys.readouterr().out
    (out / "heads" / "digits.safetensors").write_bytes(b"changed")
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu", "--verify"]) == 1
    assert "heads/digits.safetensors" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert zoo_cli.main(["build", "--out", str(out), "--device", "cuda", "--verify"]) == 2
        assert "CUDA was requested" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- shipped
@pytest.fixture(scope="module")
def shipped():
    zoo = load_zoo(DEFAULT_OUT)
    return zoo, Evaluator(zoo, device="cpu")


def test_shipped_zoo_is_small_and_complete(shipped):
    zoo, _ = shipped
    size = sum(p.stat().st_size for p in DEFAULT_OUT.rglob("*") if p.is_file())
    assert size < 30e6
    assert zoo.task_names == list(demo_tasks.TASKS) and zoo.manifest.path.name == "zoo.json"
    for task in zoo.task_names:
        assert set(zoo.splits(task)) == {"val", "test"}
        assert zoo.classnames(task) == list(demo_tasks.TASKS[task].classnames)


def test_shipped_models_reach_their_recorded_accuracies(shipped):
    zoo, evaluator = shipped
    table = evaluate_baselines(zoo, split="test", evaluator=evaluator)
    for row in table.itertuples():
        recorded, n = zoo.recorded(row.task), evaluator.size(row.task, "test")
        assert abs(row.finetuned - recorded["finetuned_test_acc"]) <= 1 / n + 1e-9  # at most one image apart
        assert abs(row.pretrained - recorded["pretrained_test_acc"]) <= 1 / n + 1e-9
    gap = (table["finetuned"] - table["pretrained"]).mean()
    assert gap >= 0.30, f"fine-tuned only {gap:.1%} above pretrained on average"


def test_shipped_zoo_shows_interference_and_room_to_improve(shipped):
    zoo, evaluator = shipped
    space = zoo.build_space(device="cpu")
    reference = {t: zoo.recorded(t)["finetuned_test_acc"] for t in zoo.task_names}
    val_reference = {t: zoo.recorded(t)["finetuned_val_acc"] for t in zoo.task_names}
    normalized = {}
    for method in ("task_arithmetic", "tall"):
        chosen = select(zoo, space, method, reference=val_reference, evaluator=evaluator)
        table = evaluate_result(zoo, space, chosen.result, reference=reference, evaluator=evaluator)
        normalized[method] = table["normalized"].mean()
    assert normalized["task_arithmetic"] <= 0.90
    assert normalized["tall"] >= normalized["task_arithmetic"] + 0.05
