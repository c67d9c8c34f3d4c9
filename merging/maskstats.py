"""Mask statistics: agreement counts, catastrophic/selfish weights, per layer and kind, density, overlap.

For T masks m_t over P parameters: agreement c = Σt m_t ∈ {0..T}; c = 0 are *catastrophic* weights (active for
no task), c = 1 *selfish* (exactly one task), c ≥ 2 *general* (Wang et al., ICML 2024).  Everything is computed
on the masks' device in one chunked pass (per-tensor histograms by bincount, pairwise intersections by a T×T
matmul) and returned as small pandas tables; no P-sized data leaves the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .chunks import use_numpy
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
    counts = pd.DataFrame(hist.numpy(), columns=range(hist.shape[1]))
    counts[key] = [getattr(e, key) for e in index.entries]
    summed = counts.groupby(key, sort=False).sum()
    order = index.layer_order() if key == "layer" else list(summed.index)
    long = summed.loc[order].reset_index().melt(id_vars=key, var_name="c", value_name="count")
    long["c"] = long["c"].astype(int)
    long["fraction"] = long["count"] / long.groupby(key)["count"].transform("sum")
    long["class"] = long["c"].map(agreement_class)
    long[key] = pd.Categorical(long[key], categories=order, ordered=True)
    return long.sort_values([key, "c"]).reset_index(drop=True)


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
