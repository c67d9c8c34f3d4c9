"""Where two runs' masks differ: for each task t and parameter tensor, how many weights both masks keep, only
the first keeps (the second drops them), only the second keeps, and neither keeps.

For packed rows a_t, b_t over P bits: both = |a_t ∧ b_t|, only_a = |a_t ∧ ¬b_t|, only_b = |¬a_t ∧ b_t|,
neither = n − both − only_a − only_b (n the tensor's size).  Counted by popcounts of the packed bytes, one segment
of a tensor at a time; no P-sized array is made.  :func:`summarize` groups the small result by layer or kind
with fractions of the group's weights.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .chunks import map_items
from .maskset import MaskSet
from .maskstats import CHUNK, _segments
from .param_index import ParamIndex

COUNTS = ("both", "only_a", "only_b", "neither")


def _segment(a: np.ndarray, b: np.ndarray, start: int, stop: int) -> tuple[int, int, int]:
    """(both, only_a, only_b) over bits [start, stop) of two packed rows (numpy packbits order)."""
    lo, hi = start // 8, (stop + 7) // 8
    x, y = a[lo:hi].copy(), b[lo:hi].copy()
    edge = np.zeros(hi - lo, dtype=np.uint8) + np.uint8(0xFF)
    edge[0] &= np.uint8(0xFF >> (start % 8))
    edge[-1] &= np.uint8((0xFF << (7 - (stop - 1) % 8)) & 0xFF)
    x &= edge
    y &= edge

    def count(v: np.ndarray) -> int:
        return int(np.bitwise_count(v).sum(dtype=np.int64))

    return count(x & y), count(x & ~y), count(~x & y)


def mask_difference(a: MaskSet, b: MaskSet, index: ParamIndex, chunk: int = CHUNK) -> pd.DataFrame:
    """Long table task, layer, kind, total, both, only_a, only_b, neither over the tasks both mask sets have
    (in ``a``'s order); ``a`` and ``b`` must cover the same parameters."""
    if a.numel != index.numel or b.numel != index.numel:
        raise ValueError(f"masks cover {a.numel} and {b.numel} parameters, the index {index.numel}")
    tasks = [t for t in a.task_names if t in b.task_names]
    if not tasks:
        raise ValueError("the two mask sets have no task in common")
    packed_a, packed_b = a.packed.cpu().numpy(), b.packed.cpu().numpy()
    segments = _segments(index, max(chunk - chunk % 8, 8))
    rows = []
    for task in tasks:
        ra, rb = packed_a[a.task_names.index(task)], packed_b[b.task_names.index(task)]
        parts = map_items(segments, lambda e, start, stop: _segment(ra, rb, start, stop))
        counts = np.zeros((len(index), 3), dtype=np.int64)
        for (e, _, _), part in zip(segments, parts):
            counts[e] += part
        for entry, (both, only_a, only_b) in zip(index.entries, counts):
            rows.append((task, entry.layer, entry.kind, entry.numel, both, only_a, only_b))
    table = pd.DataFrame(rows, columns=["task", "layer", "kind", "total", "both", "only_a", "only_b"])
    table = table.groupby(["task", "layer", "kind"], sort=False, as_index=False).sum()
    table["neither"] = table["total"] - table["both"] - table["only_a"] - table["only_b"]
    return table


def summarize(table: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Counts of :func:`mask_difference` summed by ``by`` ("layer", "kind", "task" or a list) with each count's
    fraction of the group's weights (``<count>_fraction``) and the fraction the two masks disagree on."""
    keys = [by] if isinstance(by, str) else list(by)
    out = table.groupby(keys, sort=False, as_index=False)[["total", *COUNTS]].sum()
    for name in COUNTS:
        out[f"{name}_fraction"] = out[name] / out["total"].clip(lower=1)
    out["differ_fraction"] = out["only_a_fraction"] + out["only_b_fraction"]
    return out
