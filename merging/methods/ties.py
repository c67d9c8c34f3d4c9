"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: per task over the whole model keep |τt| ≥ the k-th smallest |τt|, k = P − ⌊P·K/100⌋ → τ̂t.
2. Elect: γ = sign(Σt τ̂t); where γ = 0 use the majority sign sign(Σ γ).
3. Disjoint merge over tasks whose τ̂t is nonzero with sign γ: dis-mean = sum / max(1, count), dis-sum = sum.
θ = θ0 + λ τm.  Runs in O(P) work space: two passes over the tasks, trims kept as bit masks.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..chunks import map_chunks, use_numpy
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

    ``vectors`` is anything with ``T``, ``P``, ``device``, ``task_names``, ``tau(t)`` and ``float32_rows()`` (a
    task-vector space or a DARE-dropped view of one).  Beyond the stack it holds the result, the packed trims and
    byte-sized sign/count/conflict arrays.  On CPU compiled chunk kernels (:mod:`merging.kernels`) read each τt
    three times: the selection of its threshold, the trim, and the disjoint merge (all tasks per chunk when the
    τt are views of one float32 stack)."""
    T, P, device = vectors.T, vectors.P, vectors.device
    trims = MaskSet.empty(vectors.task_names, P, device, "ties_trim")
    total = torch.zeros(P, dtype=torch.float32, device=device)  # Σt τ̂t first, then the disjoint sum
    thresholds = []
    for t in range(T):
        progress(t / (2 * T), f"trim {vectors.task_names[t]}")
        tau = vectors.tau(t)
        threshold = top_fraction_threshold(tau, k)
        _trim(tau, threshold, trims, t, total)
        thresholds.append(float(threshold))
    count = torch.zeros(P, dtype=torch.uint8 if T < 256 else torch.int32, device=device) \
        if merge == "mean" or use_numpy(total) else None
    conflicts = torch.zeros(P, dtype=torch.bool, device=device)
    if use_numpy(total):
        _disjoint_chunked(vectors, thresholds, merge == "mean", total, count, conflicts, progress)
        return total, trims, conflicts, thresholds
    gamma = _elect(total)
    total.zero_()
    for t in range(T):
        progress((T + t) / (2 * T), f"disjoint merge {vectors.task_names[t]}")
        _disjoint_add(vectors.tau(t), gamma, trims, t, conflicts, count, total)
    total *= gamma
    if count is not None:
        total /= count.clamp_min_(1)
    return total, trims, conflicts, thresholds


def _elect(total: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σt τ̂t) as int8, zeros replaced by the majority sign sign(Σ γ) (whole-vector torch ops)."""
    gamma = torch.sign(total).to(torch.int8)
    majority = int(torch.count_nonzero(gamma > 0)) - int(torch.count_nonzero(gamma < 0))
    gamma.masked_fill_(gamma == 0, (majority > 0) - (majority < 0))
    return gamma


def _trim(tau, threshold, trims: MaskSet, t: int, elected: torch.Tensor) -> None:
    """keep = |τt| ≥ threshold → trim mask t; elected += τt·keep."""
    if not use_numpy(tau):
        keep = tau.abs() >= threshold
        trims.set(t, keep)
        elected.addcmul_(tau, keep)
        return
    src, acc, row, thr = tau.numpy(), elected.numpy(), trims.packed[t].numpy(), np.float32(threshold)
    map_chunks(src.size, lambda a, b: kernels.ties_trim(src[a:b], thr, acc[a:b], row[a // 8:(b + 7) // 8]))


def _disjoint_add(tau, gamma, trims: MaskSet, t: int, conflicts, count, total) -> None:
    """w = γ·τ̂t; conflicts |= w < 0; count += w > 0; total += max(w, 0) (whole-vector torch ops)."""
    work = tau * gamma
    work.mul_(trims.get(t))
    conflicts |= work < 0
    if count is not None:
        count += work > 0
    total += work.clamp_min_(0)


def _disjoint_chunked(vectors, thresholds, mean: bool, total, count, conflicts, progress) -> None:
    """Elect γ from total = Σt τ̂t, then total ← the disjoint merge γ·Σ max(γ·τ̂t, 0) (/ count for dis-mean), with
    the conflicts and counts, by the compiled kernels: every task per chunk when the τt are views of one float32
    stack, else one task per pass (τ̂t = τt·1{|τt| ≥ its threshold}, the trim recomputed)."""
    tot, cnt, conf, P = total.numpy(), count.numpy(), conflicts.numpy(), total.numel()
    gamma = np.empty(P, dtype=np.int8)
    balance = sum(map_chunks(P, lambda a, b: kernels.ties_elect(tot[a:b], gamma[a:b])))
    fill = np.float32((balance > 0) - (balance < 0))
    thr = np.array(thresholds, dtype=np.float32)

    def merge(stack, rows, thr, finish):
        map_chunks(P, lambda a, b: kernels.ties_disjoint(stack, rows, thr, gamma[a:b], fill, a, b, tot[a:b],
                                                         cnt[a:b], conf[a:b], mean, finish))

    views = vectors.float32_rows()
    if views is not None:
        progress(0.5, "disjoint merge")
        merge(*views, thr, True)
        return
    for t in range(vectors.T):
        progress((vectors.T + t) / (2 * vectors.T), f"disjoint merge {vectors.task_names[t]}")
        merge(vectors.tau(t).numpy()[None], np.zeros(1, dtype=np.int64), thr[t:t + 1], t == vectors.T - 1)


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
