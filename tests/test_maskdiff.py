"""Mask differences of two runs against plain counts on dense bool masks, and the comparison figure."""
import json

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from dashboard import compare_figures
from merging.maskdiff import mask_difference, summarize
from merging.maskset import MaskSet
from merging.param_index import ParamIndex

NAMES = ["conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.ln_1.bias",
         "transformer.resblocks.1.mlp.c_fc.weight", "proj"]


def _index(sizes):
    return ParamIndex.from_state_dict({n: torch.zeros(s) for n, s in zip(NAMES, sizes)})


def _dense_reference(a, b, index, tasks):
    """Plain counts from the unpacked masks, per (task, layer, kind)."""
    out = {}
    for t, task in enumerate(tasks):
        for e in index.entries:
            x, y = a[t, e.offset:e.offset + e.numel], b[t, e.offset:e.offset + e.numel]
            key = (task, e.layer, e.kind)
            row = out.setdefault(key, [0, 0, 0, 0, 0])
            for i, v in enumerate([e.numel, int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum()),
                                   int((~x & ~y).sum())]):
                row[i] += v
    return out


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=5, max_size=5), seed=st.integers(0, 2**31 - 1),
       chunk=st.sampled_from([8, 16, 1 << 21]))
def test_difference_matches_dense_counts(sizes, seed, chunk):
    index = _index(sizes)
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(3, index.numel, generator=generator) > 0.5
    b = torch.rand(2, index.numel, generator=generator) > 0.3
    ma = MaskSet.from_bool(a, ["x", "y", "z"], "tall")
    mb = MaskSet.from_bool(b, ["z", "x"], "trim")  # other order, one task missing: compared on x and z
    table = mask_difference(ma, mb, index, chunk=chunk)
    expected = _dense_reference(a[[0, 2]], b[[1, 0]], index, ["x", "z"])
    got = {(r.task, r.layer, r.kind): [r.total, r.both, r.only_a, r.only_b, r.neither] for r in table.itertuples()}
    assert got == expected
    layers = summarize(table, "layer")
    assert layers["total"].sum() == 2 * index.numel
    assert np.allclose(layers[["both_fraction", "only_a_fraction", "only_b_fraction", "neither_fraction"]]
                       .sum(axis=1), 1.0)


def test_identical_masks_differ_nowhere_and_complements_everywhere():
    index = _index([5, 9, 3, 17, 4])
    m = torch.rand(2, index.numel, generator=torch.Generator().manual_seed(1)) > 0.5
    same = summarize(mask_difference(MaskSet.from_bool(m, ["p", "q"], "k"), MaskSet.from_bool(m, ["p", "q"], "k"),
                                     index), "kind")
    assert (same["differ_fraction"] == 0).all()
    flipped = summarize(mask_difference(MaskSet.from_bool(m, ["p", "q"], "k"), MaskSet.from_bool(~m, ["p", "q"], "k"),
                                        index), "task")
    assert (flipped["differ_fraction"] == 1).all()
    assert flipped["only_a"].tolist() == [int(m[0].sum()), int(m[1].sum())]


def test_comparison_figure_shows_what_each_run_keeps_alone():
    index = _index([4, 8, 2, 8, 2])
    a = torch.zeros(1, index.numel, dtype=torch.bool)
    b = torch.zeros(1, index.numel, dtype=torch.bool)
    a[0, :4] = True  # conv1 (embed): only A keeps all 4
    b[0, 4:8] = True  # first 4 of the block.00 in_proj: only B keeps 4 of the block's 10
    table = mask_difference(MaskSet.from_bool(a, ["t"], "m"), MaskSet.from_bool(b, ["t"], "m"), index)
    fig = compare_figures.mask_difference_bars(table, "#1 ties", "#2 dare")
    data = json.loads(fig.to_json())["data"]
    by_name = {(d["name"], d.get("xaxis", "x")): d for d in data}
    only_a = by_name[("kept only by #1 ties", "x")]
    only_b = by_name[("kept only by #2 dare", "x")]
    layers = list(only_a["x"])
    assert layers == ["embed", "block.00", "block.01", "head"]
    assert only_a["y"][0] == 100.0 and only_b["y"][1] == -40.0  # B's share drawn below the axis
    assert only_a["customdata"][0] == 4 and only_b["customdata"][1] == 4
