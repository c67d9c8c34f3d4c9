"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: per task over the whole model keep |τt| ≥ the k-th smallest |τt|, k = P − ⌊P·K/100⌋ → τ̂t.
2. Elect: γ = sign(Σt τ̂t); where γ = 0 use the majority sign sign(Σ γ).
3. Disjoint merge over tasks whose τ̂t is nonzero with sign γ: dis-mean = sum / max(1, count), dis-sum = sum.
θ = θ0 + λ τm.  Runs in O(P) work space: two passes over the tasks, trims kept as bit masks.
"""
from __future__ import annotations

import torch

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
    """TIES-merged τm (unscaled), trim masks and per-element sign-conflict flags.

    ``vectors`` is anything with ``T``, ``P``, ``device``, ``task_names`` and ``tau(t)`` (a task-vector space or
    a DARE-dropped view of one)."""
    T, device = vectors.T, vectors.device
    trims = MaskSet.empty(vectors.task_names, vectors.P, device, "ties_trim")
    elected = torch.zeros(vectors.P, dtype=torch.float32, device=device)
    thresholds = []
    for t in range(T):
        progress(t / (2 * T), f"trim {vectors.task_names[t]}")
        tau = vectors.tau(t)
        magnitude = tau.abs()
        threshold = top_fraction_threshold(magnitude, k)
        keep = magnitude >= threshold
        del magnitude
        trims.set(t, keep)
        elected += torch.where(keep, tau, 0.0)
        thresholds.append(float(threshold))
    gamma = torch.sign(elected)
    majority = torch.sign(gamma.sum())
    gamma = torch.where(gamma == 0, majority, gamma)
    del elected
    total = torch.zeros(vectors.P, dtype=torch.float32, device=device)
    agree_count = torch.zeros(vectors.P, dtype=torch.int16 if T < 32000 else torch.int32, device=device)
    nonzero_count = torch.zeros_like(agree_count)
    for t in range(T):
        progress((T + t) / (2 * T), f"disjoint merge {vectors.task_names[t]}")
        tau = vectors.tau(t)
        keep = trims.get(t)
        agree = keep & (tau * gamma > 0)
        total += torch.where(agree, tau, 0.0)
        agree_count += agree
        nonzero_count += keep & (tau != 0)
    conflicts = nonzero_count > agree_count
    if merge == "mean":
        total /= agree_count.clamp_min(1)
    return total, trims, conflicts, thresholds


def run(space, params, progress, context=None) -> MergeResult:
    merged, trims, conflicts, thresholds = ties_vector(space, params["k"], params["merge"], progress)
    table = per_layer_rate(space.index, conflicts, "sign_conflicts")
    return MergeResult("ties", params, params["lam"] * merged, masks={"ties_trim": trims},
                       tables={"sign_conflicts": table},
                       info={"thresholds": thresholds, "sign_conflict_rate": float(conflicts.float().mean())})


METHOD = register(MergeMethod(
    "ties", "TIES-Merging",
    "Keep each task's largest changes, vote on a sign per weight, and average only the agreeing changes.",
    "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
    (K_PARAM, MERGE_PARAM, lam_param(1.0, grid=(0.8, 1.0, 1.2, 1.5, 1.8, 2.0, 2.5))), run))
