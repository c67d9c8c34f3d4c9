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
    byte-sized sign/count/conflict arrays; on CPU the passes are compiled chunk kernels (:func:`_chunked`)."""
    T, P, device = vectors.T, vectors.P, vectors.device
    trims = MaskSet.empty(vectors.task_names, P, device, "ties_trim")
    total = torch.zeros(P, dtype=torch.float32, device=device)  # Σt τ̂t first, then the disjoint sum
    conflicts = torch.zeros(P, dtype=torch.bool, device=device)
    if use_numpy(total):
        return total, trims, conflicts, _chunked(vectors, k, merge == "mean", trims, total, conflicts, progress)
    thresholds = []
    for t in range(T):
        progress(t / (2 * T), f"trim {vectors.task_names[t]}")
        tau = vectors.tau(t)
        threshold = top_fraction_threshold(tau, k)
        keep = tau.abs() >= threshold
        trims.set(t, keep)
        total.addcmul_(tau, keep)
        thresholds.append(float(threshold))
    gamma = _elect(total)
    total.zero_()
    count = torch.zeros(P, dtype=torch.uint8 if T < 256 else torch.int32, device=device) if merge == "mean" \
        else None
    for t in range(T):  # w = γ·τ̂t; conflicts |= w < 0; count += w > 0; total += max(w, 0)
        progress((T + t) / (2 * T), f"disjoint merge {vectors.task_names[t]}")
        work = vectors.tau(t) * gamma
        work.mul_(trims.get(t))
        conflicts |= work < 0
        if count is not None:
            count += work > 0
        total += work.clamp_min_(0)
    total *= gamma
    if count is not None:
        total /= count.clamp_min_(1)
    return total, trims, conflicts, thresholds


def _elect(total: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σt τ̂t) as int8, zeros replaced by the majority sign sign(Σ γ)."""
    gamma = torch.sign(total).to(torch.int8)
    majority = int(torch.count_nonzero(gamma > 0)) - int(torch.count_nonzero(gamma < 0))
    gamma.masked_fill_(gamma == 0, (majority > 0) - (majority < 0))
    return gamma


def _chunked(vectors, k: float, mean: bool, trims: MaskSet, total, conflicts, progress) -> list[float]:
    """The CPU path (:mod:`merging.kernels`), reading each τt three times, its floor: the selection of its
    threshold, the trim (with the election after the last task) and the disjoint merge.  When the τt are views of
    one float32 stack, trim and merge sweep every task per chunk (the sums stay in cache); otherwise (DARE's
    computed τ̃t) one task per pass, the trim made with its selection.  Same bits as the torch path."""
    T, P = vectors.T, vectors.P
    views = vectors.float32_rows()
    tot, conf, packed = total.numpy(), conflicts.numpy(), trims.packed.numpy()
    count, gamma = np.zeros(P, dtype=np.uint8 if T < 256 else np.int32), np.empty(P, dtype=np.int8)
    thresholds, alone = np.empty(T, dtype=np.float32), np.zeros(1, dtype=np.int64)

    def trim(stack, rows, first: int, stop: int) -> int:  # tasks first … stop − 1; γ's balance after the last one
        return sum(map_chunks(P, lambda a, b: kernels.ties_trim(stack, rows, thresholds[first:stop], a, b, tot[a:b],
                                                                packed[first:stop], gamma[a:b], stop == T)))

    def merge(stack, rows, first: int, stop: int) -> None:
        map_chunks(P, lambda a, b: kernels.ties_disjoint(stack, rows, thresholds[first:stop], gamma[a:b], fill, a, b,
                                                         tot[a:b], count[a:b], conf[a:b], mean, stop == T))

    for t in range(T):
        progress(t / (2 * T), f"trim {vectors.task_names[t]}")
        tau = vectors.tau(t)
        thresholds[t] = top_fraction_threshold(tau, k)
        if views is None:
            balance = trim(tau.numpy()[None], alone, t, t + 1)
    if views is not None:
        balance = trim(*views, 0, T)
    fill = np.float32((balance > 0) - (balance < 0))
    if views is not None:
        progress(0.5, "disjoint merge")
        merge(*views, 0, T)
    else:
        for t in range(T):
            progress((T + t) / (2 * T), f"disjoint merge {vectors.task_names[t]}")
            merge(vectors.tau(t).numpy()[None], alone, t, t + 1)
    return [float(v) for v in thresholds]


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
