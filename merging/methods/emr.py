"""EMR-Merging (Huang et al., NeurIPS 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging"),
following the official code (github harveyhuang18/EMR_Merging, merge_vit/src/main_emr_merging.py ``emr_merge``).

Over the whole flat vector (no hyperparameters):
* Elect: γ = +1 where Σt τt > 0, else −1 (the code's ``(mean > 0)·2 − 1``: entries summing to 0 get −1, where the
  paper's sign(·) would give 0).
* Masks: Mt = 1{τt ⊙ γ > 0}.
* Unified vector: τuni = γ ⊙ maxt |Mt ⊙ τt|.
* Rescalers: λt = Σ_e mean_e|τt| / Σ_e mean_e|Mt ⊙ τuni|, a sum over parameter tensors e of per-tensor means
  (the code's per-key ``torch.mean``; the paper writes whole-vector sums Σ|τt| / Σ|Mt ⊙ τuni|, which weight
  tensors by size).  λt = 0 when Mt ⊙ τuni is 0 everywhere (θ̂t = θ0 either way; the code divides by zero).
* Task t is served by θ̂t = θ0 + λt·Mt ⊙ τuni (``MergeResult.task_masks`` / ``task_scales``; ``delta`` = τuni).

On CPU one compiled kernel per cache-sized chunk (:func:`merging.kernels.emr_chunk`, reading each τt from memory
once) elects the signs, computes τuni, packs the masks and accumulates the per-tensor sums (no P-sized
temporaries); on CUDA whole-vector torch ops.  Sums are accumulated in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..chunks import CHUNK, map_chunks
from ..functional import segment_sum
from ..maskset import MaskSet
from ..registry import MergeMethod, MergeResult, register


def _entry_starts(space) -> np.ndarray:
    return np.array([e.offset for e in space.index.entries], dtype=np.int64)


def _chunked(space, masks: MaskSet) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(τuni, per-entry Σ|τt| (T, E), per-entry Σ|Mt ⊙ τuni| (T, E)) by one compiled kernel per chunk, which reads
    each τt once; an entry's sum is the float64 pairwise sum of its part in each chunk, added in chunk order."""
    T, E = space.T, len(space.index)
    stack, rows = space.float32_rows()
    uni = torch.empty(space.P, dtype=torch.float32)
    out, packed = uni.numpy(), masks.packed.numpy()
    starts = _entry_starts(space)

    def body(a: int, b: int):
        first = int(np.searchsorted(starts, a, side="right")) - 1
        last = int(np.searchsorted(starts, b, side="left"))
        cuts = np.maximum(starts[first:last], a) - a  # entry starts inside [a, b), first one clipped to a
        numer, denom = np.empty((T, last - first)), np.empty((T, last - first))
        kernels.emr_chunk(stack, rows, a, b, cuts, out, packed, numer, denom)
        return first, numer, denom

    numer_all, denom_all = np.zeros((T, E)), np.zeros((T, E))
    for first, numer, denom in map_chunks(space.P, body, CHUNK):
        numer_all[:, first:first + numer.shape[1]] += numer
        denom_all[:, first:first + denom.shape[1]] += denom
    return uni, numer_all, denom_all


def _whole(space, total: torch.Tensor, masks: MaskSet) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The same with whole-vector torch ops (the CUDA code path)."""
    positive = total > 0
    magnitude = torch.zeros(space.P, dtype=torch.float32, device=space.device)
    numer = []
    for t in range(space.T):
        tau = space.tau(t)
        mask = torch.where(positive, tau > 0, tau < 0)
        masks.set(t, mask)
        numer.append(segment_sum(tau.abs().double(), space.index))
        torch.maximum(magnitude, tau.abs() * mask, out=magnitude)
    denom = [segment_sum((magnitude * masks.get(t)).double(), space.index) for t in range(space.T)]
    uni = torch.where(positive, magnitude, -magnitude)
    return uni, torch.stack(numer).cpu().numpy(), torch.stack(denom).cpu().numpy()


def emr_parts(space, progress) -> tuple[torch.Tensor, MaskSet, list[float]]:
    """(τuni, masks Mt, rescalers λt) — see the module docstring."""
    masks = MaskSet.empty(space.task_names, space.P, space.device, "emr")
    if space.float32_rows() is not None:  # τt are views of one float32 CPU stack
        progress(0.0, "EMR: signs, unified vector, masks and rescalers")
        uni, numer, denom = _chunked(space, masks)
    else:
        progress(0.0, "EMR: electing signs")
        total = space.sum_tau()
        progress(0.2, "EMR: unified vector, masks and rescalers")
        uni, numer, denom = _whole(space, total, masks)
    numel = np.array([max(e.numel, 1) for e in space.index.entries], dtype=np.float64)
    scales_num, scales_den = (numer / numel).sum(1), (denom / numel).sum(1)
    scales = [float(n / d) if d > 0 else 0.0 for n, d in zip(scales_num, scales_den)]
    return uni, masks, scales


def run(space, params, progress, context=None) -> MergeResult:
    uni, masks, scales = emr_parts(space, progress)
    return MergeResult("emr", params, uni, masks={"emr": masks}, task_masks=masks, task_scales=scales,
                       info={f"rescaler_{task}": s for task, s in zip(space.task_names, scales)})


METHOD = register(MergeMethod(
    "emr", "EMR-Merging",
    "Keep one unified task vector (elected sign, largest agreeing magnitude) plus a tiny per-task mask and one "
    "rescaling number per task; no hyperparameters.",
    "Huang et al., EMR-Merging: Tuning-Free High-Performance Model Merging, NeurIPS 2024",
    (), run))
