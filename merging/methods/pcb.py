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

import torch

from ..maskset import MaskSet
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from ..select import kth_smallest


INTER = Param("inter", str, "tanh_sum", "inter-balancing: tanh_sum = tanh(τt ⊙ Σj ñj) (ViT code pcb.py), "
              "sum_tanh = Σj tanh(ñt ⊙ ñj) (pcb_ES.py)", choices=("tanh_sum", "sum_tanh"))


def _order_stat(x: torch.Tensor, position: int) -> torch.Tensor:
    """Element ``position`` (0-based) of sorted(x)."""
    return kth_smallest(x, min(max(position, 0), x.numel() - 1) + 1)


def _bounds(tau: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    magnitude = tau.abs()
    n = magnitude.numel()
    return _order_stat(magnitude, int(n * q)), _order_stat(magnitude, int(n * (1 - q) - 1))


def _clipped(tau: torch.Tensor, q: float, bounds=None):
    low, high = bounds if bounds is not None else _bounds(tau, q)
    clipped = tau.abs().clamp_(low, high)
    span = high - low
    norm = (clipped - low) / span if span > 0 else torch.zeros_like(clipped)
    return clipped, norm


def balanced_terms(space, params, progress):
    """Yield (t, s_t, s_t ⊙ τc,t) per task: the PCB score and the scored clipped task vector (steps 1–4)."""
    T, q, r = space.T, params["clip_q"], params["r"]
    bounds = []
    direction = torch.zeros(space.P, dtype=torch.float32, device=space.device)
    for t in range(T):
        progress(t / (2 * T), f"normalise {space.task_names[t]}")
        tau = space.tau(t)
        bounds.append(_bounds(tau, q))
        if params["inter"] == "tanh_sum":
            direction += torch.sign(tau) * _clipped(tau, q, bounds[t])[1]
    for t in range(T):
        progress((T + t) / (2 * T), f"balance and drop {space.task_names[t]}")
        tau = space.tau(t)
        clipped, norm = _clipped(tau, q, bounds[t])
        if params["inter"] == "tanh_sum":
            inter = torch.tanh(tau * direction)
        else:
            signed = torch.sign(tau) * norm
            inter = torch.zeros_like(signed)
            for j in range(T):
                other = space.tau(j)
                inter += torch.tanh(signed * torch.sign(other) * _clipped(other, q, bounds[j])[1])
        beta = torch.exp(T * norm.square_()) * inter
        floor = _order_stat(beta, int(space.P * (1 - r)))
        top = beta.max()
        score = (beta.clamp_(min=floor) - floor) / (top - floor) if top > floor else torch.zeros_like(beta)
        yield t, score, score * torch.sign(tau) * clipped


def run(space, params, progress, context=None) -> MergeResult:
    numerator = torch.zeros(space.P, dtype=torch.float32, device=space.device)
    denominator = torch.zeros_like(numerator)
    keeps = MaskSet.empty(space.task_names, space.P, space.device, "pcb_keep")
    for t, score, scored in balanced_terms(space, params, progress):
        keeps.set(t, score > 0)
        numerator += params["lam"][t] * scored
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
           step=0.05, grid=(0.8, 0.9, 1.0, 1.1, 1.2, 1.3)),
     INTER), run))
