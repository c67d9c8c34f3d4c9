"""AdaMerging: the O(P) weighted task sum and its gradient, one step, zero steps = TA, tables, cancellation."""
import pytest
import torch
from tiny_data_context import cancelled_at_step_2, tiny_setup

from merging import run_merge
from merging import functional as F
from merging.methods.adamerging import adamerging_step, batch_entropy
from merging.unlabeled import BatchStream, generator

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_sum(coefficients, space):
    """Straightforward (T, P): expand every coefficient over its tensor, multiply by the stack, sum tasks."""
    lengths = torch.tensor([e.numel for e in space.index.entries])
    if coefficients.shape[1] == 1:
        coefficients = coefficients.expand(-1, len(lengths))
    return (coefficients.repeat_interleave(lengths, dim=1) * space.stack).sum(0)


@pytest.mark.parametrize("width", ["layer", "task"])
def test_weighted_task_sum_and_gradient_match_a_dense_reference(width):
    space, _ = tiny_setup()
    g = torch.Generator().manual_seed(0)
    columns = len(space.index) if width == "layer" else 1
    coefficients = torch.rand(space.T, columns, generator=g)
    upstream = torch.randn(space.P, generator=g)
    fast = coefficients.clone().requires_grad_()
    dense = coefficients.clone().requires_grad_()
    out = F.weighted_task_sum(fast, space)
    ref = reference_sum(dense, space)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(fast.grad, dense.grad, rtol=1e-4, atol=1e-5)


def test_segment_sum_by_hand():
    space, _ = tiny_setup()
    values = torch.arange(space.P, dtype=torch.float32)
    expected = torch.tensor([values[e.slice].sum() for e in space.index.entries])
    torch.testing.assert_close(F.segment_sum(values, space.index), expected)


def test_weighted_task_sum_rejects_bad_shapes():
    space, _ = tiny_setup()
    with pytest.raises(ValueError, match="columns"):
        F.weighted_task_sum(torch.ones(space.T, 2), space)
    with pytest.raises(ValueError, match=r"\(T=3, E\)"):
        F.weighted_task_sum(torch.ones(2, 1), space)


def test_zero_steps_equals_task_arithmetic():
    space, ctx = tiny_setup()
    ta = run_merge(space, "task_arithmetic", {"lam": 0.3})
    for granularity in ("layer", "task"):
        ada = run_merge(space, "adamerging", {"steps": 0, "granularity": granularity}, context=ctx)
        torch.testing.assert_close(ada.delta, ta.delta, rtol=0, atol=1e-7)
        assert ada.tables["coefficients"]["coefficient"].tolist() == pytest.approx([0.3] * len(ada.tables["coefficients"]))


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_one_step_lowers_the_entropy(granularity):
    space, ctx = tiny_setup()
    streams = [BatchStream(t, ctx.unlabeled[t], 8, generator(0, i), space.device)
               for i, t in enumerate(space.task_names)]
    batches = [s.next() for s in streams for _ in range(2)]
    lengths = F.entry_lengths(space.index, space.device)

    def logits_fn(params, task, images):
        return F.logits(ctx.encoder, ctx.heads[task], params, images)

    def entropy(coefficients):
        theta = space.theta0 + F.weighted_task_sum(coefficients.detach(), space, lengths)
        return F.batch_pass(theta, space.index, batches, logits_fn, batch_entropy, with_grad=False)[0].total

    width = len(space.index) if granularity == "layer" else 1
    coefficients = torch.full((space.T, width), 0.3, requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=1e-3)
    before = entropy(coefficients)
    reported = adamerging_step(coefficients, optimizer, space, batches, logits_fn, lengths)
    assert reported.total == pytest.approx(before, rel=1e-5)
    assert entropy(coefficients) < before
    assert not torch.equal(coefficients.detach(), torch.full_like(coefficients, 0.3))


def test_coefficients_are_clamped_and_tabled():
    space, ctx = tiny_setup()
    result = run_merge(space, "adamerging", {"steps": 3, "lr": 0.5, "batch_size": 4}, context=ctx)
    table = result.tables["coefficients"]
    assert len(table) == space.T * len(space.index)
    assert list(table.columns) == ["task", "entry", "layer", "kind", "coefficient"]
    assert table["coefficient"].between(0.0, 1.0).all()
    assert ((table["coefficient"] == 0.0) | (table["coefficient"] == 1.0)).any()  # lr 0.5 hits the clamp
    assert table.loc[0, "entry"] == space.index.entries[0].name
    history = result.tables["history"]
    assert history["step"].tolist() == [1, 2, 3] and history["accuracy"].notna().all()
    # the returned merge is θ0 + Σ λ τ with the tabled coefficients
    coefficients = torch.tensor(table["coefficient"].to_numpy(), dtype=torch.float32).view(space.T, -1)
    torch.testing.assert_close(result.delta, reference_sum(coefficients, space), rtol=1e-5, atol=1e-6)
    task_wise = run_merge(space, "adamerging", {"steps": 1, "granularity": "task", "batch_size": 4}, context=ctx)
    assert task_wise.tables["coefficients"]["entry"].tolist() == ["(all)"] * space.T


def test_batch_pass_splits_losses_and_hits_per_task_by_hand():
    """Fixed logits per batch (the parameters unused): the per-task sums, batch counts and hits by hand."""
    space, _ = tiny_setup()
    from merging.unlabeled import Batch
    table = {"a": torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.0, 3.0], [5.0, 0.0]])}
    batches = [Batch("a", torch.zeros(2, 1), None, torch.tensor([0, 0])),   # hits 1, loss 2 + 0
               Batch("b", torch.zeros(2, 1), None, torch.tensor([1, 0])),   # hits 2, loss 3 + 0
               Batch("a", torch.zeros(2, 1), None, torch.tensor([1, 1])),   # hits 1, loss 2 + 0
               Batch("c", torch.zeros(2, 1), None, None)]                   # no labels
    logits_fn = lambda params, task, images: table.get(task, table["a"])  # noqa: E731
    loss_fn = lambda out, batch: out[:, 0].sum()  # noqa: E731
    stats, grad = F.batch_pass(space.theta0, space.index, batches, logits_fn, loss_fn, with_grad=False)
    assert grad is None
    assert stats.by_task == {"a": (4.0, 2, 2, 4), "b": (5.0, 1, 2, 2), "c": (2.0, 1, 0, 0)}
    assert (stats.total, stats.correct, stats.counted, stats.accuracy) == (11.0, 4, 6, 4 / 6)
    empty, _ = F.batch_pass(space.theta0, space.index, [], logits_fn, loss_fn, with_grad=False)
    assert (empty.total, empty.counted, empty.by_task, empty.accuracy) == (0.0, 0, {}, None)


def test_task_history_adds_up_to_the_objective_and_accuracy():
    space, ctx = tiny_setup()
    params = {"steps": 3, "batch_size": 4, "batches_per_task": 2}
    result = run_merge(space, "adamerging", params, context=ctx)
    per_task, history = result.tables["task_history"], result.tables["history"]
    assert list(per_task.columns) == ["step", "task", "entropy", "accuracy"]
    assert len(per_task) == 3 * space.T and set(per_task["task"]) == set(space.task_names)
    # the objective is Σ over every task's batches of the batch-mean entropy; the table holds each task's mean
    objective = (2 * per_task["entropy"]).groupby(per_task["step"]).sum()
    torch.testing.assert_close(torch.tensor(objective.to_numpy()), torch.tensor(history["entropy"].to_numpy()),
                               rtol=1e-5, atol=1e-6, check_dtype=False)
    accuracy = per_task["accuracy"].groupby(per_task["step"]).mean()  # every task has 2 × 4 labelled images
    assert accuracy.tolist() == pytest.approx(history["accuracy"].tolist())
    unlabeled = run_merge(space, "adamerging", {**params, "steps": 1}, context=tiny_setup(labels=False)[1])
    assert unlabeled.tables["task_history"]["accuracy"].isna().all()


def test_seeded_and_reproducible():
    space, ctx = tiny_setup(labels=False)
    messages = []
    params = {"steps": 2, "batch_size": 4, "seed": 3}
    first = run_merge(space, "adamerging", params, progress=lambda f, s: messages.append(s), context=ctx)
    second = run_merge(space, "adamerging", params, context=ctx)
    assert torch.equal(first.delta, second.delta)
    assert first.tables["history"]["accuracy"].isna().all()
    steps = [s for s in messages if "step" in s]
    assert len(steps) == 2 and all("entropy" in s and "acc" not in s for s in steps)


def test_cancellation_leaves_inputs_untouched():
    ctx = cancelled_at_step_2("adamerging", {"steps": 10, "batch_size": 4})
    assert ctx.encoder.training
