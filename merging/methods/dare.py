"""DARE (Yu et al., ICML 2024): drop and rescale, then merge with Task Arithmetic or TIES.

Per task and parameter m ~ Bernoulli(p) drops, τ̃t = (1 − m) ⊙ τt / (1 − p) (or, as in mergekit, rescaled so
that ‖τ̃t‖₁ = ‖τt‖₁).  The masks are kept packed (1 bit per entry), keeping memory at one stack plus O(P).

Drop masks (``generator``):
* ``philox`` (default): counter-based.  Entry i of task t, in chunk c = ⌊i / 2^18⌋ at position j = i mod 2^18, is dropped
  when u < ⌊p · 2^32⌋, where u is the j-th uint32 that numpy's ``Generator(Philox(key=(seed, t),
  counter=(0, c, 0, 0))).integers(0, 2^32, dtype=uint32)`` draws for that chunk.  Chunks are independent, so
  they are drawn in parallel; the masks are the same on any thread count and on CPU and GPU (drawn on the CPU,
  copied packed).
* ``torch``: the previous stream, ``torch.rand(P, generator=manual_seed(seed·1000003 + t)) ≥ p`` on the space's
  device (one sequential draw per task; reproducible on the same kind of device only).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..chunks import map_chunks
from ..maskset import MaskSet
from ..maskstats import per_layer_rate
from ..params import Param
from ..registry import MergeMethod, MergeResult, lam_param, register
from .ties import K_PARAM, MERGE_PARAM, ties_vector


class DroppedVectors:
    """A view of a task-vector space whose ``tau(t)`` is the DARE-dropped, rescaled τ̃t."""

    def __init__(self, space, p: float, seed: int, rescale: str, generator: str = "philox"):
        self.space, self.p, self.rescale = space, p, rescale
        self.T, self.P, self.device, self.task_names = space.T, space.P, space.device, space.task_names
        self.keeps = MaskSet.empty(space.task_names, space.P, space.device, "dare_keep")
        for t in range(space.T):
            if generator == "philox":
                self.keeps.packed[t].copy_(torch.from_numpy(philox_keep_packed(self.P, p, seed, t)))
            else:
                draw = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + t)
                self.keeps.set(t, torch.rand(self.P, generator=draw, device=self.device) >= p)

    def float32_rows(self) -> None:
        """None: the τ̃t are computed, not views of a stack."""
        return None

    def tau(self, t: int) -> torch.Tensor:
        tau = self.space.tau(t)
        kept = torch.where(self.keeps.get(t), tau, 0.0)
        if self.rescale == "l1":
            norm = kept.abs().sum()
            return kept * (tau.abs().sum() / norm) if norm > 0 else kept
        return kept / (1.0 - self.p)


DRAW_CHUNK = 1 << 18  # entries per Philox counter block: part of the stream's definition, never tune it


def philox_keep_packed(P: int, p: float, seed: int, t: int) -> np.ndarray:
    """Task t's keep mask (u ≥ ⌊p·2^32⌋, see the module docstring), packed in numpy packbits order."""
    threshold = np.uint32(min(int(p * 2**32), 2**32 - 1))
    out = np.empty((P + 7) // 8, dtype=np.uint8)

    def body(a: int, b: int) -> None:
        draw = np.random.Generator(np.random.Philox(key=[seed, t], counter=[0, a // DRAW_CHUNK, 0, 0]))
        out[a // 8:(b + 7) // 8] = np.packbits(draw.integers(0, 2**32, size=b - a, dtype=np.uint32) >= threshold)

    map_chunks(P, body, DRAW_CHUNK)
    return out


def run(space, params, progress, context=None) -> MergeResult:
    progress(0.0, "drawing drop masks")
    dropped = DroppedVectors(space, params["p"], params["seed"], params["rescale"], params["generator"])
    masks, tables, info = {"dare_keep": dropped.keeps}, {}, {}
    if params["base"] == "ties":
        merged, trims, conflicts, thresholds = ties_vector(dropped, params["k"], params["merge"], progress)
        masks["ties_trim"] = trims
        tables["sign_conflicts"] = per_layer_rate(space.index, conflicts, "sign_conflicts")
        info = {"thresholds": thresholds, "sign_conflict_rate": int(torch.count_nonzero(conflicts)) / space.P}
    else:
        merged = torch.zeros(space.P, dtype=torch.float32, device=space.device)
        for t in range(space.T):
            progress(t / space.T, f"drop and rescale {space.task_names[t]}")
            merged += dropped.tau(t)
    return MergeResult("dare", params, merged.mul_(params["lam"]), masks=masks, tables=tables, info=info)


METHOD = register(MergeMethod(
    "dare", "DARE",
    "Randomly drop most of each task's changes and scale up the rest, then merge (TA or TIES).",
    "Yu et al., Language Models are Super Mario, ICML 2024",
    (Param("p", float, 0.9, "drop probability", low=0.0, high=0.99, step=0.01, grid=(0.1, 0.3, 0.5, 0.7, 0.9)),
     Param("rescale", str, "inverse", "rescale kept entries by 1/(1−p) (inverse) or to match the L1 norm (l1)",
           choices=("inverse", "l1")),
     Param("seed", int, 0, "random seed of the drop masks", low=0, high=2**31 - 1),
     Param("generator", str, "philox", "drop-mask stream: counter-based Philox (same masks on any thread count "
           "and device) or the previous sequential torch.rand stream (torch)", choices=("philox", "torch")),
     Param("base", str, "ta", "merge the dropped vectors with Task Arithmetic (ta) or TIES (ties)",
           choices=("ta", "ties")),
     replace(K_PARAM, when=("base", "ties")), replace(MERGE_PARAM, when=("base", "ties")), lam_param(0.3)), run))
