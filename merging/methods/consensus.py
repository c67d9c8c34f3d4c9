"""Consensus Merging (Wang et al., ICML 2024): drop weights that fewer than k tasks' TALL masks select.

c = Σt mt (TALL masks); m_cons = 1{c ≥ k}; Consensus TA: θ = θ0 + λ (m_cons ⊙ Σt τt); Consensus TIES:
θ = θ0 + λ (m_cons ⊙ TIES(τ)).  k = 0 is plain TA/TIES, k = 1 drops only catastrophic weights; k > T would
keep nothing (θ0) and is refused.  Besides the TALL masks the result holds ``consensus_keep``: mt ∧ m_cons, the
weights of each task that the consensus mask keeps (their union is m_cons for k ≥ 1).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..chunks import map_chunks, use_numpy
from ..maskset import MaskSet
from ..params import Param, ParameterError
from ..registry import MergeMethod, MergeResult, lam_param, register
from .tall import BASE, TALL_LAMBDA, TIES_K, multitask_vector, tall_masks


def consensus_filter(masks: MaskSet, vector: torch.Tensor, k: int, lam: float, kept: MaskSet) -> int:
    """In place: vector ← λ · (1{c ≥ k} ⊙ vector) with c = Σt mt, and kept_t = mt ∧ 1{c ≥ k}; returns how many
    entries are kept.  On CPU one compiled chunked pass over the packed masks
    (:func:`merging.kernels.consensus_keep`)."""
    if not (use_numpy(masks.packed) and use_numpy(vector)):
        agreement = torch.zeros(masks.numel, dtype=torch.int32, device=vector.device)
        for t in range(masks.T):
            agreement += masks.get(t)
        keep = agreement >= k
        for t in range(masks.T):
            kept.set(t, masks.get(t) & keep)
        vector.masked_fill_(~keep, 0.0).mul_(lam)
        return int(torch.count_nonzero(keep))
    packed, out, values, factor = masks.packed.numpy(), kept.packed.numpy(), vector.numpy(), np.float32(lam)
    return sum(map_chunks(values.size, lambda a, b: kernels.consensus_keep(packed, k, factor, a, b, out, values[a:b])))


def run(space, params, progress, context=None) -> MergeResult:
    if params["k"] > space.T:
        raise ParameterError(f"k: {params['k']} is above the number of merged tasks ({space.T}); k > T keeps no "
                             "weight (the merge would be θ0)")
    tau_mtl, trims = multitask_vector(space, params["base"], params["ties_k"], progress.sub(0.0, 0.5))
    masks = tall_masks(space, tau_mtl, params["tall_lambda"], progress.sub(0.5, 0.95))
    kept = MaskSet.empty(space.task_names, space.P, space.device, "consensus_keep")
    count = consensus_filter(masks, tau_mtl, params["k"], params["lam"], kept)
    masks_out = {"tall": masks, "consensus_keep": kept, **({"ties_trim": trims} if trims is not None else {})}
    return MergeResult("consensus", params, tau_mtl, masks=masks_out, info={"consensus_fraction": count / space.P})


METHOD = register(MergeMethod(
    "consensus", "Consensus Merging",
    "Remove weights that matter to fewer than k tasks (selfish or useless), then merge the rest.",
    "Wang et al., Localizing Task Information for Improved Model Merging and Compression, ICML 2024",
    (Param("k", int, 2, "minimum number of tasks whose TALL mask must select a weight", low=0, high=1000,
           grid=(0, 1, 2, 3, 4)),
     BASE, lam_param(0.3), TALL_LAMBDA, TIES_K), run))
