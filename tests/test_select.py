"""Exact selection: identical to torch.kthvalue / torch.quantile on adversarial inputs, on both code paths."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from merging import chunks, select
from merging.select import kth_smallest, quantile, top_fraction_threshold


@pytest.fixture(params=["numpy", "torch"])
def path(request, monkeypatch):
    """Run each test on the chunked-numpy CPU path and on the whole-tensor torch path (the GPU code)."""
    monkeypatch.setattr(select, "SMALL", 64)  # exercise the bracket and recursion on small inputs
    monkeypatch.setattr(select, "SAMPLE", 32)
    if request.param == "torch":
        monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    return request.param


values = st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, 3.4e38, float("inf"), -float("inf")])
                  | st.floats(-1e6, 1e6, width=32), min_size=1, max_size=600)


@settings(max_examples=150, deadline=None)
@given(data=values, where=st.floats(0, 1))
def test_kth_matches_kthvalue_on_adversarial_values(data, where):
    x = torch.tensor(data, dtype=torch.float32)
    k = 1 + int(where * (x.numel() - 1))
    for use in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(select, "SMALL", 16)
            mp.setattr(select, "SAMPLE", 8)
            mp.setattr(chunks, "NUMPY_KERNELS", use)
            assert torch.equal(kth_smallest(x, k), torch.kthvalue(x, k).values)
            assert torch.equal(kth_smallest(x, k, absolute=True), torch.kthvalue(x.abs(), k).values)


@pytest.mark.parametrize("kind", ["normal", "zeros90", "two_values", "constant", "sorted", "reversed", "periodic"])
def test_kth_structured_inputs(path, kind):
    g = torch.Generator().manual_seed(1)
    n = 5000
    x = {"normal": lambda: torch.randn(n, generator=g),
         "zeros90": lambda: torch.where(torch.rand(n, generator=g) < 0.9, 0.0, torch.randn(n, generator=g)),
         "two_values": lambda: (torch.rand(n, generator=g) < 0.3).float(),
         "constant": lambda: torch.full((n,), 7.0),
         "sorted": lambda: torch.arange(n, dtype=torch.float32),
         "reversed": lambda: torch.arange(n, 0, -1, dtype=torch.float32),
         "periodic": lambda: (torch.arange(n) % 17).float()}[kind]().abs()
    for k in [1, 2, n // 7, n // 2, n - n // 5, n - n // 5 + 1, n - 1, n]:
        assert torch.equal(kth_smallest(x, k), torch.kthvalue(x, k).values), (kind, k)


def test_kth_rejects_bad_k_and_nan(path):
    x = torch.randn(1000)
    with pytest.raises(ValueError):
        kth_smallest(x, 0)
    with pytest.raises(ValueError):
        kth_smallest(x, 1001)
    x[::3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kth_smallest(x, 900)


def test_kth_large_default_settings():
    """Above the real SMALL threshold with the real sample size, numpy and torch paths agree with kthvalue."""
    tau = torch.randn(3_000_001, generator=torch.Generator().manual_seed(2))
    tau[:1_000_000] = 0.0
    x = tau.abs()
    for k in [1, 1_000_000, 1_000_001, 2_400_000, 3_000_001]:
        expected = torch.kthvalue(x, k).values
        assert torch.equal(kth_smallest(x, k), expected)
        assert torch.equal(kth_smallest(tau, k, absolute=True), expected)  # |τ| never materialised


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=300), q=st.floats(0, 1))
def test_quantile_matches_torch(data, q):
    x = torch.tensor(data, dtype=torch.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(select, "SMALL", 16)
        mp.setattr(select, "SAMPLE", 8)
        assert torch.equal(quantile(x, q), torch.quantile(x, q))


def test_top_fraction_threshold_formula():
    x = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)  # P = 100, |x| = 1..100
    # K = 20: k = 100 − 20 = 80 → threshold 80, keeps 80..100 (21 values, ties would be kept too)
    assert top_fraction_threshold(x, 20) == 80
    assert top_fraction_threshold(x, 100) == 1
    assert top_fraction_threshold(x, 0) == 100
    assert top_fraction_threshold(x, 33.3) == 67  # k = 100 − ⌊33.3⌋ = 67
    assert int((x.abs() >= top_fraction_threshold(x, 20)).sum()) == 21


def test_numpy_path_is_used_for_cpu_float32():
    from merging.chunks import use_numpy
    assert use_numpy(torch.zeros(10))
    assert not use_numpy(torch.zeros(10, dtype=torch.float64))
    assert not use_numpy(torch.zeros(10, 2).T)
    assert np.float32(kth_smallest(torch.tensor([3.0, 1.0, 2.0]), 2)) == 2.0


def test_a_tie_next_to_the_kth_value_is_counted_not_regathered(path, monkeypatch):
    """PCB's case: 1 % exact zeros just below the k-th |τ|; the bracket must shrink the input every pass."""
    monkeypatch.setattr(select, "SMALL", 4096)
    monkeypatch.setattr(select, "SAMPLE", 1024)
    sizes = []
    bracket = select._bracket
    monkeypatch.setattr(select, "_bracket", lambda x, *args: sizes.append(x.numel()) or bracket(x, *args))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200_000, generator=g).abs()
    x[:20_000] = 0.0  # the tie holds more than SMALL elements
    for k in (15_000, 20_001, 20_050, 26_000):
        sizes.clear()
        assert torch.equal(kth_smallest(x, k), torch.kthvalue(x, k).values)
        assert all(b < a for a, b in zip(sizes, sizes[1:])), sizes
        assert len(sizes) <= 2, sizes
