"""PCB's pcb_ES.py inter-balancing variant against a plain reference; PCB + ES: seeded and reproducible, never
worse than λt = 1.0 on validation accuracy, its search table, the merge it returns, cancellation and bad input."""
import warnings

import pytest
import torch
from torch.func import functional_call
from tiny_data_context import cancelled_at_step_2, tiny_setup

import reference as ref
from engine_fixtures import dense, space as make_space
from merging import chunks, run_merge
from merging.functional import param_views

pytestmark = pytest.mark.usefixtures("one_thread")


ES = {"budget": 20}


@pytest.fixture(autouse=True)
def quiet_scipy():
    """NGOpt picks COBYLA for small budgets; scipy warns about its defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize("r,q", [(0.05, 0.01), (0.2, 0.0), (0.5, 0.1)])
def test_pcb_sum_tanh_variant_matches_reference(r, q):
    sp = make_space(T=4, seed=3)
    lams = [1.2, 0.8, 1.0, 1.3]
    result = run_merge(sp, "pcb", {"r": r, "clip_q": q, "lam": lams, "inter": "sum_tanh"})
    torch.testing.assert_close(sp.theta0 + result.delta, ref.pcb_sum_tanh(sp.theta0, dense(sp), r, q, lams),
                               rtol=1e-5, atol=1e-6)
    default = run_merge(sp, "pcb", {"r": r, "clip_q": q, "lam": lams})
    torch.testing.assert_close(sp.theta0 + default.delta, ref.pcb(sp.theta0, dense(sp), r, q, lams)[0],
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(default.delta, result.delta)


def test_pcb_sum_tanh_cpu_kernels_and_gpu_code_path_identical(monkeypatch):
    sp = make_space(T=3, seed=5)
    fast = run_merge(sp, "pcb", {"inter": "sum_tanh"})
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    plain = run_merge(sp, "pcb", {"inter": "sum_tanh"})
    assert torch.equal(fast.delta, plain.delta)
    assert torch.equal(fast.masks["pcb_keep"].packed, plain.masks["pcb_keep"].packed)


def mean_accuracy(space, context, delta):
    """Plain: mean over tasks of the top-1 accuracy of θ0 + δ on every labeled image of the context."""
    theta = space.theta0 + delta
    accuracies = []
    with torch.no_grad():
        for task in space.task_names:
            images, labels = zip(*[context.unlabeled[task][i] for i in range(len(context.unlabeled[task]))])
            features = functional_call(context.encoder, param_views(theta, space.index), (torch.stack(images),))
            logits = context.heads[task](features)
            accuracies.append(float((logits.argmax(-1) == torch.as_tensor(labels)).double().mean()))
    return sum(accuracies) / len(accuracies)


def test_seeded_reproducible_and_never_worse_than_lambda_one():
    sp, ctx = tiny_setup(scale=1.0)
    a = run_merge(sp, "pcb_es", ES, context=ctx)
    b = run_merge(sp, "pcb_es", ES, context=ctx)
    assert a.tables["search"].equals(b.tables["search"]) and torch.equal(a.delta, b.delta)
    search = a.tables["search"]
    assert list(search.columns) == ["step", "lam_a", "lam_b", "lam_c", "accuracy", "best_accuracy"]
    assert search["step"].tolist() == list(range(1, 21))
    assert search[["lam_a", "lam_b", "lam_c"]].iloc[0].tolist() == [1.0, 1.0, 1.0]  # the search starts at init
    assert ((search[["lam_a", "lam_b", "lam_c"]] >= 0.8) & (search[["lam_a", "lam_b", "lam_c"]] <= 1.3)).all().all()
    assert search["best_accuracy"].is_monotonic_increasing
    chosen = [a.info[f"lam_{t}"] for t in sp.task_names]
    pcb = run_merge(sp, "pcb", {"inter": "sum_tanh", "lam": chosen})
    torch.testing.assert_close(a.delta, pcb.delta, rtol=1e-5, atol=1e-6)  # the merge is PCB at the chosen λt
    at_one = mean_accuracy(sp, ctx, run_merge(sp, "pcb", {"inter": "sum_tanh", "lam": 1.0}).delta)
    assert a.info["val_accuracy"] == pytest.approx(mean_accuracy(sp, ctx, a.delta))
    assert a.info["val_accuracy"] >= at_one
    assert search["accuracy"].iloc[0] == pytest.approx(at_one)
    assert set(a.masks) == {"pcb_keep"}


def test_cancel_stops_the_search():
    cancelled_at_step_2("pcb_es", {"budget": 5})


def test_needs_labels_and_a_context():
    sp, ctx = tiny_setup(labels=False)
    with pytest.raises(ValueError, match="task 'a' have no labels"):
        run_merge(sp, "pcb_es", ES, context=ctx)
    with pytest.raises(ValueError, match="needs a model"):
        run_merge(sp, "pcb_es", ES)
    sp, ctx = tiny_setup()
    with pytest.raises(ValueError, match="lam_low ≤ lam_init ≤ lam_high"):
        run_merge(sp, "pcb_es", {**ES, "lam_init": 1.5}, context=ctx)


def test_images_over_the_memory_budget_are_read_per_evaluation(monkeypatch):
    """When the images do not fit the cache budget they are gathered again for every candidate: same search."""
    from merging.methods import pcb_es

    sp, ctx = tiny_setup(scale=1.0)
    cached = run_merge(sp, "pcb_es", {"budget": 5}, context=ctx)
    monkeypatch.setattr(pcb_es, "CACHE_BYTES", 0)
    streamed = run_merge(sp, "pcb_es", {"budget": 5}, context=ctx)
    assert cached.tables["search"].equals(streamed.tables["search"])
