"""The compiled chunk kernels (merging/kernels.py) against plain numpy written from their definitions, bit for bit:
packed bits, the selection bracket, TALL masks and the Consensus filter, numpy's float64 pairwise sums, and EMR's
rescalers end to end."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from engine_fixtures import space as make_space
from merging import TaskVectorSpace, chunks, kernels, run_merge
from merging.methods import emr
from merging.param_index import ParamEntry, ParamIndex

floats = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, 3e38, float("inf"), -float("inf")]) | \
    st.floats(-1e6, 1e6, width=32)


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=70))
def test_pack_is_numpy_packbits(flags):
    flags = np.array(flags, dtype=np.uint8)
    row = np.full((flags.size + 7) // 8, 0xAA, dtype=np.uint8)
    kernels.pack(flags, row)
    assert np.array_equal(row, np.packbits(flags))


@settings(max_examples=150, deadline=None)
@given(data=st.lists(floats, min_size=2, max_size=200), picks=st.tuples(st.floats(0, 1), st.floats(0, 1)),
       absolute=st.booleans())
def test_bracket_counts_and_gathers_as_numpy(data, picks, absolute):
    x = np.array(data, dtype=np.float32)
    v = np.abs(x) if absolute else x
    ordered = np.unique(v)
    if ordered.size < 2:
        return
    i, j = sorted(int(p * (ordered.size - 1)) for p in picks)
    lo, hi = ordered[min(i, ordered.size - 2)], ordered[max(j, min(i, ordered.size - 2) + 1)]
    below, on_lo, on_hi, inside = kernels.bracket(x, lo, hi, absolute)
    assert (below, on_lo, on_hi) == (np.sum(v < lo), np.sum(v == lo), np.sum(v == hi))
    assert np.array_equal(inside.view(np.int32), v[(v > lo) & (v < hi)].view(np.int32))


def tied_values(rng, shape):
    """float32 draws from few values (ties, ±0) mixed with normal ones."""
    few = np.array([0.0, -0.0, 0.25, -0.5, 1.0, 1.5, -2.0], dtype=np.float32)
    normal = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < 0.5, rng.choice(few, shape), normal)


spans = st.integers(1, 5000)  # odd sizes, across kernels.BLOCK (2048)


@settings(max_examples=60, deadline=None)
@given(n=spans, T=st.integers(1, 9), seed=st.integers(0, 2**31), cut=st.floats(0, 1))
def test_tall_bits_are_the_definition(n, T, seed, cut):
    """mu = 1{|τu| > λu·|τMTL − τu|} in float32, packed as numpy; rows in any order, two chunks split at a byte
    boundary; λ = 0, 1 and τMTL = 2τu, = τu make ties on the threshold."""
    rng = np.random.default_rng(seed)
    stack = tied_values(rng, (T + 2, n))
    rows = rng.permutation(T + 2)[:T].astype(np.int64)
    mtl = tied_values(rng, n)
    mtl[::3], mtl[1::3] = 2 * stack[rows[0], ::3], stack[rows[-1], 1::3]
    lambdas = rng.choice(np.array([0.0, 0.3, 0.6, 1.0, 2.0], dtype=np.float32), T)
    masks = np.full((T, (n + 7) // 8), 0xAA, dtype=np.uint8)
    split = int(cut * n) // 8 * 8
    for a, b in ((0, split), (split, n)):
        kernels.tall_bits(stack, rows, lambdas, mtl[a:b], a, b, masks)
    taus = stack[rows]
    expected = np.abs(taus) > np.abs(mtl - taus) * lambdas[:, None]
    assert np.array_equal(masks, np.packbits(expected, axis=1))


@settings(max_examples=60, deadline=None)
@given(n=spans, T=st.sampled_from([1, 2, 3, 4, 7, 8, 9, 15, 16, 300]), seed=st.integers(0, 2**31),
       k=st.integers(0, 302), density=st.floats(0, 1), factor=st.sampled_from([0.3, -0.7, 1.0, 0.0]),
       cut=st.floats(0, 1))
def test_consensus_keep_is_the_definition(n, T, seed, k, density, factor, cut):
    """c = Σu mu, keep = c ≥ k (k above T too), kept = m ∧ keep packed as numpy, vector = (vector where keep, else
    +0)·λ bit for bit (−0 where λ < 0), the kept count; two chunks split at a byte boundary."""
    rng = np.random.default_rng(seed)
    bits = rng.random((T, n)) < density
    masks = np.packbits(bits, axis=1)
    vector = tied_values(rng, n)
    keep = bits.sum(0) >= k
    expected = np.where(keep, vector, np.float32(0)) * np.float32(factor)
    kept = np.full_like(masks, 0xAA)
    split = int(cut * n) // 8 * 8
    total = sum(kernels.consensus_keep(masks, k, np.float32(factor), a, b, kept, vector[a:b])
                for a, b in ((0, split), (split, n)))
    assert total == np.count_nonzero(keep)
    assert np.array_equal(kept, np.packbits(bits & keep, axis=1))
    assert np.array_equal(vector.view(np.int32), expected.view(np.int32))


def odd_space(T: int, P: int = 5001) -> TaskVectorSpace:
    """A one-tensor space of P (odd) tied values, without −0 (where Σt τt's CPU path keeps −0 the torch one adds it to
    +0)."""
    taus = torch.from_numpy(tied_values(np.random.default_rng(T), (T, P)) + np.float32(0))
    index = ParamIndex([ParamEntry("w", (P,), 0, P, torch.float32, "block.00", "mlp.c_fc")])
    return TaskVectorSpace(index, {"__order__": ["w"]}, torch.zeros(P), taus, [f"t{i}" for i in range(T)])


@pytest.mark.parametrize("view", ["stack", "subset", "bfloat16"])
@pytest.mark.parametrize("T", [1, 5, 8])
def test_tall_and_consensus_kernels_equal_the_torch_path(monkeypatch, view, T):
    """TALL masks, kept masks, vector and count of the kernels (every task per chunk, or one task per pass where
    the τt are not float32 views of the stack) are the torch path's bits, for k = 0 … T."""
    sp = odd_space(T + 1)
    sp = {"stack": sp.subset(list(range(T))), "subset": sp.subset(list(range(T, 0, -1))),
          "bfloat16": TaskVectorSpace(sp.index, sp.base, sp.theta0, sp.stack[:T].to(torch.bfloat16),
                                      sp.task_names[:T])}[view]
    monkeypatch.setattr(chunks, "CHUNK", 1024)
    lambdas = [0.2 + 0.15 * t for t in range(T)]
    for k in range(T + 1):
        params = {"k": k, "lam": 0.7, "tall_lambda": lambdas}
        monkeypatch.setattr(chunks, "NUMPY_KERNELS", True)
        fast = run_merge(sp, "consensus", params)
        monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
        plain = run_merge(sp, "consensus", params)
        assert torch.equal(fast.delta.view(torch.int32), plain.delta.view(torch.int32))
        assert fast.info == plain.info
        for name in ("tall", "consensus_keep"):
            assert torch.equal(fast.masks[name].packed, plain.masks[name].packed)


sizes = st.integers(1, 1200)


@settings(max_examples=80, deadline=None)
@given(n=sizes, seed=st.integers(0, 2**31), parts=st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_segment_sums_are_numpys_float64_reduceat(n, seed, parts):
    """Both summands of EMR (|x| and x·mask) summed exactly as np.add.reduceat(…, dtype=float64): blocks of < 8,
    ≤ 128 (8 accumulators) and halves above, empty and one-element segments included."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.standard_exponential(n) ** 4).astype(np.float32)
    x[rng.random(n) < 0.2] = 0.0
    mask = (rng.random(n) < 0.6).astype(np.uint8)
    cuts = np.array(sorted({0} | {int(p * (n - 1)) for p in parts}) + [int(parts[0] * (n - 1))], dtype=np.int64)
    cuts.sort()  # a repeated cut is an empty segment: reduceat gives the value at it
    for mask_or_none, values in ((None, np.abs(x)), (mask, np.abs(x) * mask)):
        out = np.empty(cuts.size)
        kernels.segment_sums(np.abs(x) if mask_or_none is not None else x, mask_or_none, cuts, out)
        assert np.array_equal(out.view(np.int64), np.add.reduceat(values, cuts, dtype=np.float64).view(np.int64))


def numpy_emr_rescalers(sp, chunk):
    """λt from the definition with numpy: per chunk of the vector, float64 reduceat of |τt| and |Mt ⊙ τuni| over
    the entries' parts in it, added over chunks in order; then Σ_e (mean) ratios."""
    taus = np.stack([sp.tau(t).numpy() for t in range(sp.T)])
    total = taus[0].copy()
    for tau in taus[1:]:  # rows added in task order, as Σt τt is defined
        total += tau
    positive = total > 0
    masks = np.where(positive, taus > 0, taus < 0)
    uni = (np.abs(taus) * masks).max(0)
    starts = np.array([e.offset for e in sp.index.entries])
    numer, denom = np.zeros((sp.T, len(starts))), np.zeros((sp.T, len(starts)))
    for a in range(0, sp.P, chunk):
        b = min(a + chunk, sp.P)
        first, last = np.searchsorted(starts, a, "right") - 1, np.searchsorted(starts, b, "left")
        cuts = np.maximum(starts[first:last], a) - a
        for t in range(sp.T):
            numer[t, first:last] += np.add.reduceat(np.abs(taus[t, a:b]), cuts, dtype=np.float64)
            denom[t, first:last] += np.add.reduceat(uni[a:b] * masks[t, a:b], cuts, dtype=np.float64)
    numel = np.array([e.numel for e in sp.index.entries], dtype=np.float64)
    n, d = (numer / numel).sum(1), (denom / numel).sum(1)
    return [float(p / q) if q > 0 else 0.0 for p, q in zip(n, d)], np.where(positive, uni, -uni), masks


@pytest.mark.parametrize("T,chunk", [(3, 64), (5, 64), (8, 1000), (9, 1 << 18)])
def test_emr_rescalers_vector_and_masks_bit_for_bit(monkeypatch, T, chunk):
    sp = make_space(T=T, seed=T)
    sp.stack[:, ::5] = 0.0
    monkeypatch.setattr(emr, "CHUNK", chunk)
    result = run_merge(sp, "emr")
    scales, uni, masks = numpy_emr_rescalers(sp, chunk)
    assert result.task_scales == scales
    assert torch.equal(result.delta.view(torch.int32), torch.from_numpy(uni).view(torch.int32))
    assert torch.equal(result.masks["emr"].to_bool(), torch.from_numpy(masks))


@settings(max_examples=80, deadline=None)
@given(data=st.lists(st.floats(-1e3, 1e3, width=32) | st.sampled_from([0.0, -0.0, 1.0, -1.0]), min_size=1,
                     max_size=90), bounds=st.tuples(st.floats(0, 1), st.floats(0, 1)), T=st.integers(1, 20),
       floor_at=st.floats(0, 1), scaled=st.booleans())
def test_pcb_kernels_are_the_torch_ops_of_their_definitions(data, bounds, T, floor_at, scaled):
    tau = torch.tensor(data, dtype=torch.float32)
    magnitudes = np.sort(np.abs(tau.numpy()))
    low, high = (magnitudes[int(b * (magnitudes.size - 1))] for b in sorted(bounds))
    span, spread = np.float32(high - low), bool(high > low)
    a = tau.abs().clamp(float(low), float(high))
    norm = (a - float(low)) / float(span) if spread else torch.zeros_like(a)
    direction = torch.linspace(-2, 3, tau.numel())
    expected = direction + torch.sign(tau) * norm
    kernels.pcb_direction(tau.numpy(), low, high, span, spread, direction.numpy())
    assert np.array_equal(direction.numpy().view(np.int32), expected.numpy().view(np.int32))

    intra, inter = np.empty_like(tau.numpy()), np.empty_like(tau.numpy())
    kernels.pcb_beta_args(tau.numpy(), direction.numpy(), low, high, span, spread, np.float32(T), intra, inter)
    assert np.array_equal(intra, (norm.square() * T).numpy()) and np.array_equal(inter, (tau * direction).numpy())
    beta = torch.from_numpy(intra).exp() * torch.from_numpy(inter).tanh()
    got = torch.from_numpy(intra).exp_()
    assert kernels.mul_max(got.numpy(), torch.from_numpy(inter).tanh_().numpy()) == beta.max()
    assert torch.equal(got, beta)

    floor = np.float32(np.sort(beta.numpy())[int(floor_at * (beta.numel() - 1))])
    scale = np.float32(beta.max() - floor) if scaled else np.float32(1)
    s = (beta.clamp(min=float(floor)) - float(floor)) / float(scale) if scaled else torch.zeros_like(beta)
    scored, keep = np.empty_like(intra), np.zeros((beta.numel() + 7) // 8, dtype=np.uint8)
    kernels.pcb_score(beta.numpy(), tau.numpy(), low, high, floor, scale, scaled, scored, keep)
    assert np.array_equal(beta.numpy().view(np.int32), s.numpy().view(np.int32))
    assert np.array_equal(scored.view(np.int32), (torch.sign(tau) * s * a).numpy().view(np.int32))
    assert np.array_equal(keep, np.packbits((s > 0).numpy()))
