"""CALM: sampling, sequential framework, mask optimisation, zero-step reduction, cancellation (tiny open_clip ViT)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.func import functional_call
from tiny_data_context import (assert_untouched, cancelled_at_step_2,
                               snapshot, tiny_setup)

from merging import ParameterError, run_merge
from merging import functional as F
from merging.calm_masks import (AutoLr, apply_update, auto_lr, flip_margin, init_scores, mask_loss, mask_update,
                                 regulariser)
from merging.entropy_sampling import class_balanced_selection, prediction_entropy, sample_pseudo_labels
from merging.maskstats import mask_statistics
from merging.registry import get_method
from merging.methods.calm import default_order, parse_lr, parse_order, plan_groups, sequential_merge
from merging.unlabeled import BatchStream, generator

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = {"batch_size": 8, "lr": 1e3, "init_fraction": 0.01}


# ---------------------------------------------------------------- part 1: sampling
def test_prediction_entropy_matches_numpy():
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(1)) * 3
    x = logits.double().numpy()
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(prediction_entropy(logits).numpy(), -(p * np.log(p)).sum(1), rtol=1e-5, atol=1e-6)


def reference_selection(logits: torch.Tensor, ratio: float):
    """Straightforward per-class loop: sort members by (entropy, position), keep int(n_c · ratio)."""
    entropy = prediction_entropy(logits).tolist()
    predicted = logits.argmax(-1).tolist()
    kept = {}
    for c in set(predicted):
        members = sorted((entropy[i], i) for i in range(len(predicted)) if predicted[i] == c)
        for _, i in members[:int(len(members) * ratio)]:
            kept[i] = c
    return kept


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), classes=st.integers(1, 6), ratio=st.floats(0.05, 1.0), seed=st.integers(0, 10**6),
       quantised=st.booleans())
def test_class_balanced_selection_matches_reference(n, classes, ratio, seed, quantised):
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(seed)) * 2
    if quantised:  # exact entropy ties: ties go to the lower position
        logits = logits.round()
    positions, labels = class_balanced_selection(logits, ratio)
    kept = reference_selection(logits, ratio)
    assert positions.tolist() == sorted(kept)
    assert labels.tolist() == [kept[i] for i in sorted(kept)]
    predicted, entropy = logits.argmax(-1), prediction_entropy(logits)
    for c in predicted.unique().tolist():  # class balance and lowest entropy within each class
        members = (predicted == c).nonzero().squeeze(1)
        chosen = positions[labels == c]
        assert chosen.numel() == int(members.numel() * ratio)
        dropped = members[~torch.isin(members, chosen)]
        if chosen.numel() and dropped.numel():
            assert entropy[chosen].max() <= entropy[dropped].min()


def test_sample_pseudo_labels_maps_pool_positions_and_scores_them():
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0], [0.0, 4.0], [0.0, 0.3], [3.0, 0.0]])
    pool = torch.tensor([10, 11, 12, 13, 14])
    truth = torch.tensor([0, 1, 1, 0, 1])
    out = sample_pseudo_labels(logits, pool, 0.5, truth)
    # class 0: positions 0, 1, 4 (entropies low, high, mid) -> keep int(1.5) = 1: position 0; class 1: keep 1 of 2
    assert out.positions.tolist() == [10, 12] and out.targets.tolist() == [0, 1]
    assert out.pool == 5 and out.accuracy == 1.0
    assert sample_pseudo_labels(logits, pool, 1.0).accuracy is None
    with pytest.raises(ValueError, match="ratio"):
        class_balanced_selection(logits, 0.0)


# ---------------------------------------------------------------- part 2: sequential framework
def test_parse_order_and_default_rule():
    tasks = ["a", "b", "c", "d"]
    assert parse_order("", tasks) is None and parse_order(" c , a ", tasks) == ["c", "a"]
    with pytest.raises(ParameterError, match="unknown task"):
        parse_order("a,zz", tasks)
    with pytest.raises(ParameterError, match="twice"):
        parse_order("a,a", tasks)
    # the two most-disagreeing tasks, least first; ties resolved by task order
    assert default_order(tasks, [0.1, 0.5, 0.3, 0.5], 2) == ["b", "d"]
    assert default_order(tasks, [0.1, 0.5, 0.3, 0.4], 3) == ["c", "d", "b"]


def test_sequential_merge_by_hand():
    space, _ = tiny_setup(tasks=("a", "b", "c"))
    g = torch.Generator().manual_seed(3)
    m_b, m_c = (torch.rand(space.P, generator=g) < 0.3 for _ in range(2))
    tau = [space.tau(t) for t in range(3)]
    expected = 0.3 * tau[0]
    expected = torch.where(m_b, tau[1], expected)
    expected = torch.where(m_c, tau[2], expected)
    assert torch.equal(sequential_merge(space, ["a"], ["b", "c"], [m_b, m_c], 0.3), expected)
    # no first group: the first sequential task starts from zero
    assert torch.equal(sequential_merge(space, [], ["c"], [m_c], 0.3), torch.where(m_c, tau[2], 0.0))


# ---------------------------------------------------------------- part 3: mask optimisation
def test_init_scores_top_fraction():
    tau = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    scores = init_scores(tau, 0.013, 5.0)
    top = torch.topk(tau.abs(), 13).indices
    expected = torch.full((1000,), -5.0)
    expected[top] = 5.0
    assert torch.equal(scores, expected)
    assert torch.equal(init_scores(tau, 1e-5, 5.0), torch.full((1000,), -5.0))  # ⌊1000·1e-5⌋ = 0 on
    assert torch.equal(init_scores(tau, 1e-5, 5.0, "official"), torch.full((1000,), -5.0))


def test_init_rules_at_the_threshold_by_hand():
    """k = ⌊0.5·4⌋ = 2, 2nd largest |τ| = 0.4: top_k turns on |τ| ≥ 0.4, official only |τ| > 0.4; with a tie at
    the threshold top_k keeps both and official neither."""
    on, off = 2.0, -2.0
    tau = torch.tensor([0.1, -0.5, 0.4, 0.3])
    assert init_scores(tau, 0.5, 2.0, "top_k").tolist() == [off, on, on, off]
    assert init_scores(tau, 0.5, 2.0, "official").tolist() == [off, on, off, off]
    tied = torch.tensor([0.1, -0.5, 0.5, 0.3, -0.2])  # k = 2, threshold 0.5 shared by two
    assert init_scores(tied, 0.4, 2.0, "top_k").tolist() == [off, on, on, off, off]
    assert init_scores(tied, 0.4, 2.0, "official").tolist() == [off] * 5
    with pytest.raises(ValueError, match="init_rule"):
        init_scores(tau, 0.5, 2.0, "paper")


# ---------------------------------------------------------------- update rule: L1 forms and the auto lr
def _sigmoid_derivative(x: float) -> float:
    return math.exp(-x) / (1.0 + math.exp(-x)) ** 2


@pytest.mark.parametrize("form", ["gradient", "official"])
def test_apply_update_by_hand(form):
    """S −= lr·u·σ'(S) + sparsity·r(S)·σ'(S); official: ``p -= g·σ' − l1·where(p > 0, σ', −σ')``."""
    scores, u = [-2.0, 0.0, 3.0], [0.5, -1.0, 2.0]
    lr, sparsity = 2.0, 0.5
    expected = []
    for s, g in zip(scores, u):
        d = _sigmoid_derivative(s)
        if form == "gradient":
            expected.append(s - (lr * g + sparsity) * d)
        else:  # a literal transcription of the official update
            reg = sparsity * (d if s > 0 else -d)
            expected.append(s - (lr * g * d - reg))
    got = torch.tensor(scores)
    apply_update(got, torch.tensor(u), sparsity, lr, form)
    np.testing.assert_allclose(got.tolist(), expected, rtol=1e-6)
    # the official form moves an "on" score up, the gradient form down, when u = 0
    on = torch.tensor([3.0])
    apply_update(on, torch.zeros(1), 1.0, 1.0, form)
    assert (float(on) > 3.0) == (form == "official")


@pytest.mark.parametrize("form", ["gradient", "official"])
def test_regulariser_is_the_potential_of_the_l1_step(form):
    """The L1 part of the step equals lr·∂(regulariser)/∂S (autograd, away from S = 0)."""
    scores = torch.tensor([-3.0, -0.5, 0.7, 4.0], requires_grad=True)
    lr, sparsity = 3.0, 0.25
    sig = torch.sigmoid(scores)
    weights = torch.ones(4) if form == "gradient" else torch.where(scores > 0, -1.0, 1.0)
    (sparsity / lr * (weights * sig).sum()).backward()
    stepped = scores.detach().clone()
    apply_update(stepped, torch.zeros(4), sparsity, lr, form)
    torch.testing.assert_close(stepped, scores.detach() - lr * scores.grad)
    expected = float(sparsity / lr * (weights * sig.detach()).sum())
    assert regulariser(scores.detach(), sparsity, lr, form) == pytest.approx(expected)


def test_flip_margin_by_hand_and_by_integration():
    assert flip_margin(0.0) == 0.0
    assert flip_margin(math.log(2)) == pytest.approx(2 - 0.5 + 2 * math.log(2))
    assert flip_margin(5.0) == pytest.approx(math.exp(5) - math.exp(-5) + 10)
    # Euler steps of dS = drive·σ'(S) from −5: the summed drive when S reaches 0 is M(5)
    s, total, h = -5.0, 0.0, 1e-3
    while s < 0:
        s += h * _sigmoid_derivative(s)
        total += h
    assert total == pytest.approx(flip_margin(5.0), rel=1e-4)


def test_auto_lr_by_hand():
    """drive = u on the on scores, −u on the off ones: [4, 1, −2, 3]; fraction 0.5 → k = 2 → a_q = 3."""
    scores = torch.tensor([-5.0, -5.0, -5.0, 5.0])
    u = torch.tensor([-4.0, -1.0, 2.0, 3.0])
    assert auto_lr(u, scores, 5.0, 0.5, 10, 1.0) == pytest.approx((flip_margin(5.0) / 10 + 1.0) / 3.0)
    assert auto_lr(u, scores, 5.0, 0.25, 10, 0.0) == pytest.approx(flip_margin(5.0) / 10 / 4.0)  # k = 1 → 4
    assert auto_lr(u, scores, 5.0, 0.3, 10, 0.0) == pytest.approx(flip_margin(5.0) / 10 / 3.0)  # k = ⌈1.2⌉ = 2
    with pytest.raises(ValueError, match="lr auto"):  # only three of the four scores are driven towards zero
        auto_lr(u, scores, 5.0, 1.0, 10, 0.0)
    with pytest.raises(ValueError, match="lr_fraction"):
        auto_lr(u, scores, 5.0, 0.0, 10, 0.0)


@pytest.mark.parametrize("form", ["gradient", "official"])
def test_auto_lr_flips_the_top_fraction_within_the_schedule(form):
    """With the first update's u held constant, the off scores with a drive above a_q cross zero within the
    schedule, those below do not (small steps: the schedule's n updates approach the continuous rule)."""
    n, logit, sparsity = 4000, 3.0, 0.5
    drive = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.02, 0.98, 0.5, -1.0])  # fraction 5/8: a_q = 5th largest = 1.0
    scores = torch.full((8,), -logit)
    lr = auto_lr(-drive, scores, logit, 5 / 8, n, sparsity)  # off scores: drive = −u
    for _ in range(n):
        apply_update(scores, -drive.clone(), sparsity, lr, form)
    flipped = (scores > 0).tolist()
    assert flipped[:3] + flipped[4:] == [True, True, True, True, False, False, False]
    assert abs(float(scores[3])) < 0.05  # the drive a_q arrives at zero at the end of the schedule


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-6, 1e6), fraction=st.floats(0.005, 0.3), seed=st.integers(0, 10**6),
       sparsity=st.floats(0.0, 2.0))
def test_auto_lr_is_scale_free(scale, fraction, seed, sparsity):
    """Rescaling the loss rescales u; the auto lr rescales inversely and the update is the same."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(200, generator=g, dtype=torch.float64)
    scores = torch.where(torch.rand(200, generator=g) < 0.05, 5.0, -5.0).double()
    lr = auto_lr(u, scores, 5.0, fraction, 100, sparsity)
    lr_scaled = auto_lr(u * scale, scores, 5.0, fraction, 100, sparsity)
    assert lr_scaled * scale == pytest.approx(lr, rel=1e-9)
    one, other = scores.clone(), scores.clone()
    apply_update(one, u.clone(), sparsity, lr, "gradient")
    apply_update(other, u * scale, sparsity, lr_scaled, "gradient")
    torch.testing.assert_close(one, other, rtol=1e-9, atol=1e-12)


def test_parse_lr_and_plan_groups():
    spec = get_method("calm").param("lr")
    assert parse_lr(spec.coerce("auto")) is None and parse_lr(spec.coerce(" AUTO ")) is None
    assert parse_lr(spec.coerce("1e7")) == 1e7
    for bad in ("fast", "0", "-1", "nan", "inf", ""):
        with pytest.raises(ParameterError, match="lr: expected 'auto' or a"):
            parse_lr(spec.coerce(bad))
    assert plan_groups(["a", "b", "c"], ["d"], "official", 0.3) == (["a", "b", "c"], ["d"], 0.3)
    assert plan_groups(["a", "b"], ["d"], "official", 0.3) == (["a"], ["b", "d"], 1.0)
    assert plan_groups(["a"], ["d"], "official", 0.3) == (["a"], ["d"], 1.0)
    assert plan_groups([], ["d"], "official", 0.3) == ([], ["d"], 0.3)
    assert plan_groups(["a", "b"], ["d"], "ta", 0.3) == (["a", "b"], ["d"], 0.3)


def _stage_inputs(seed=0):
    space, ctx = tiny_setup(seed=seed)
    tau_seq = 0.3 * space.tau(0)
    base, diff = space.theta0 + tau_seq, space.tau(1) - tau_seq
    streams = {t: BatchStream(t, ctx.unlabeled[t], 8, generator(0, i), space.device,
                              targets=torch.randint(3, (24,), generator=generator(1, i)))
               for i, t in enumerate(space.task_names[:2])}
    batches = [streams[t].next() for t in space.task_names[:2] for _ in range(2)]

    def logits_fn(params, task, images):
        return F.logits(ctx.encoder, ctx.heads[task], params, images)
    return space, ctx, base, diff, batches, logits_fn


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_one_mask_update_lowers_the_loss(sparsity):
    space, ctx, base, diff, batches, logits_fn = _stage_inputs()
    scores = torch.randn(space.P, generator=torch.Generator().manual_seed(0))
    lr = 20.0
    before = mask_loss(scores, base, diff, space.index, batches, logits_fn, sparsity, lr)
    reported, used = mask_update(scores, base, diff, space.index, batches, logits_fn, sparsity, lr)
    after = mask_loss(scores, base, diff, space.index, batches, logits_fn, sparsity, lr)
    assert reported.loss == pytest.approx(before.loss, rel=1e-5) and used == lr
    assert after.loss < before.loss - 1e-4


def test_mask_update_is_gradient_descent_on_the_stated_loss():
    """The hand-written chain rule equals autograd through θ(S) = base + σ(S)⊙diff and a per-batch loss."""
    space, ctx, base, diff, batches, logits_fn = _stage_inputs(seed=1)
    scores = torch.randn(space.P, generator=torch.Generator().manual_seed(1))
    lr, sparsity = 7.0, 0.5
    s = scores.clone().requires_grad_()
    theta = base + torch.sigmoid(s) * diff
    params = {e.name: theta[e.slice].view(e.shape) for e in space.index.entries}
    loss = sum(torch.nn.functional.cross_entropy(ctx.heads[b.task](functional_call(ctx.encoder, params, (b.images,))),
                                                 b.targets) for b in batches)
    loss = loss + sparsity / lr * torch.sigmoid(s).sum()
    loss.backward()
    mask_update(scores, base, diff, space.index, batches, logits_fn, sparsity, lr)
    torch.testing.assert_close(scores, s.detach() - lr * s.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- the method
@pytest.mark.parametrize("rules", [("ta", "top_k"), ("official", "official")])
def test_zero_steps_reduces_to_the_initialisation(rules):
    """One-task first group: λ τb ("ta") or τb unscaled ("official"); masks: the k largest |τ| (top_k) or
    |τ| above the k-th largest (official: the k − 1 largest, the magnitudes having no ties)."""
    first_group, init_rule = rules
    space, ctx = tiny_setup()
    result = run_merge(space, "calm", {**FAST, "steps": 0, "order": "c,a", "first_group": first_group,
                                       "init_rule": init_rule}, context=ctx)
    tau = {t: space.tau(i) for i, t in enumerate(space.task_names)}
    k = math.floor(0.01 * space.P)
    expected, masks = (0.3 if first_group == "ta" else 1.0) * tau["b"], []
    for task in ("c", "a"):
        mask = torch.zeros(space.P, dtype=torch.bool)
        mask[torch.topk(tau[task].abs(), k if init_rule == "top_k" else k - 1).indices] = True
        masks.append(mask)
        expected = torch.where(mask, tau[task], expected)
    assert torch.equal(result.delta, expected)
    calm_masks = result.masks["calm"]
    assert calm_masks.kind == "calm" and calm_masks.task_names == ["c", "a"]
    assert all(torch.equal(calm_masks.get(j), masks[j]) for j in range(2))
    assert result.info["first_group"] == ["b"] and result.info["order"] == ["c", "a"]
    assert result.tables["history"].empty and list(result.tables["stages"]["stage"]) == [0, 1, 2]
    assert result.info["first_coef"] == (0.3 if first_group == "ta" else 1.0)


def test_official_first_group_of_two_merges_the_second_by_a_mask():
    """Tasks a, b, c, order c: official → a unscaled, then b and c through masks; "ta" → 0.3 (τa + τb), then c."""
    space, ctx = tiny_setup()
    params = {**FAST, "steps": 0, "order": "c", "init_rule": "top_k"}
    tau = [space.tau(t) for t in range(3)]
    k = math.floor(0.01 * space.P)

    def init_mask(t):
        mask = torch.zeros(space.P, dtype=torch.bool)
        mask[torch.topk(tau[t].abs(), k).indices] = True
        return mask
    official = run_merge(space, "calm", {**params, "first_group": "official"}, context=ctx)
    assert official.info["first_group"] == ["a"] and official.info["order"] == ["b", "c"]
    assert torch.equal(official.delta, torch.where(init_mask(2), tau[2], torch.where(init_mask(1), tau[1], tau[0])))
    ta = run_merge(space, "calm", {**params, "first_group": "ta"}, context=ctx)
    assert ta.info["first_group"] == ["a", "b"] and ta.info["order"] == ["c"]
    assert torch.equal(ta.delta, torch.where(init_mask(2), tau[2], 0.3 * (tau[0] + tau[1])))
    # no sequential task: official takes one task unscaled, "ta" scales it (no data needed)
    one, one_ctx = tiny_setup(tasks=("a",))
    assert torch.equal(run_merge(one, "calm", {"first_group": "official"}, context=one_ctx).delta, one.tau(0))
    assert torch.equal(run_merge(one, "calm", {"first_group": "ta"}, context=one_ctx).delta, 0.3 * one.tau(0))


def test_auto_lr_is_the_lr_the_stage_used():
    """lr "auto" reports its rate per stage; that number given as lr gives the same merge."""
    space, ctx = tiny_setup(tasks=("a", "b"))
    params = {**FAST, "steps": 2, "order": "b", "lr": "auto", "lr_fraction": 0.05}
    auto = run_merge(space, "calm", params, context=ctx)
    rates = auto.info["lr"]
    assert len(rates) == 1 and rates[0] > 0 and auto.tables["stages"]["lr"].tolist()[1:] == rates
    fixed = run_merge(space, "calm", {**params, "lr": repr(rates[0])}, context=ctx)
    assert torch.equal(fixed.delta, auto.delta) and auto.tables["stages"]["mask_on"].iloc[1] > 0
    with pytest.raises(ParameterError, match="lr: expected"):
        run_merge(space, "calm", {**FAST, "lr": "fast", "order": "b"}, context=ctx)


def test_masks_are_binary_and_feed_mask_statistics():
    space, ctx = tiny_setup()
    result = run_merge(space, "calm", {**FAST, "steps": 2, "order": "b,c"}, context=ctx)
    masks = result.masks["calm"]
    dense = masks.to_bool()
    assert dense.dtype == torch.bool and dense.shape == (2, space.P)
    assert (dense[0] != (torch.zeros(space.P, dtype=torch.bool))).any()
    # θ = θ0 + τseq with exactly these binary masks
    assert torch.equal(result.delta, sequential_merge(space, ["a"], ["b", "c"], list(dense), 1.0))
    stats = mask_statistics(masks, space.index)
    assert stats.density["active"].tolist() == dense.sum(1).tolist()
    stages = result.tables["stages"]
    assert stages["mask_on"].tolist()[1:] == dense.sum(1).tolist()
    assert len(result.tables["history"]) == 4 and result.tables["history"]["accuracy"].notna().all()


@pytest.mark.parametrize("first_group", ["ta", "official"])
def test_default_rule_picks_the_tasks_the_ta_merge_changes_most(first_group):
    space, ctx = tiny_setup(tasks=("a", "b", "c", "d"), scale=0.3)
    result = run_merge(space, "calm", {**FAST, "steps": 0, "num_sequential": 2, "first_group": first_group},
                       context=ctx)
    sampling = result.tables["sampling"].set_index("task")
    rate = sampling["ta_disagreement"]
    assert result.info["rule"] == "disagreement"
    chosen = default_order(space.task_names, [rate[t] for t in space.task_names], 2)
    rest = [t for t in space.task_names if t not in chosen]  # official: of a group of two, the second is masked
    assert result.info["order"] == (chosen if first_group == "ta" else rest[1:] + chosen)
    assert sorted(result.info["first_group"] + result.info["order"]) == space.task_names
    assert (sampling["kept"] <= sampling["looked_at"]).all()


def test_progress_reports_loss_and_accuracy_only_with_labels():
    for labels in (True, False):
        space, ctx = tiny_setup(labels=labels)
        messages = []
        run_merge(space, "calm", {**FAST, "steps": 1, "order": "c"}, progress=lambda f, s: messages.append((f, s)),
                  context=ctx)
        steps = [s for _, s in messages if "step 1/1" in s]
        assert len(steps) == 2 and all("loss" in s and ("acc" in s) == labels for s in steps)  # b (official), c
        fractions = [f for f, _ in messages]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_seeded_and_reproducible():
    space, ctx = tiny_setup()
    params = {**FAST, "steps": 2, "order": "c", "max_unlabeled": 16, "seed": 5}
    first = run_merge(space, "calm", params, context=ctx)
    second = run_merge(space, "calm", params, context=ctx)
    assert torch.equal(first.delta, second.delta)
    assert first.tables["history"]["loss"].tolist() == second.tables["history"]["loss"].tolist()
    assert (first.tables["sampling"]["looked_at"] == 16).all()


def test_cancellation_leaves_inputs_untouched():
    ctx = cancelled_at_step_2("calm", {**FAST, "steps": 5, "order": "b,c"})
    assert ctx.encoder.training and all(h.training for h in ctx.heads.values())


def test_bad_context_and_parameters_are_named():
    space, ctx = tiny_setup()
    with pytest.raises(ValueError, match="needs a model"):
        run_merge(space, "calm", {"order": "b"})
    with pytest.raises(ParameterError, match="unknown task"):
        run_merge(space, "calm", {"order": "b,zz"}, context=ctx)
    with pytest.raises(ParameterError, match="pseudo_model"):
        run_merge(space, "calm", {"pseudo_model": "oracle"}, context=ctx)
    del ctx.heads["c"]
    with pytest.raises(ValueError, match="no classification head for task 'c'"):
        run_merge(space, "calm", {**FAST, "order": "b"}, context=ctx)
    other, other_ctx = tiny_setup()
    other_ctx.encoder = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="does not match the task-vector space"):
        run_merge(other, "calm", {**FAST, "order": "b"}, context=other_ctx)


def test_pseudo_labels_come_from_the_chosen_model():
    space, ctx = tiny_setup(scale=0.5)
    flats = {"pretrained": lambda t: space.theta0, "finetuned": lambda t: space.theta0 + space.tau(t),
             "ta": lambda t: space.theta0 + 0.3 * space.sum_tau()}
    seen = set()
    for kind, flat in flats.items():
        table = run_merge(space, "calm", {**FAST, "steps": 0, "order": "b", "pseudo_model": kind},
                          context=ctx).tables["sampling"]
        expected = []
        for t, task in enumerate(space.task_names):
            data = ctx.unlabeled[task]
            images = torch.stack([data[i][0] for i in range(len(data))])
            labels = torch.tensor([int(data[i][1]) for i in range(len(data))])
            with torch.no_grad():
                logits = F.logits(ctx.encoder, ctx.heads[task], F.param_views(flat(t), space.index), images)
            kept, targets = class_balanced_selection(logits, 0.9)
            expected.append((kept.numel(), float((labels[kept] == targets).float().mean())))
        got = list(zip(table["kept"], table["pseudo_label_accuracy"]))
        assert [k for k, _ in got] == [k for k, _ in expected]
        np.testing.assert_allclose([a for _, a in got], [a for _, a in expected])
        seen.add(tuple(a for _, a in got))
    assert len(seen) > 1  # the three models label differently


def test_in_memory_caches_the_positions_when_they_fit():
    from tiny_data_context import TupleDataset

    from merging.unlabeled import in_memory

    images, labels = torch.randn(10, 3, 4, 4), torch.arange(10)
    data = TupleDataset(images, labels)
    positions = torch.tensor([7, 2, 5])
    cached, new = in_memory(data, positions, budget=3 * 3 * 16 * 4, batch_size=2)
    assert new.tolist() == [0, 1, 2]
    assert torch.equal(cached.tensors[0], images[positions]) and torch.equal(cached.tensors[1], labels[positions])
    same, kept = in_memory(data, positions, budget=3 * 3 * 16 * 4 - 1)
    assert same is data and kept is positions
    unlabeled, _ = in_memory(TupleDataset(images, -torch.ones(10, dtype=torch.long)), positions, budget=1 << 20)
    assert len(unlabeled.tensors) == 1  # unknown labels (< 0) are dropped


def test_calm_and_adamerging_run_on_a_zoo_data_context(tmp_path):
    """End to end through a zoo on disk: ImageFolder and CSV splits, weight and zero-shot heads, evaluation."""
    from ck_tiny_zoo import make_tiny_zoo

    from merging.evaluation import evaluate_result
    from merging.zoo import load_zoo

    zoo = load_zoo(make_tiny_zoo(tmp_path, n_tasks=3, n_per_class=4))
    space = zoo.build_space(device="cpu")
    context = zoo.data_context(split="val", device="cpu", batch_size=8)
    before = snapshot(space, context)
    calm = run_merge(space, "calm", {"steps": 2, "batch_size": 6, "num_sequential": 1,  # official: 2 stages
                                     "init_fraction": 0.01}, context=context)
    ada = run_merge(space, "adamerging", {"steps": 2, "batch_size": 6}, context=context)
    assert_untouched(space, context, before)
    assert len(calm.info["order"]) == 2 and calm.tables["sampling"]["pseudo_label_accuracy"].notna().all()
    for result in (calm, ada):
        table = evaluate_result(zoo, space, result, split="test", device="cpu")
        assert table["accuracy"].between(0, 1).all() and len(table) == 3
