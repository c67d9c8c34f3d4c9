"""TALL masks (Wang et al., ICML 2024, "Localizing Task Information for Improved Model Merging and Compression").

τMTL = Σt τt (TA base) or TIES(K, dis-sum) (TIES base); mask mt = 1{|τt| > λt·|τMTL − τt|} (strict >, as the
official code); task t is served by θ̂t = θ0 + mt ⊙ τMTL.  The masks (1 bit/param/task) plus θ0 and τMTL are the
compressed form (see :mod:`merging.compressed`).  λt is one value or one per task (grid 0.2…0.6, chosen on
validation data; 0.6 without it, as FusionBench).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..chunks import map_chunks, use_numpy
from ..maskset import MaskSet
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from .ties import ties_vector

LAMBDA_GRID = (0.2, 0.3, 0.4, 0.5, 0.6)
TALL_LAMBDA = Param("tall_lambda", float, 0.6, "TALL mask threshold λt: keep where |τt| > λt·|τMTL − τt|",
                    low=0.0, high=10.0, per_task=True, step=0.05, grid=LAMBDA_GRID)
BASE = Param("base", str, "ta", "multi-task vector τMTL: Task Arithmetic sum (ta) or TIES dis-sum (ties)",
             choices=("ta", "ties"))
TIES_K = Param("ties_k", float, 20.0, "TIES trim percent for the ties base", low=0.0, high=100.0, step=1.0,
               when=("base", "ties"))


def multitask_vector(space, base: str, ties_k: float, progress):
    """τMTL: Σt τt, or the TIES dis-sum merge (trim masks returned too)."""
    if base == "ties":
        merged, trims, _, _ = ties_vector(space, ties_k, "sum", progress)
        return merged, trims
    return space.sum_tau(), None


def tall_masks(space, tau_mtl: torch.Tensor, lambdas, progress) -> MaskSet:
    """mt = 1{|τt| > λt·|τMTL − τt|} for every task.  On CPU the compiled chunk kernel
    (:func:`merging.kernels.tall_bits`): every task per chunk when the τt are views of one float32 stack, else one
    task per pass."""
    masks = MaskSet.empty(space.task_names, space.P, space.device, "tall")
    if not use_numpy(tau_mtl):
        for t in range(space.T):
            progress(t / space.T, f"TALL mask {space.task_names[t]}")
            tau = space.tau(t)
            masks.set(t, tau.abs() > lambdas[t] * (tau_mtl - tau).abs())
        return masks
    mtl, packed = tau_mtl.numpy(), masks.packed.numpy()
    lams = np.array([lambdas[t] for t in range(space.T)], dtype=np.float32)

    def sweep(stack, rows, first: int, stop: int) -> None:  # tasks first … stop − 1
        map_chunks(space.P, lambda a, b: kernels.tall_bits(stack, rows, lams[first:stop], mtl[a:b], a, b,
                                                           packed[first:stop]))

    views = space.float32_rows()
    if views is not None:
        progress(0.0, "TALL masks")
        sweep(*views, 0, space.T)
    else:
        for t in range(space.T):
            progress(t / space.T, f"TALL mask {space.task_names[t]}")
            sweep(space.tau(t).numpy()[None], np.zeros(1, dtype=np.int64), t, t + 1)
    return masks


def run(space, params, progress, context=None) -> MergeResult:
    tau_mtl, trims = multitask_vector(space, params["base"], params["ties_k"], progress.sub(0.0, 0.5))
    masks = tall_masks(space, tau_mtl, params["tall_lambda"], progress.sub(0.5, 1.0))
    extra = {"ties_trim": trims} if trims is not None else {}
    return MergeResult("tall", params, tau_mtl, masks={"tall": masks, **extra}, task_masks=masks)


METHOD = register(MergeMethod(
    "tall", "TALL masks",
    "Keep one shared merged model plus a tiny per-task on/off mask that recovers each task (compression).",
    "Wang et al., Localizing Task Information for Improved Model Merging and Compression, ICML 2024",
    (TALL_LAMBDA, BASE, TIES_K), run))
