"""PCB-Merging (Du et al., NeurIPS 2024), following the official ViT code.

Per task t over the whole flattened vector, with Norm(x) = (x − min x)/(max x − min x):
1. Clip: a_t = clip(|τt|, s₍⌊P·q⌋₎, s₍⌊P·(1−q)−1⌋₎) (s = sorted |τt|, 0-based, as the code's ``clamp``); τc = sign(τt)·a_t.
2. Intra-balancing: intra_t = exp(T · Norm(a_t)²).
3. Inter-balancing: inter_t = tanh(τt ⊙ Σj ñj), ñj = sign(τj)·Norm(a_j).
4. β_t = intra_t ⊙ inter_t; s_t = Norm(max(β_t, b₍⌊P·(1−r)⌋₎)) (b = sorted β_t): 0 for dropped, (0, 1] for kept.
5. θ = θ0 + Σt λt s_t ⊙ τc,t / max(Σt s_t, 1e-12).
Order statistics use the exact selection of :mod:`merging.select`; memory is O(P) beyond the stack.
"""
from __future__ import annotations

import torch

from ..maskset import MaskSet
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from ..select import kth_smallest


def _order_stat(x: torch.Tensor, position: int) -> torch.Tensor:
    """Element ``position`` (0-based) of sorted(x)."""
    return kth_smallest(x, min(max(position, 0), x.numel() - 1) + 1)


def _clipped(tau: torch.Tensor, q: float):
    magnitude = tau.abs()
    n = magnitude.numel()
    low = _order_stat(magnitude, int(n * q))
    high = _order_stat(magnitude, int(n * (1 - q) - 1))
    clipped = magnitude.clamp_(low, high)
    span = high - low
    norm = (clipped - low) / span if span > 0 else torch.zeros_like(clipped)
    return clipped, norm


def run(space, params, progress, context=None) -> MergeResult:
    T, q, r = space.T, params["clip_q"], params["r"]
    direction = torch.zeros(space.P, dtype=torch.float32, device=space.device)
    for t in range(T):
        progress(t / (2 * T), f"normalise {space.task_names[t]}")
        tau = space.tau(t)
        _, norm = _clipped(tau, q)
        direction += torch.sign(tau) * norm
    numerator = torch.zeros_like(direction)
    denominator = torch.zeros_like(direction)
    keeps = MaskSet.empty(space.task_names, space.P, space.device, "pcb_keep")
    for t in range(T):
        progress((T + t) / (2 * T), f"balance and drop {space.task_names[t]}")
        tau = space.tau(t)
        clipped, norm = _clipped(tau, q)
        beta = torch.exp(T * norm.square_()) * torch.tanh(tau * direction)
        floor = _order_stat(beta, int(space.P * (1 - r)))
        top = beta.max()
        score = (beta.clamp_(min=floor) - floor) / (top - floor) if top > floor else torch.zeros_like(beta)
        keeps.set(t, score > 0)
        numerator += params["lam"][t] * score * torch.sign(tau) * clipped
        denominator += score
    return MergeResult("pcb", params, numerator / denominator.clamp_min(1e-12), masks={"pcb_keep": keeps})


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
           step=0.05, grid=(0.8, 0.9, 1.0, 1.1, 1.2, 1.3))), run))
