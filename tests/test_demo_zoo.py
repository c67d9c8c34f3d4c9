"""The demo zoo: training pieces, a reproducible and atomic build, and the shipped assets/demo-zoo (small, loads,
reproduces its recorded accuracies, and orders the merge methods as CLIP ViT-B/32 does in the papers)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import merging.zoo.__main__ as zoo_cli
from merging.evaluation import Evaluator, evaluate_baselines, evaluate_result
from merging.heads import zero_shot_weights
from merging.models import build_clip
from merging.selection import select
from merging.zoo import load_zoo
from merging.zoo.demo import build as build_module
from merging.zoo.demo import tasks as demo_tasks
from merging.zoo.demo.build import DEFAULT_OUT, BuildConfig, build, digests
from merging.zoo.demo.train import (ARCHITECTURE, FINETUNE, MAX_LOGIT_SCALE, PRETRAIN, _train, pretrain,
                                    to_input, tokenize)

TINY = BuildConfig(n_pretrain=16, n_train=48, n_val=10, n_test=10,
                   pretrain=replace(PRETRAIN, steps=2, batch_size=16, warmup=1),
                   finetune=replace(FINETUNE, steps=2, batch_size=16, warmup=1))
quiet = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "zoo"
    build(out, TINY, "cpu", **quiet)
    return out


# ---------------------------------------------------------------------------------------------------- training
def test_tokenize_is_open_clips_bpe_cut_to_the_architectures_context():
    import open_clip

    text = ["three small red stars at the top left on a snowy ground, far away behind the trees"]
    tokens = tokenize(text)
    length = ARCHITECTURE.config["text_cfg"]["context_length"]
    full = open_clip.tokenize(text)[0]
    assert tokens.shape == (1, length) and tokens[0, 0] == full[0]
    assert torch.equal(tokens[0, :length - 1], full[:length - 1]) and tokens[0, -1] == 49407  # end of text kept


def test_pretraining_fits_captions_and_clamps_the_temperature():
    from open_clip.loss import ClipLoss

    images, captions = demo_tasks.pretraining_pairs("shapes", 8, 0.0, confusion=0.0)  # one per class: distinct
    x, tokens = to_input(images), tokenize(captions)

    def clip_loss(model):
        with torch.no_grad():
            return ClipLoss()(model.encode_image(x, normalize=True), model.encode_text(tokens, normalize=True),
                              model.logit_scale.exp()).item()

    schedule = replace(PRETRAIN, steps=25, batch_size=8, lr=3e-3, warmup=1)
    torch.manual_seed(0)
    before = clip_loss(build_clip(ARCHITECTURE))  # pretrain's own seeded initialisation
    model = pretrain(x, tokens, schedule, 0, torch.device("cpu"))
    assert clip_loss(model) < before - 0.3
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    hot = pretrain(x, tokens, replace(schedule, steps=1, lr=1e3), 0, torch.device("cpu"))
    assert hot.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6


def test_fine_tuning_steps_are_sgd_with_momentum_and_decay_only_on_matrices():
    """The zoo's fine-tuning optimizer, against SGD written out: v ← μv + g + wd·w (matrices only), w ← w − lr·v, with
    the warm-up/cosine lr; an unknown optimizer is refused by name."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    schedule = replace(FINETUNE, steps=3, warmup=1, lr=0.1, weight_decay=0.05)
    assert FINETUNE.optimizer == "sgd" and FINETUNE.weight_decay == 0
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    lrs = [0.1, 0.1, 0.05]  # warm-up step, then 0.1·½(1 + cos(π·s/2)) for s = 0, 1
    for lr in lrs:
        wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
        ((x @ wr.T + br - y) ** 2).mean().backward()
        vw, vb = schedule.momentum * vw + wr.grad + 0.05 * w, schedule.momentum * vb + br.grad
        w, b = w - lr * vw, b - lr * vb
    loss = lambda idx: ((model(x) - y) ** 2).mean()  # noqa: E731 (full batch)
    _train(model, 8, schedule, torch.Generator().manual_seed(0), loss, lambda *a: None, "test")
    assert torch.allclose(model.weight, w, atol=1e-6) and torch.allclose(model.bias, b, atol=1e-6)
    with pytest.raises(ValueError, match="Schedule.optimizer"):
        _train(model, 8, replace(schedule, optimizer="adam"), torch.Generator(), loss, lambda *a: None, "test")


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
    assert first == second and len(first) == 2 + 8 + 8 * (TINY.n_val + TINY.n_test)  # manifest, θ0, ft, PNGs


def test_build_pins_its_thread_count(tmp_path):
    """The bytes depend on torch's CPU thread count (batches large enough to be split across threads), so the
    build sets its own and restores the caller's."""
    config = replace(TINY, n_pretrain=64, n_train=64, n_val=4, n_test=4, threads=1,
                     pretrain=replace(TINY.pretrain, steps=6, batch_size=64),
                     finetune=replace(TINY.finetune, steps=4, batch_size=64))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        build(tmp_path / "one", config, "cpu", **quiet)
        torch.set_num_threads(2)
        build(tmp_path / "ambient-two", config, "cpu", **quiet)
        assert torch.get_num_threads() == 2
        build(tmp_path / "pinned-two", replace(config, threads=2), "cpu", **quiet)
    finally:
        torch.set_num_threads(before)
    one = digests(tmp_path / "one")
    assert digests(tmp_path / "ambient-two") == one
    assert digests(tmp_path / "pinned-two")["pretrained.safetensors"] != one["pretrained.safetensors"]


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


def test_built_heads_are_zero_shot_from_the_shipped_text_tower(tiny_zoo):
    """W_c = logit_scale · normalize(mean_templates normalize(text(template(c)))), recomputed by hand from θ0's
    text tower, is the head the zoo evaluates with."""
    from safetensors.torch import load_file

    zoo = load_zoo(tiny_zoo)
    model = build_clip(ARCHITECTURE)
    model.load_state_dict({k: v.float() for k, v in load_file(tiny_zoo / "pretrained.safetensors").items()})
    generator = demo_tasks.TASKS["counts"]
    assert zoo.manifest.task("counts").head.templates == generator.templates
    with torch.no_grad():
        text = model.encode_text(tokenize([t.replace("{}", "three") for t in generator.templates]))
        mean = torch.nn.functional.normalize(text, dim=-1).mean(0)
        expected = model.logit_scale.exp() * mean / mean.norm()
    assert torch.allclose(zoo.head("counts").weight[2], expected, atol=1e-5)
    assert torch.allclose(zoo.head("counts").weight, zero_shot_weights(model, tokenize, generator.classnames,
                                                                       generator.templates), atol=1e-6)


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


def test_cli_variant_flags_reach_the_build_config(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(zoo_cli, "build", lambda out, config, *a, **k: seen.append(config) or {
        "total": 0, "data": 0, "pretrain": 0, "finetune": 0})
    assert zoo_cli.main(["build", "--out", str(tmp_path / "z"), "--n-pretrain", "5000", "--pretrain-steps", "2500",
                         "--caption-confusion", "0.9", "--threads", "2"]) == 0
    assert seen[-1] == replace(BuildConfig(threads=2), n_pretrain=5000, caption_confusion=0.9,
                               pretrain=replace(PRETRAIN, steps=2500))
    assert zoo_cli.main(["build", "--out", str(tmp_path / "z")]) == 0
    assert seen[-1] == BuildConfig()  # no flag: the shipped design
    assert zoo_cli.main(["build", "--out", str(tmp_path / "z"), "--finetune-optimizer", "adamw", "--finetune-lr",
                         "5e-4", "--finetune-weight-decay", "0.1"]) == 0
    assert seen[-1].finetune == replace(FINETUNE, optimizer="adamw", lr=5e-4, weight_decay=0.1)
    for flags, message in ((["--caption-confusion", "1.5"], "--caption-confusion must be between 0 and 1"),
                           (["--pretrain-steps", "0"], "--pretrain-steps must be at least 1"),
                           (["--n-pretrain", "-3"], "--n-pretrain must be at least 1"),
                           (["--finetune-lr", "nan"], "--finetune-lr must be a finite number >= 0"),
                           (["--finetune-weight-decay", "-1"], "--finetune-weight-decay must be a finite number")):
        with pytest.raises(SystemExit):
            zoo_cli.main(["build", *flags])
        assert message in capsys.readouterr().err


def test_cli_builds_and_verifies(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo_cli, "BuildConfig", lambda seed, threads: replace(TINY, seed=seed, threads=threads))
    out = tmp_path / "zoo"
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu"]) == 0
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu", "--verify"]) == 0
    assert f"{len(digests(out))} of {len(digests(out))} files identical" in capsys.readouterr().out
    (out / "finetuned" / "digits.safetensors").write_bytes(b"changed")
    assert zoo_cli.main(["build", "--out", str(out), "--device", "cpu", "--verify"]) == 1
    assert "finetuned/digits.safetensors" in capsys.readouterr().out
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
    assert size < 40e6
    assert zoo.task_names == list(demo_tasks.TASKS) and zoo.manifest.path.name == "zoo.json"
    for task in zoo.task_names:
        assert set(zoo.splits(task)) == {"val", "test"}
        assert zoo.classnames(task) == list(demo_tasks.TASKS[task].classnames)
        assert zoo.manifest.task(task).head.templates == demo_tasks.TASKS[task].templates


def test_shipped_models_reach_their_recorded_accuracies(shipped):
    zoo, evaluator = shipped
    table = evaluate_baselines(zoo, split="test", evaluator=evaluator)
    for row in table.itertuples():
        recorded, n = zoo.recorded(row.task), evaluator.size(row.task, "test")
        assert abs(row.finetuned - recorded["finetuned_test_acc"]) <= 1 / n + 1e-9  # at most one image apart
        assert abs(row.pretrained - recorded["pretrained_test_acc"]) <= 1 / n + 1e-9
    gap = (table["finetuned"] - table["pretrained"]).mean()
    assert gap >= 0.15, f"zero-shot θ0 only {gap:.1%} below the fine-tuned models on average"


@pytest.fixture(scope="module")
def shipped_rows(shipped):
    """Mean test accuracy and normalized accuracy per method, λ (TALL: λt) chosen on val, the rest at defaults."""
    from merging.registry import run_merge

    zoo, evaluator = shipped
    space = zoo.build_space(device="cpu")
    reference = {t: zoo.recorded(t)["finetuned_test_acc"] for t in zoo.task_names}
    val_reference = {t: zoo.recorded(t)["finetuned_val_acc"] for t in zoo.task_names}
    rows = {"theta0": (sum(zoo.recorded(t)["pretrained_test_acc"] for t in zoo.task_names) / len(zoo.task_names),
                       None)}
    for key, method, fixed in (("ta", "task_arithmetic", {}), ("ties", "ties", {}),
                               ("consensus", "consensus", {"base": "ta"}), ("pcb", "pcb", {}),
                               ("tall", "tall", {"base": "ta"})):
        chosen = select(zoo, space, method, fixed, reference=val_reference, evaluator=evaluator)
        table = evaluate_result(zoo, space, chosen.result, reference=reference, evaluator=evaluator)
        rows[key] = table["accuracy"].mean(), table["normalized"].mean()
    table = evaluate_result(zoo, space, run_merge(space, "averaging", {}), reference=reference, evaluator=evaluator)
    rows["averaging"] = table["accuracy"].mean(), table["normalized"].mean()
    return rows


def test_shipped_task_arithmetic_keeps_most_of_the_fine_tuned_accuracy(shipped_rows):
    """TA ≥ θ0 + 10 points and ≥ 70 % normalized; weight averaging ≤ TA."""
    acc = {k: a for k, (a, _) in shipped_rows.items()}
    assert shipped_rows["ta"][1] >= 0.70, shipped_rows
    assert acc["ta"] >= acc["theta0"] + 0.10, shipped_rows
    assert acc["averaging"] <= acc["ta"], shipped_rows


def test_shipped_tall_masks_recover_the_fine_tuned_models(shipped_rows):
    """TALL + TA ≥ 97 % normalized."""
    assert shipped_rows["tall"][1] >= 0.97, shipped_rows


def test_shipped_trim_based_merges_beat_task_arithmetic(shipped_rows):
    """TIES and PCB each ≥ TA, as on CLIP ViT-B/32."""
    acc = {k: a for k, (a, _) in shipped_rows.items()}
    assert min(acc["ties"], acc["pcb"]) >= acc["ta"], shipped_rows


@pytest.mark.xfail(strict=True, reason="issue 10's target the shipped zoo misses (README: the demo zoo)")
def test_shipped_consensus_beats_task_arithmetic(shipped_rows):
    """Consensus TA ≥ TA (missed by 0.2 points on the shipped zoo)."""
    acc = {k: a for k, (a, _) in shipped_rows.items()}
    assert acc["consensus"] >= acc["ta"], shipped_rows
