"""Zoo loading, heads and per-task evaluation on a tiny open_clip ViT zoo, against plain reference loops."""
from __future__ import annotations

import csv

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ck_tiny_zoo import CLASSES, TINY, make_tiny_zoo
from merging import CancelToken, Cancelled, run_merge
from merging.data import DataError
from merging.evaluation import Evaluator, evaluate, evaluate_baselines, evaluate_result
from merging.zoo import load_zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_zoo")
    make_tiny_zoo(root)
    return root


@pytest.fixture(scope="module")
def zoo(zoo_dir):
    return load_zoo(zoo_dir)


@pytest.fixture(scope="module")
def reference_clip(zoo_dir, zoo):
    """The pretrained CLIP built straight from open_clip and the file (not through merging.*)."""
    model = open_clip.create_model(TINY, pretrained=None)
    model.load_state_dict(load_file(str(zoo_dir / "pretrained.safetensors")), strict=False)
    return model.eval()


def test_zoo_api(zoo, zoo_dir):
    assert zoo.task_names == ["task0", "task1"]
    assert zoo.splits("task0") == ["val", "test"]
    state = zoo.pretrained_state()
    assert "conv1.weight" in state and not any(k.startswith("visual.") for k in state)
    loader = zoo.finetuned_loader("task1")
    assert callable(loader) and set(loader()) == set(state)
    space = zoo.build_space(device="cpu")
    assert space.task_names == ["task0", "task1"] and space.P == sum(v.numel() for v in state.values())
    images, label = zoo.dataset("task0", "val")[0]
    assert images.shape == (3, 32, 32) and label == CLASSES.index("bird")  # folders listed sorted, labelled by name
    assert zoo_dir / "finetuned" / "task0.safetensors" in zoo.inputs()


def test_zero_shot_head_matches_reference(zoo, reference_clip):
    tokenizer = open_clip.get_tokenizer(TINY)
    templates = ["a photo of a {}.", "a {} in the wild."]
    rows = []
    with torch.no_grad():
        for name in CLASSES:
            embeddings = []
            for template in templates:
                e = reference_clip.encode_text(tokenizer([template.format(name)]))[0]
                embeddings.append(e / e.norm())
            mean = torch.stack(embeddings).mean(0)
            rows.append(mean / mean.norm() * reference_clip.logit_scale.exp())
    head = zoo.head("task1")
    assert head.bias is None
    torch.testing.assert_close(head.weight, torch.stack(rows), rtol=1e-5, atol=1e-6)
    features = torch.randn(4, 16)
    expected = (features / features.norm(dim=-1, keepdim=True)) @ torch.stack(rows).T
    torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)


def test_zero_shot_heads_do_not_depend_on_the_first_callers_mode(zoo_dir):
    """The first head request may come from inside an evaluation (inference mode, autocast): the heads must be the
    same bits as when a merge method asks first, or merges through them would depend on the order of requests."""
    plain = load_zoo(zoo_dir).head("task1").weight
    for mode in (torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
        fresh = load_zoo(zoo_dir)
        with mode():
            weight = fresh.head("task1").weight.clone()
        assert weight.dtype == torch.float32 and weight.equal(plain)


def _plain_samples(zoo_dir, task: str, split: str):
    if task == "task0":
        return [(p, CLASSES.index(c)) for c in CLASSES
                for p in sorted((zoo_dir / "data" / task / split / c).glob("*.png"))]
    with open(zoo_dir / "data" / task / f"{split}.csv") as handle:
        return [(zoo_dir / "data" / task / row["path"],
                 CLASSES.index(row["label"]) if row["label"] in CLASSES else int(row["label"]))
                for row in csv.DictReader(handle)]


def _plain_accuracy(zoo_dir, zoo, reference_clip, visual_state, task, split) -> tuple[int, int]:
    visual = reference_clip.visual
    visual.load_state_dict(visual_state)
    transform = open_clip.image_transform(32, is_train=False)
    if task == "task0":
        head = load_file(str(zoo_dir / "heads" / "task0.safetensors"))
        weight, bias = head["weight"], head["bias"]
    else:
        weight, bias = zoo.head(task).weight.detach(), torch.zeros(3)
    samples = _plain_samples(zoo_dir, task, split)
    images = torch.stack([transform(Image.open(path)) for path, _ in samples])
    with torch.no_grad():
        features = visual(images)
    logits = features / features.norm(dim=1, keepdim=True) @ weight.T + bias
    correct = sum(int(row.argmax()) == label for row, (_, label) in zip(logits, samples))
    return correct, len(samples)


def test_evaluation_agrees_with_plain_loop(zoo, zoo_dir, reference_clip):
    states = {t: zoo.finetuned_state(t) for t in zoo.task_names}
    cached = evaluate(zoo, lambda task: states[task], split="test", device="cpu")
    streamed = evaluate(zoo, lambda task: states[task], split="test", device="cpu", batch_size=4, cache_bytes=0)
    assert cached.equals(streamed)
    for row in cached.itertuples():
        assert (row.correct, row.n) == _plain_accuracy(zoo_dir, zoo, reference_clip, states[row.task], row.task,
                                                       "test")
        assert row.accuracy == row.correct / row.n
    val = evaluate(zoo, states["task0"], ["task0", "task1"], split="val", device="cpu",
                   reference={"task0": 0.5, "task1": 0.25})
    assert list(val.columns) == ["task", "split", "accuracy", "correct", "n", "normalized"]
    for row in val.itertuples():
        assert (row.correct, row.n) == _plain_accuracy(zoo_dir, zoo, reference_clip, states["task0"], row.task, "val")
        assert row.normalized == pytest.approx(row.accuracy / {"task0": 0.5, "task1": 0.25}[row.task])


def test_results_are_evaluated_per_task_for_tall(zoo):
    space = zoo.build_space(device="cpu")
    ev = Evaluator(zoo, device="cpu")
    tall = run_merge(space, "tall", {"tall_lambda": 0.4})
    assert not torch.equal(tall.task_delta(0), tall.task_delta(1))
    per_task = evaluate_result(zoo, space, tall, split="test", evaluator=ev)
    by_state = evaluate(zoo, lambda task: space.state_dict(tall.task_delta(space.task_names.index(task))),
                        split="test", evaluator=ev)
    assert per_task.equals(by_state)
    ta = run_merge(space, "task_arithmetic", {"lam": 0.5})
    assert evaluate_result(zoo, space, ta, split="val", evaluator=ev).equals(
        evaluate(zoo, space.state_dict(ta.delta), split="val", evaluator=ev))
    one = space.subset(["task0"])  # held-out task1: shared merges generalize, TALL has no θ̂ for it
    held_out = evaluate_result(zoo, one, run_merge(one, "task_arithmetic", {"lam": 0.5}), ["task1"], "val",
                               evaluator=ev)
    assert held_out.equals(evaluate(zoo, one.state_dict(0.5 * one.sum_tau()), ["task1"], "val", evaluator=ev))
    with pytest.raises(ValueError, match="task1 is not among them"):
        evaluate_result(zoo, one, run_merge(one, "tall", {}), ["task0", "task1"], "val", evaluator=ev)
    baselines = evaluate_baselines(zoo, split="val", evaluator=ev)
    assert list(baselines.columns) == ["task", "split", "pretrained", "finetuned"]
    assert baselines["pretrained"].tolist() == evaluate(zoo, None, split="val", evaluator=ev)["accuracy"].tolist()


def test_progress_and_cancel(zoo):
    seen = []
    evaluate(zoo, None, split="val", device="cpu", batch_size=4, progress=lambda f, s: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 4
    token = CancelToken()
    from merging import Progress

    def cancel_after_first(fraction, stage):
        token.cancel()

    with pytest.raises(Cancelled):
        evaluate(zoo, None, split="val", device="cpu", batch_size=4, progress=Progress(cancel_after_first, token))


def test_data_context_and_data_errors(zoo, zoo_dir, tmp_path):
    context = zoo.data_context(split="val", device="cpu")
    names = {n for n, _ in context.encoder.named_parameters()}
    assert names == set(zoo.build_space(device="cpu").index.names())
    assert set(context.heads) == set(context.unlabeled) == {"task0", "task1"}
    with pytest.raises(ValueError, match="test data"):
        zoo.data_context(split="test")
    test_time = zoo.data_context(split="test", device="cpu", test_time=True)  # the official codes' protocol
    for task in ("task0", "task1"):
        images = torch.stack([x for x, _ in test_time.unlabeled[task]])
        assert images.equal(torch.stack([x for x, _ in zoo.dataset(task, "test")]))
        val = torch.stack([x for x, _ in context.unlabeled[task]])
        assert val.shape == images.shape and not images.equal(val)
    from merging.data import csv_dataset
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\n" + f"{zoo_dir / 'data/task1/val/cat/0.png'},zebra\n")
    with pytest.raises(DataError, match=r"bad\.csv:2"):
        csv_dataset(bad, None, CLASSES)
