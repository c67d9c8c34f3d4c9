"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: per task over the whole model keep |τt| ≥ the k-th smallest |τt|, k = P − ⌊P·K/100⌋ → τ̂t.
2. Elect: γ = sign(Σt τ̂t); where γ = 0 use the majority sign sign(Σ γ).
3. Disjoint merge over tasks whose τ̂t is nonzero with sign γ: dis-mean = sum / max(1, count), dis-sum = sum.
θ = θ0 + λ τm.  Runs in O(P) work space (three reads of the stack), trims kept as bit masks.
"""
from __future__ import annotations

import torch

from ..chunks import map_ranges, scratch
from ..maskset import MaskSet
from ..maskstats import per_layer_rate
from ..params import Param
from ..registry import MergeMethod, MergeResult, lam_param, register
from ..select import top_fraction_threshold

K_PARAM = Param("k", float, 20.0, "percent of each task vector kept by magnitude (trim)", low=0.0, high=100.0,
                step=1.0, grid=(5, 10, 20, 30, 50))
MERGE_PARAM = Param("merge", str, "mean", "disjoint merge: mean (dis-mean) or sum (dis-sum)",
                    choices=("mean", "sum"))


def ties_vector(vectors, k: float, merge: str, progress):
    """TIES-merged τm (unscaled), trim masks, per-element sign-conflict flags and the trim thresholds.

    ``vectors`` is anything with ``T``, ``P``, ``device``, ``task_names``, ``tau_chunk(t, start, stop)`` and
    ``workspace()`` (a task-vector space or a DARE-dropped view of one).  Three reads of the stack: |τt| into the
    workspace for each task's threshold, then two passes over the vector that take every task per chunk (trim and
    Σt τ̂t; sign election and disjoint merge), so the sums, signs and counts stay in cache.  Beyond the stack it
    holds the workspace, the result, the packed trims, the conflict flags and per-thread chunk buffers."""
    T, P, device = vectors.T, vectors.P, vectors.device
    trims = MaskSet.empty(vectors.task_names, P, device, "ties_trim")
    magnitude = vectors.workspace()
    over = lambda body: map_ranges(P, body, device)  # noqa: E731
    thresholds = []
    for t in range(T):
        progress(t / (T + 2), f"trim threshold {vectors.task_names[t]}")
        over(lambda a, b: torch.abs(vectors.tau_chunk(t, a, b), out=magnitude[a:b]))
        thresholds.append(top_fraction_threshold(magnitude, k))
    total = torch.empty(P, dtype=torch.float32, device=device)  # Σt τ̂t first, then the merged vector
    progress(T / (T + 2), "trim and elect signs")
    majority = sum(over(lambda a, b: _trim(vectors, thresholds, trims, a, b, total[a:b])))
    conflicts = torch.zeros(P, dtype=torch.bool, device=device)
    progress((T + 1) / (T + 2), "disjoint merge")
    fill = (majority > 0) - (majority < 0)
    over(lambda a, b: _disjoint_merge(vectors, thresholds, fill, merge, a, b, total[a:b], conflicts[a:b]))
    return total, trims, conflicts, [float(threshold) for threshold in thresholds]


def _trim(vectors, thresholds, trims: MaskSet, a: int, b: int, elected: torch.Tensor) -> int:
    """On [a, b): keep = |τt| ≥ threshold_t → trim mask t; elected = Σt τt·keep; returns #(elected > 0) −
    #(elected < 0), this range's part of the majority sign."""
    elected.zero_()
    magnitude, keep = scratch(elected, 0), scratch(elected, 0, torch.bool)
    for t, threshold in enumerate(thresholds):
        tau = vectors.tau_chunk(t, a, b)
        torch.ge(torch.abs(tau, out=magnitude), threshold, out=keep)
        trims.set_chunk(t, a, keep)
        elected.addcmul_(tau, keep)
    return int(torch.count_nonzero(elected > 0)) - int(torch.count_nonzero(elected < 0))


def _disjoint_merge(vectors, thresholds, fill: int, merge: str, a: int, b: int, total: torch.Tensor,
                    conflicts: torch.Tensor) -> None:
    """On [a, b), with ``total`` = Σt τ̂t: γ = sign(total) (0 → ``fill``); over the tasks w = γ·τ̂t:
    conflicts |= w < 0, count += w > 0, sum += max(w, 0); total ← γ·sum (/ max(1, count) for dis-mean)."""
    gamma, flag = scratch(total, 0), scratch(total, 0, torch.bool)
    torch.sign(total, out=gamma).masked_fill_(torch.eq(gamma, 0, out=flag), fill)
    total.zero_()
    count = scratch(total, 0, torch.uint8 if vectors.T < 256 else torch.int32).zero_() if merge == "mean" else None
    work = scratch(total, 1)
    for t, threshold in enumerate(thresholds):  # |γ| = 1 where τ̂t can be nonzero, so kept ⇔ |w| ≥ threshold
        torch.mul(vectors.tau_chunk(t, a, b), gamma, out=work)
        if float(threshold) > 0:
            conflicts |= torch.le(work, -threshold, out=flag)  # kept, against γ
        else:
            conflicts |= torch.lt(work, 0, out=flag)
        work.masked_fill_(torch.lt(work, threshold, out=flag), 0)  # kept and agreeing: w ≥ threshold, w > 0
        if count is not None:
            count += torch.gt(work, 0, out=flag)
        total += work
    total.mul_(gamma)
    if count is not None:
        total /= count.clamp_min_(1)


def run(space, params, progress, context=None) -> MergeResult:
    merged, trims, conflicts, thresholds = ties_vector(space, params["k"], params["merge"], progress)
    table = per_layer_rate(space.index, conflicts, "sign_conflicts")
    return MergeResult("ties", params, merged.mul_(params["lam"]), masks={"ties_trim": trims},
                       tables={"sign_conflicts": table},
                       info={"thresholds": thresholds, "sign_conflict_rate": int(torch.count_nonzero(conflicts)) / space.P})


METHOD = register(MergeMethod(
    "ties", "TIES-Merging",
    "Keep each task's largest changes, vote on a sign per weight, and average only the agreeing changes.",
    "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
    (K_PARAM, MERGE_PARAM, lam_param(1.0, grid=(0.8, 1.0, 1.2, 1.5, 1.8, 2.0, 2.5))), run))
