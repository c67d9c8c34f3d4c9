"""PCB-Merging (Du et al., NeurIPS 2024), following the official ViT code.

Per task t over the whole flattened vector, with Norm(x) = (x − min x)/(max x − min x):
1. Clip: a_t = clip(|τt|, s₍⌊P·q⌋₎, s₍⌊P·(1−q)−1⌋₎) (s = sorted |τt|, 0-based, as the code's ``clamp``); τc = sign(τt)·a_t.
2. Intra-balancing: intra_t = exp(T · Norm(a_t)²).
3. Inter-balancing (``inter``): ``tanh_sum`` (the ViT code pcb.py, default): inter_t = tanh(τt ⊙ Σj ñj),
   ñj = sign(τj)·Norm(a_j); ``sum_tanh`` (pcb_ES.py, the code of PCB + ES): inter_t = Σj tanh(ñt ⊙ ñj), j = t
   included (O(T²·P) time, from each task's two clip bounds: no (T, P) temporaries).
4. β_t = intra_t ⊙ inter_t; s_t = Norm(max(β_t, b₍⌊P·(1−r)⌋₎)) (b = sorted β_t): 0 for dropped, (0, 1] for kept.
5. θ = θ0 + Σt λt s_t ⊙ τc,t / max(Σt s_t, 1e-12).
Order statistics use the exact selection of :mod:`merging.select`; memory is O(P) beyond the stack.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..chunks import map_ranges, scratch, use_numpy
from ..maskset import MaskSet
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from ..select import kth_smallest


INTER = Param("inter", str, "tanh_sum", "inter-balancing: tanh_sum = tanh(τt ⊙ Σj ñj) (ViT code pcb.py), "
              "sum_tanh = Σj tanh(ñt ⊙ ñj) (pcb_ES.py)", choices=("tanh_sum", "sum_tanh"))


def _order_stat(x: torch.Tensor, position: int, absolute: bool = False) -> torch.Tensor:
    """Element ``position`` (0-based, clamped to the valid range) of sorted(x) (of sorted |x| with ``absolute``)."""
    return kth_smallest(x, min(max(position, 0), x.numel() - 1) + 1, absolute=absolute)


class _Clip:
    """Task t's clip bounds [low, high] (order statistics of |τt|, computed once) and the per-chunk a_t, Norm(a_t)."""

    def __init__(self, tau: torch.Tensor, q: float):
        n = tau.numel()
        self.low, self.high = _order_stat(tau, int(n * q), True), _order_stat(tau, int(n * (1 - q) - 1), True)
        self.span = self.high - self.low
        self.spread = bool(self.span > 0)
        self.args = tuple(np.float32(v) for v in (self.low, self.high, self.span)) + (self.spread,)  # for kernels

    def clipped(self, tau: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """a_t = clamp(|τt|, low, high) into ``out``."""
        return torch.abs(tau, out=out).clamp_(self.low, self.high)

    def norm(self, tau: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Norm(a_t) = (a_t − low) / (high − low) into ``out`` (0 where high = low)."""
        clipped = self.clipped(tau, out)
        return clipped.sub_(self.low).div_(self.span) if self.spread else clipped.zero_()


def balanced_terms(space, params, progress, add) -> MaskSet:
    """Steps 1–4: call ``add(t, a, b, s_t, s_t ⊙ τc,t)`` for every task t and range [a, b) of the vector (cache-sized
    chunks on CPU, concurrently for different ranges; the whole vector on GPU); returns PCB's keep masks 1{s_t > 0}.
    On CPU the chunk bodies are compiled kernels (:mod:`merging.kernels`) around torch's exp and tanh, elsewhere
    elementwise torch ops: the same IEEE operations, so the same bits.  Beyond the stack: direction, one (P,)
    workspace (β_t) and per-thread chunk buffers."""
    T, P, q, r = space.T, space.P, params["clip_q"], params["r"]
    keeps = MaskSet.empty(space.task_names, P, space.device, "pcb_keep")
    work = space.workspace()
    over = lambda body: map_ranges(P, body, space.device)  # noqa: E731
    tanh_sum = params["inter"] == "tanh_sum"
    clips = []
    direction = torch.zeros(P, dtype=torch.float32, device=space.device) if tanh_sum else None
    compiled = use_numpy(work)
    for t in range(T):
        progress(t / (2 * T), f"normalise {space.task_names[t]}")
        tau = space.tau(t)
        clip = _Clip(tau, q)
        clips.append(clip)
        if tanh_sum and compiled and use_numpy(tau):  # direction += sign(τt) · Norm(a_t)
            over(lambda a, b: kernels.pcb_direction(tau[a:b].numpy(), *clip.args, direction[a:b].numpy()))
        elif tanh_sum:
            over(lambda a, b: direction[a:b].add_(torch.sign(tau[a:b], out=scratch(work[a:b], 0))
                                                  .mul_(clip.norm(tau[a:b], work[a:b]))))
    for t in range(T):
        progress((T + t) / (2 * T), f"balance and drop {space.task_names[t]}")
        tau, clip = space.tau(t), clips[t]
        fused = compiled and use_numpy(tau)

        def beta(a: int, b: int) -> torch.Tensor:  # β_t = exp(T · Norm(a_t)²) ⊙ inter_t into work; its maximum
            if tanh_sum and fused:
                intra, inter = work[a:b], scratch(work[a:b], 0)
                kernels.pcb_beta_args(tau[a:b].numpy(), direction[a:b].numpy(), *clip.args, np.float32(T),
                                      intra.numpy(), inter.numpy())
                return torch.tensor(kernels.mul_max(intra.exp_().numpy(), inter.tanh_().numpy()))
            norm = clip.norm(tau[a:b], work[a:b])
            if tanh_sum:
                inter = torch.mul(tau[a:b], direction[a:b], out=scratch(norm, 0)).tanh_()
            else:
                signed = torch.sign(tau[a:b], out=scratch(norm, 1)).mul_(norm)
                inter = scratch(norm, 0).zero_()
                for j, clip_j in enumerate(clips):
                    other = space.tau_chunk(j, a, b)
                    term = torch.sign(other, out=scratch(norm, 2)).mul_(signed)
                    inter += term.mul_(clip_j.norm(other, scratch(norm, 3))).tanh_()
            return norm.square_().mul_(T).exp_().mul_(inter).max()

        top = torch.stack(over(beta)).max()
        floor = _order_stat(work, int(P * (1 - r)))
        scale = top - floor if bool(top > floor) else None

        def score(a: int, b: int) -> None:  # s_t = Norm(max(β_t, floor)) in place; s_t ⊙ sign(τt) ⊙ a_t
            s, scored = work[a:b], scratch(work[a:b], 0)
            if fused:
                kernels.pcb_score(s.numpy(), tau[a:b].numpy(), *clip.args[:2], np.float32(floor),
                                  np.float32(scale if scale is not None else 1), scale is not None, scored.numpy(),
                                  keeps.packed[t, a // 8:(b + 7) // 8].numpy())
            else:
                s = s.clamp_(min=floor).sub_(floor).div_(scale) if scale is not None else s.zero_()
                keeps.set_chunk(t, a, s > 0)
                scored = torch.sign(tau[a:b], out=scored).mul_(s).mul_(clip.clipped(tau[a:b], scratch(s, 1)))
            add(t, a, b, s, scored)

        over(score)
    return keeps


def run(space, params, progress, context=None) -> MergeResult:
    numerator = torch.zeros(space.P, dtype=torch.float32, device=space.device)
    denominator = torch.zeros_like(numerator)

    def add(t: int, a: int, b: int, score: torch.Tensor, scored: torch.Tensor) -> None:
        numerator[a:b] += scored.mul_(params["lam"][t])
        denominator[a:b] += score

    keeps = balanced_terms(space, params, progress, add)
    map_ranges(space.P, lambda a, b: numerator[a:b].div_(denominator[a:b].clamp_min_(1e-12)), space.device)
    return MergeResult("pcb", params, numerator, masks={"pcb_keep": keeps})


METHOD = register(MergeMethod(
    "pcb", "PCB-Merging",
    "Score every weight by how important it is within its task and how well it agrees across tasks; "
    "keep the top few percent and blend by score.",
    "Du et al., Parameter Competition Balancing for Model Merging, NeurIPS 2024",
    (Param("r", float, 0.05, "fraction of each task's weights kept by PCB score (0.05 ViT, 0.2 NLP)",
           low=0.001, high=1.0, step=0.005, grid=(0.05, 0.1, 0.2)),
     Param("clip_q", float, 0.01, "magnitude clipping quantile q (clip |τ| to [q, 1−q])", low=0.0, high=0.49,
           step=0.005),
     Param("lam", float, 1.2, "per-task scaling λt (ES searches [0.8, 1.3])", low=0.0, high=3.0, per_task=True,
           step=0.05, grid=(0.8, 0.9, 1.0, 1.1, 1.2, 1.3)),
     INTER), run))
