"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: per task over the whole model keep |τt| ≥ the k-th smallest |τt|, k = P − ⌊P·K/100⌋ → τ̂t.
2. Elect: γ = sign(Σt τ̂t); where γ = 0 use the majority sign sign(Σ γ).
3. Disjoint merge over tasks whose τ̂t is nonzero with sign γ: dis-mean = sum / max(1, count), dis-sum = sum.
θ = θ0 + λ τm.  Runs in O(P) work space: two passes over the tasks, trims kept as bit masks.
"""
from __future__ import annotations

import numpy as np
import torch

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

    ``vectors`` is anything with ``T``, ``P``, ``device``, ``task_names``, ``tau(t)`` and ``workspace()`` (a
    task-vector space or a DARE-dropped view of one).  Beyond the stack it holds one float32 workspace, the
    result, the packed trims and byte-sized sign/count/conflict arrays; on CPU the passes run chunked (numpy)."""
    T, P, device = vectors.T, vectors.P, vectors.device
    trims = MaskSet.empty(vectors.task_names, P, device, "ties_trim")
    total = torch.zeros(P, dtype=torch.float32, device=device)  # Σt τ̂t first, then the disjoint sum
    magnitude = vectors.workspace()
    thresholds = []
    for t in range(T):
        progress(t / (2 * T), f"trim {vectors.task_names[t]}")
        tau = vectors.tau(t)
        _magnitude(tau, magnitude)
        threshold = top_fraction_threshold(magnitude, k)
        _trim(tau, magnitude, threshold, trims, t, total)
        thresholds.append(float(threshold))
    gamma = _elect(total)
    total.zero_()
    count = torch.zeros(P, dtype=torch.uint8 if T < 256 else torch.int32, device=device) if merge == "mean" \
        else None
    conflicts = torch.zeros(P, dtype=torch.bool, device=device)
    for t in range(T):
        progress((T + t) / (2 * T), f"disjoint merge {vectors.task_names[t]}")
        _disjoint_add(vectors.tau(t), gamma, trims, t, conflicts, count, total)
    _signed_mean(total, gamma, count)
    return total, trims, conflicts, thresholds


def _signed_mean(total: torch.Tensor, gamma: torch.Tensor, count: torch.Tensor | None) -> None:
    """total ← γ·total (/ max(1, count) for dis-mean), in place (chunked on CPU: no P-sized temporaries)."""
    if not use_numpy(total):
        total *= gamma
        if count is not None:
            total /= count.clamp_min_(1)
        return
    tot, sign, cnt = total.numpy(), gamma.numpy(), None if count is None else count.numpy()

    def body(a: int, b: int) -> None:
        tot[a:b] *= sign[a:b]
        if cnt is not None:
            tot[a:b] /= np.maximum(cnt[a:b], 1)

    map_chunks(tot.size, body)


def _elect(total: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σt τ̂t) as int8, zeros replaced by the majority sign sign(Σ γ)."""
    if not use_numpy(total):
        gamma = torch.sign(total).to(torch.int8)
        majority = int(torch.count_nonzero(gamma > 0)) - int(torch.count_nonzero(gamma < 0))
        gamma.masked_fill_(gamma == 0, (majority > 0) - (majority < 0))
        return gamma
    gamma = torch.empty(total.shape, dtype=torch.int8)
    src, dst = total.numpy(), gamma.numpy()

    def sign(a: int, b: int) -> int:
        np.sign(src[a:b], out=dst[a:b], casting="unsafe")
        return int(np.count_nonzero(dst[a:b] > 0)) - int(np.count_nonzero(dst[a:b] < 0))

    majority = sum(map_chunks(src.size, sign))
    fill = np.int8((majority > 0) - (majority < 0))
    map_chunks(src.size, lambda a, b: np.copyto(dst[a:b], fill, where=dst[a:b] == 0))
    return gamma


def _magnitude(tau: torch.Tensor, out: torch.Tensor) -> None:
    if use_numpy(tau):
        src, dst = tau.numpy(), out.numpy()
        map_chunks(src.size, lambda a, b: np.abs(src[a:b], out=dst[a:b]))
    else:
        torch.abs(tau, out=out)


def _trim(tau, magnitude, threshold, trims: MaskSet, t: int, elected: torch.Tensor) -> None:
    """keep = |τt| ≥ threshold → trim mask t; elected += τt·keep."""
    if not use_numpy(tau):
        keep = magnitude >= threshold
        trims.set(t, keep)
        elected.addcmul_(tau, keep)
        return
    src, mag, acc, row, thr = tau.numpy(), magnitude.numpy(), elected.numpy(), trims.packed[t].numpy(), \
        np.float32(threshold)

    def body(a: int, b: int) -> None:
        keep = mag[a:b] >= thr
        row[a // 8:(b + 7) // 8] = np.packbits(keep)
        acc[a:b] += src[a:b] * keep  # (ufunc where= is far slower)

    map_chunks(src.size, body)


def _disjoint_add(tau, gamma, trims: MaskSet, t: int, conflicts, count, total) -> None:
    """w = γ·τ̂t; conflicts |= w < 0; count += w > 0; total += max(w, 0)."""
    if not use_numpy(tau):
        work = tau * gamma
        work.mul_(trims.get(t))
        conflicts |= work < 0
        if count is not None:
            count += work > 0
        total += work.clamp_min_(0)
        return
    src, sign, row, conf, tot = tau.numpy(), gamma.numpy(), trims.packed[t].numpy(), conflicts.numpy(), \
        total.numpy()
    cnt = count.numpy() if count is not None else None

    def body(a: int, b: int) -> None:
        w = src[a:b] * sign[a:b]
        w *= np.unpackbits(row[a // 8:(b + 7) // 8], count=b - a).view(bool)
        conf[a:b] |= w < 0
        if cnt is not None:
            cnt[a:b] += w > 0
        np.maximum(w, 0, out=w)
        tot[a:b] += w

    map_chunks(src.size, body)


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
