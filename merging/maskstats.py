"""Mask statistics: agreement counts, catastrophic/selfish weights, per layer and kind, density, overlap.

For T masks m_t over P parameters: agreement c = Σt m_t ∈ {0..T}; c = 0 are *catastrophic* weights (active for
no task), c = 1 *selfish* (exactly one task), c ≥ 2 *general* (Wang et al., ICML 2024).  Everything is computed
in one chunked pass over the packed masks and returned as small pandas tables; no P-sized data leaves the
engine.  On CPU the pass never unpacks a bit: a compiled kernel (:func:`merging.kernels.agreement_histogram`, one
call per thread over its share of the per-tensor segments) adds the T rows as bit-sliced binary counters
(⌈log2(T+1)⌉ planes of 64-bit words, full adders), gets the counts of each c from subset popcounts of the planes
by Möbius inversion, and the pairwise intersections from popcounts of ANDed rows.  On GPU: per-tensor bincount
of the unpacked columns and a T×T matmul.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import kernels
from .chunks import map_items, threads, use_numpy
from .maskset import MaskSet
from .param_index import ParamIndex

CHUNK = 1 << 21


def agreement_class(c: int) -> str:
    return "catastrophic" if c == 0 else "selfish" if c == 1 else "general"


@dataclass
class MaskStats:
    kind: str
    histogram: pd.DataFrame  # c, count, fraction, class
    by_layer: pd.DataFrame  # layer, c, count, fraction, class
    by_kind: pd.DataFrame  # kind, c, count, fraction, class
    density: pd.DataFrame  # task, active, density
    jaccard: pd.DataFrame  # T×T, index and columns = task names

    def class_fractions(self) -> dict[str, float]:
        return self.histogram.groupby("class")["fraction"].sum().to_dict()


def per_entry_histogram(masks: MaskSet, index: ParamIndex, chunk: int = CHUNK):
    """(E, T+1) counts of agreement c per parameter tensor, (T,) active counts, (T, T) intersections."""
    if use_numpy(masks.packed):
        return _popcount_histogram(masks, index, chunk)
    T, device = masks.T, masks.packed.device
    ends = torch.tensor([e.offset + e.numel for e in index.entries], device=device)
    hist = torch.zeros(len(index) * (T + 1), dtype=torch.int64, device=device)
    inter = torch.zeros((T, T), dtype=torch.float64, device=device)
    chunk -= chunk % 8
    for start in range(0, masks.numel, chunk):
        stop = min(start + chunk, masks.numel)
        block = masks.columns(start, stop)
        entry = torch.bucketize(torch.arange(start, stop, device=device), ends, right=True)
        hist += torch.bincount(entry * (T + 1) + block.sum(0), minlength=hist.numel())
        dense = block.to(torch.float32)
        inter += (dense @ dense.T).to(torch.float64)
    return hist.view(len(index), T + 1).cpu(), inter.diagonal().cpu(), inter.cpu()


def _segments(index: ParamIndex, chunk: int) -> list[tuple[int, int, int]]:
    """(entry number, first bit, end bit) pieces of at most ``chunk`` bits covering every tensor."""
    return [(e, start, min(start + chunk, entry.offset + entry.numel)) for e, entry in enumerate(index.entries)
            for start in range(entry.offset, entry.offset + entry.numel, chunk)]


def _popcount_histogram(masks: MaskSet, index: ParamIndex, chunk: int):
    """One compiled call per thread, each over an interleaved share of the segments (no per-segment Python)."""
    packed, T = masks.packed.numpy(), masks.T
    segments = np.array(_segments(index, max(chunk - chunk % 8, 8)), dtype=np.int64).reshape(-1, 3)
    n = threads()

    def part(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, inter = np.zeros((len(index), T + 1), dtype=np.int64), np.zeros((T, T), dtype=np.int64)
        kernels.agreement_histogram(packed.reshape(-1), packed.shape[1], T, share, hist, inter)
        return hist, inter

    parts = map_items([(segments[i::n],) for i in range(min(n, len(segments)))], part)
    hist, inter = sum(h for h, _ in parts), sum(i for _, i in parts)
    hist[:, 0] = [entry.numel for entry in index.entries] - hist[:, 1:].sum(1)
    inter += np.triu(inter, 1).T  # the kernel fills i ≤ j
    inter = torch.from_numpy(inter.astype(np.float64))
    return torch.from_numpy(hist), inter.diagonal(), inter


def entry_sums(index: ParamIndex, values: torch.Tensor) -> np.ndarray:
    """Per-tensor sums of a (P,) bool or numeric vector, as float64 (one pass, no P-sized index array)."""
    lengths = [e.numel for e in index.entries]
    if use_numpy(values):
        flat = values.numpy()
        count = np.count_nonzero if flat.dtype == np.bool_ else lambda v: v.sum(dtype=np.float64)
        return np.array([count(flat[e.slice]) for e in index.entries], dtype=np.float64)
    return torch.segment_reduce(values.to(torch.float32), "sum",
                                lengths=torch.tensor(lengths, device=values.device)).double().cpu().numpy()


def _grouped(index: ParamIndex, hist: torch.Tensor, key: str) -> pd.DataFrame:
    """Long table (key, c, count, fraction, class) of the per-tensor histograms summed by layer or kind, in layer
    order (kinds in order of appearance), c ascending; fraction = count / the group's parameters."""
    keys = [getattr(e, key) for e in index.entries]
    order = index.layer_order() if key == "layer" else list(dict.fromkeys(keys))
    where = {name: i for i, name in enumerate(order)}
    rows = np.array([where.get(name, -1) for name in keys], dtype=np.int64)
    summed = np.zeros((len(order), hist.shape[1]), dtype=np.int64)
    np.add.at(summed, rows[rows >= 0], hist.numpy()[rows >= 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = summed / summed.sum(1, keepdims=True)
    c = np.tile(np.arange(hist.shape[1], dtype=np.int64), len(order))
    classes = np.array([agreement_class(v) for v in range(hist.shape[1])], dtype=object)
    return pd.DataFrame({key: pd.Categorical.from_codes(np.repeat(np.arange(len(order)), hist.shape[1]),
                                                        categories=order, ordered=True),
                         "c": c, "count": summed.reshape(-1), "fraction": fraction.reshape(-1),
                         "class": classes[c]})


def mask_statistics(masks: MaskSet, index: ParamIndex) -> MaskStats:
    """All tables for one mask set (TALL, TIES trim, PCB keep, DARE keep, CALM)."""
    if masks.numel != index.numel:
        raise ValueError(f"masks cover {masks.numel} parameters, the index {index.numel}")
    hist, active, inter = per_entry_histogram(masks, index)
    total = hist.sum(0)
    histogram = pd.DataFrame({"c": range(masks.T + 1), "count": total.numpy()})
    histogram["fraction"] = histogram["count"] / index.numel
    histogram["class"] = histogram["c"].map(agreement_class)
    names = masks.task_names
    density = pd.DataFrame({"task": names, "active": active.numpy().astype("int64"),
                            "density": active.numpy() / index.numel})
    union = active[:, None] + active[None, :] - inter
    jac = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    jaccard = pd.DataFrame(jac.numpy(), index=names, columns=names)
    return MaskStats(masks.kind, histogram, _grouped(index, hist, "layer"), _grouped(index, hist, "kind"),
                     density, jaccard)


def per_layer_rate(index: ParamIndex, flags: torch.Tensor, name: str) -> pd.DataFrame:
    """Per-layer count and rate of a (P,) bool property (e.g. TIES sign conflicts) as a small table."""
    table = pd.DataFrame({"layer": [e.layer for e in index.entries], "numel": [e.numel for e in index.entries],
                          name: entry_sums(index, flags)})
    table = table.groupby("layer", sort=False).sum().loc[index.layer_order()].reset_index()
    table[name] = table[name].astype("int64")
    table[f"{name}_rate"] = table[name] / table["numel"]
    return table
