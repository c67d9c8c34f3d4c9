"""Mask statistics against plain computations on dense bool masks."""
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as ref
from engine_fixtures import space as make_space
from merging import run_merge
from merging.maskset import MaskSet, pack_bits, unpack_bits
from merging.maskstats import mask_statistics, per_layer_rate


@pytest.mark.parametrize("P", [1, 7, 8, 13, 4096 + 5])
def test_packing_is_numpy_packbits_on_both_paths(P):
    m = torch.rand(3, P, generator=torch.Generator().manual_seed(P)) > 0.6
    ms = MaskSet.from_bool(m, ["a", "b", "c"], "x")  # CPU path (numpy)
    for t in range(3):
        assert np.array_equal(ms.packed[t].numpy(), np.packbits(m[t].numpy()))
        assert np.array_equal(pack_bits(m[t]).numpy(), np.packbits(m[t].numpy()))  # torch (GPU) path
        assert torch.equal(unpack_bits(ms.packed[t], P), m[t])
    assert torch.equal(ms.to_bool(), m)
    if P > 8:
        assert torch.equal(ms.columns(8, P), m[:, 8:])


def test_statistics_match_dense_computation(monkeypatch):
    import merging.maskstats as maskstats
    monkeypatch.setattr(maskstats, "CHUNK", 64)  # several chunks, entries straddling chunk borders
    sp = make_space(T=4, seed=5)
    result = run_merge(sp, "tall", {"tall_lambda": [0.3, 0.5, 0.7, 0.9]})
    masks = result.masks["tall"]
    dense = masks.to_bool()
    stats = mask_statistics(masks, sp.index)
    histogram, active, jaccard = ref.mask_stats(dense)
    assert stats.histogram["count"].tolist() == histogram
    assert stats.histogram["class"].tolist() == ["catastrophic", "selfish", "general", "general", "general"]
    assert np.isclose(stats.histogram["fraction"].sum(), 1.0)
    assert stats.density["active"].tolist() == active
    np.testing.assert_allclose(stats.jaccard.to_numpy(), jaccard.numpy())
    c = dense.sum(0)
    # per layer: block.00 holds the two resblocks.0 tensors
    entries = [e for e in sp.index.entries if e.layer == "block.00"]
    layer_c = torch.cat([c[e.slice] for e in entries])
    got = stats.by_layer[stats.by_layer["layer"] == "block.00"].set_index("c")["count"]
    assert [int(got[v]) for v in range(5)] == [int((layer_c == v).sum()) for v in range(5)]
    assert list(stats.by_layer["layer"].cat.categories) == ["embed", "block.00", "block.01", "head"]
    kinds = set(stats.by_kind["kind"])
    assert {"attn.in_proj", "mlp.c_fc", "embedding", "ln", "proj"} <= kinds


def test_catastrophic_and_selfish_by_hand():
    m = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    from merging.param_index import ParamEntry, ParamIndex
    index = ParamIndex([ParamEntry("a", (2,), 0, 2, torch.float32, "block.00", "ln"),
                        ParamEntry("b", (3,), 2, 3, torch.float32, "block.01", "ln")])
    stats = mask_statistics(MaskSet.from_bool(m, ["x", "y", "z"], "t"), index)
    # c = [1, 2, 0, 1, 3]: one catastrophic, two selfish, two general
    assert stats.class_fractions() == {"catastrophic": 0.2, "selfish": 0.4, "general": 0.4}
    assert stats.jaccard.loc["x", "y"] == pytest.approx(2 / 4)
    rate = per_layer_rate(index, torch.tensor([True, False, True, True, False]), "flag")
    assert rate["flag"].tolist() == [1, 2] and rate["flag_rate"].tolist() == [0.5, pytest.approx(2 / 3)]


def test_sign_conflict_table_matches_dense(monkeypatch):
    sp = make_space(T=3, seed=9)
    result = run_merge(sp, "ties", {"k": 60})
    trims = result.masks["ties_trim"].to_bool()
    taus = torch.stack([sp.tau(t) for t in range(3)]) * trims
    conflict = ((taus > 0).any(0) & (taus < 0).any(0))
    table = result.tables["sign_conflicts"].set_index("layer")
    for layer in table.index:
        sel = torch.cat([conflict[e.slice] for e in sp.index.entries if e.layer == layer])
        assert table.loc[layer, "sign_conflicts"] == int(sel.sum())
    assert isinstance(table, pd.DataFrame)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
       chunk=st.sampled_from([8, 16, 24, 64, 1 << 21]), density=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_popcount_counts_equal_unpacked_counts(T, sizes, chunk, density, seed):
    """The CPU pass (bit-sliced counters over packed words) against the unpacking bincount/matmul pass."""
    import merging.chunks as chunks
    import merging.maskstats as maskstats
    from merging.param_index import ParamIndex
    index = ParamIndex.from_state_dict({f"p{i}": torch.zeros(n) for i, n in enumerate(sizes)})
    m = torch.rand(T, index.numel, generator=torch.Generator().manual_seed(seed)) < density
    masks = MaskSet.from_bool(m, [f"t{i}" for i in range(T)], "x")
    popcount = maskstats.per_entry_histogram(masks, index, chunk)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunks, "NUMPY_KERNELS", False)
        unpacked = maskstats.per_entry_histogram(masks, index, chunk)
    assert torch.equal(popcount[0], unpacked[0])
    assert torch.equal(popcount[2], unpacked[2]) and torch.equal(popcount[1], unpacked[1])
    c = m.sum(0)
    for e, entry in enumerate(index.entries):  # and against the plain count
        assert popcount[0][e].tolist() == torch.bincount(c[entry.slice], minlength=T + 1).tolist()


@pytest.mark.parametrize("T,chunk", [(3, 1 << 21), (20, 24_000), (9, 40_008)])
def test_popcount_counts_over_many_word_blocks(T, chunk):
    """Tensors and segments longer than one L1 block of words, starting and ending inside words."""
    import merging.maskstats as maskstats
    from merging.param_index import ParamIndex
    index = ParamIndex.from_state_dict({"a": torch.zeros(40_003), "b": torch.zeros(17), "c": torch.zeros(70_001)})
    m = torch.rand(T, index.numel, generator=torch.Generator().manual_seed(T)) < 0.3
    hist, active, inter = maskstats.per_entry_histogram(MaskSet.from_bool(m, [f"t{i}" for i in range(T)], "x"),
                                                        index, chunk)
    c = m.sum(0)
    for e, entry in enumerate(index.entries):
        assert hist[e].tolist() == torch.bincount(c[entry.slice], minlength=T + 1).tolist()
    dense = m.to(torch.float64)
    assert torch.equal(inter, dense @ dense.T) and torch.equal(active, m.sum(1).to(torch.float64))
