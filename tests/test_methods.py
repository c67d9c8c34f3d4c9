"""Every merge method against a hand-computed tiny case and a plain dense reference (tests/reference.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as ref
from engine_fixtures import dense, space as make_space
from merging import ParameterError, TaskVectorSpace, run_merge
from merging import chunks
from merging.maskstats import mask_statistics
from merging.param_index import ParamEntry, ParamIndex


def tiny_space(taus, theta0=None):
    """A one-tensor space straight from a (T, P) tensor."""
    taus = torch.as_tensor(taus, dtype=torch.float32)
    T, P = taus.shape
    theta0 = torch.zeros(P) if theta0 is None else torch.as_tensor(theta0, dtype=torch.float32)
    index = ParamIndex([ParamEntry("w", (P,), 0, P, torch.float32, "block.00", "mlp.c_fc")])
    return TaskVectorSpace(index, {"__order__": ["w"]}, theta0, taus.clone(), [f"t{i}" for i in range(T)])


def merged(space, method, **params):
    result = run_merge(space, method, params)
    return space.theta0 + result.delta, result


close = dict(rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- hand-computed cases
def test_averaging_and_task_arithmetic_by_hand():
    sp = tiny_space([[1.0, -2.0, 0.0], [3.0, 2.0, 4.0]], theta0=[10.0, 10.0, 10.0])
    assert torch.equal(merged(sp, "averaging")[0], torch.tensor([12.0, 10.0, 12.0]))
    assert torch.allclose(merged(sp, "task_arithmetic", lam=0.5)[0], torch.tensor([12.0, 10.0, 12.0]))


def test_ties_by_hand():
    # P = 5, K = 40 → k = 5 − 2 = 3: keep |τ| ≥ 3rd smallest |τ| (3 kept per task with these values)
    taus = [[4.0, -1.0, 3.0, 0.5, -2.0],    # |τ| sorted 0.5 1 2 3 4 → thr 2 → keep 4, 3, −2
            [-5.0, 2.0, -1.0, 3.0, 0.1]]    # sorted 0.1 1 2 3 5 → thr 2 → keep −5, 2, 3
    sp = tiny_space(taus)
    # trimmed: t0 = [4, 0, 3, 0, −2], t1 = [−5, 2, 0, 3, 0]; Σ = [−1, 2, 3, 3, −2] → γ = [−, +, +, +, −]
    # dis-mean: [−5, 2, 3, 3, −2]; dis-sum same here (one agreeing task per entry)
    out, result = merged(sp, "ties", k=40, merge="mean", lam=1.0)
    assert torch.equal(out, torch.tensor([-5.0, 2.0, 3.0, 3.0, -2.0]))
    assert result.info["thresholds"] == [2.0, 2.0]
    assert torch.equal(result.masks["ties_trim"].get(0), torch.tensor([True, False, True, False, True]))
    # entry 0 has +4 and −5: a sign conflict; nothing else conflicts
    assert result.tables["sign_conflicts"]["sign_conflicts"].sum() == 1


def test_ties_majority_sign_breaks_ties():
    sp = tiny_space([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]])  # entry 0 sums to 0 → majority sign (+)
    out, _ = merged(sp, "ties", k=100, merge="sum", lam=1.0)
    assert torch.equal(out, torch.tensor([1.0, 4.0, 6.0]))


def test_tall_and_consensus_by_hand():
    taus = [[1.0, 0.1, 0.0], [1.0, -2.0, 0.5]]  # τMTL = [2, −1.9, 0.5]
    sp = tiny_space(taus)
    # λ = 0.6: t0: |1| > 0.6·|1| yes; |0.1| > 0.6·2 no; 0 > 0.18 no → [1, 0, 0]
    #          t1: |1| > 0.6 yes; 2 > 0.6·0.1 yes; 0.5 > 0 yes → [1, 1, 1]
    _, result = merged(sp, "tall", tall_lambda=0.6)
    assert result.masks["tall"].to_bool().tolist() == [[True, False, False], [True, True, True]]
    assert torch.allclose(result.task_delta(0), torch.tensor([2.0, 0.0, 0.0]))
    # consensus k = 2 keeps entry 0 only
    out, _ = merged(sp, "consensus", k=2, lam=1.0, tall_lambda=0.6)
    assert torch.allclose(out, torch.tensor([2.0, 0.0, 0.0]))


# ---------------------------------------------------------------- against the dense reference
@pytest.fixture(scope="module")
def sp():
    return make_space(T=4, seed=3)


@pytest.mark.parametrize("K,merge,lam", [(20, "mean", 1.0), (50, "sum", 0.3), (5, "mean", 2.0)])
def test_ties_matches_reference(sp, K, merge, lam):
    out, result = merged(sp, "ties", k=K, merge=merge, lam=lam)
    torch.testing.assert_close(out, ref.ties(sp.theta0, dense(sp), K, merge, lam), **close)
    assert torch.equal(result.masks["ties_trim"].to_bool(), ref.ties_merged(dense(sp), K, merge)[1])


@pytest.mark.parametrize("method,params", [("ties", {"merge": "mean"}), ("ties", {"merge": "sum", "k": 50}),
                                           ("dare", {"base": "ties", "p": 0.3}), ("dare", {}), ("tall", {}),
                                           ("tall", {"base": "ties"}),
                                           ("consensus", {}), ("pcb", {}), ("task_arithmetic", {}),
                                           ("averaging", {})])
def test_cpu_kernels_and_gpu_code_paths_identical(sp, monkeypatch, method, params):
    """The chunked numpy kernels (CPU) and the whole-tensor torch code (used on CUDA) give identical results."""
    fast = run_merge(sp, method, params)
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    plain = run_merge(sp, method, params)
    assert torch.equal(fast.delta, plain.delta)
    assert fast.masks.keys() == plain.masks.keys()
    for name in fast.masks:
        assert torch.equal(fast.masks[name].packed, plain.masks[name].packed)
        a, b = mask_statistics(fast.masks[name], sp.index), mask_statistics(plain.masks[name], sp.index)
        assert a.histogram.equals(b.histogram) and a.by_layer.equals(b.by_layer)
    for name in fast.tables:
        assert fast.tables[name].equals(plain.tables[name])


@pytest.mark.parametrize("base,rescale,generator", [("ta", "inverse", "philox"), ("ta", "l1", "philox"),
                                                    ("ties", "inverse", "philox"), ("ta", "inverse", "torch")])
def test_dare_matches_reference(sp, base, rescale, generator):
    out, result = merged(sp, "dare", p=0.5, seed=7, rescale=rescale, base=base, lam=0.4, generator=generator)
    dropped = torch.stack([ref.dare_dropped(tau, t, 0.5, 7, rescale, generator) for t, tau in enumerate(dense(sp))])
    expected = ref.ta(sp.theta0, dropped, 0.4) if base == "ta" else ref.ties(sp.theta0, dropped, 20, "mean", 0.4)
    torch.testing.assert_close(out, expected, **close)
    assert 0.4 < result.masks["dare_keep"].to_bool().float().mean() < 0.6


@pytest.mark.parametrize("threads", [1, 2])
def test_dare_philox_masks_cross_chunks_and_ignore_thread_count(threads):
    from merging.methods.dare import philox_keep_packed
    n = 3 * (1 << 18) + 13
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        packed = philox_keep_packed(n, 0.3, 11, 2)
    finally:
        torch.set_num_threads(before)
    keep = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool))
    assert torch.equal(keep, ref.dare_keep(n, 2, 0.3, 11))
    assert abs(float(keep.float().mean()) - 0.7) < 0.005


def test_dare_is_seeded(sp):
    a, _ = merged(sp, "dare", p=0.7, seed=1)
    b, _ = merged(sp, "dare", p=0.7, seed=1)
    c, _ = merged(sp, "dare", p=0.7, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("base", ["ta", "ties"])
def test_tall_and_consensus_match_reference(sp, base):
    lambdas = [0.2, 0.4, 0.6, 0.3]
    _, result = merged(sp, "tall", tall_lambda=lambdas, base=base)
    tau_mtl = dense(sp).sum(0) if base == "ta" else ref.ties_merged(dense(sp), 20, "sum")[0]
    masks = ref.tall_masks(dense(sp), tau_mtl, lambdas)
    assert torch.equal(result.masks["tall"].to_bool(), masks)
    for t in range(sp.T):
        torch.testing.assert_close(result.task_delta(t), masks[t] * tau_mtl, **close)
    out, _ = merged(sp, "consensus", k=2, lam=0.5, tall_lambda=lambdas, base=base)
    torch.testing.assert_close(out, ref.consensus(sp.theta0, dense(sp), 2, 0.5, lambdas, base), **close)


@pytest.mark.parametrize("r,q", [(0.05, 0.01), (0.2, 0.0), (0.5, 0.1)])
def test_pcb_matches_official_code_reference(sp, r, q):
    lams = [1.2, 0.8, 1.0, 1.3]
    out, result = merged(sp, "pcb", r=r, clip_q=q, lam=lams)
    expected, kept = ref.pcb(sp.theta0, dense(sp), r, q, lams)
    torch.testing.assert_close(out, expected, **close)
    assert torch.equal(result.masks["pcb_keep"].to_bool(), kept)


# ---------------------------------------------------------------- properties
taus_strategy = st.integers(1, 5).flatmap(lambda T: st.lists(
    st.lists(st.floats(-4, 4, width=32).filter(lambda v: abs(v) > 1e-3), min_size=12, max_size=12),
    min_size=T, max_size=T))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.floats(0.0625, 3, width=32), min_size=8, max_size=8), T=st.integers(1, 4),
       signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=8, max_size=8))
def test_ties_without_conflicts_is_disjoint_mean(rows, T, signs):
    """K = 100 and one sign per entry across tasks: TIES = mean of the nonzero entries."""
    mags = torch.tensor([rows] * T) * torch.arange(1, T + 1)[:, None]
    taus = mags * torch.tensor(signs)
    out, _ = merged(tiny_space(taus), "ties", k=100, merge="mean", lam=1.0)
    torch.testing.assert_close(out, taus.mean(0), **close)


@settings(max_examples=30, deadline=None)
@given(taus=taus_strategy)
def test_consensus_k0_is_ta_and_k_above_T_is_refused(taus):
    sp = tiny_space(taus, theta0=torch.linspace(-1, 1, 12))
    ta, _ = merged(sp, "task_arithmetic", lam=0.3)
    k0, _ = merged(sp, "consensus", k=0, lam=0.3)
    torch.testing.assert_close(k0, ta, **close)
    with pytest.raises(ParameterError, match=rf"^k: {sp.T + 1} is above the number of merged tasks \({sp.T}\)"):
        merged(sp, "consensus", k=sp.T + 1, lam=0.3)
    _, result = merged(sp, "consensus", k=sp.T, lam=0.3)  # keep mask: weights every task's TALL mask selects
    tall = torch.stack([result.masks["tall"].get(t) for t in range(sp.T)])
    kept = torch.stack([result.masks["consensus_keep"].get(t) for t in range(sp.T)])
    assert torch.equal(kept, tall & tall.all(0))


@settings(max_examples=30, deadline=None)
@given(taus=taus_strategy)
def test_tall_lambda0_reconstruction_is_theta0_plus_tau_mtl(taus):
    sp = tiny_space(taus)  # all entries nonzero, so |τt| > 0 everywhere
    _, result = merged(sp, "tall", tall_lambda=0.0)
    for t in range(sp.T):
        assert torch.equal(result.task_delta(t), sp.sum_tau())


@settings(max_examples=30, deadline=None)
@given(taus=taus_strategy, seed=st.integers(0, 100))
def test_dare_p0_is_task_arithmetic(taus, seed):
    sp = tiny_space(taus)
    dare, _ = merged(sp, "dare", p=0.0, seed=seed, lam=0.3)
    ta, _ = merged(sp, "task_arithmetic", lam=0.3)
    torch.testing.assert_close(dare, ta, **close)


@pytest.mark.parametrize("method", ["averaging", "task_arithmetic", "ties", "dare", "tall", "consensus", "pcb"])
def test_single_task_runs_and_maps_back(method):
    sp = make_space(T=1)
    result = run_merge(sp, method, {"k": 1} if method == "consensus" else {})  # the default k = 2 > T is refused
    state = sp.state_dict(result.task_delta(0))
    assert list(state) == sp.base["__order__"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert torch.equal(state["num_batches_tracked"], torch.tensor(7))
