"""CART, Centered Arithmetic with Rank-reduced Task vectors (Choi et al., Revisiting Weight Averaging for Model
Merging, arXiv 2412.12153), following the official code (JH-GEECS/CART, src/merging.py ``_merge_weights`` with
``_get_truncated_task_vectors``, configs/CART).

θavg = θ0 + (1/T) Σt τt; centred task vectors τ̄t = θt − θavg = τt − (1/T) Σs τs.  Each attention / MLP weight
matrix of τ̄t is truncated to its top k = max(1, int(ρ·r)) singular triplets (k = 0 for ρ = 0, k = r for ρ = 1,
as in the code), r = min(m, n):  θ = θavg + λ Σt SVD_k(τ̄t).  Every other tensor keeps θavg: the code adds
λ Σt τ̄t there, which is zero.

Defaults by T from the official configs (ViT-B/32): T = 8 → (λ, ρ) = (2.0, 0.12), 14 → (1.5, 0.16),
20 → (1.9, 0.32).  ``lam`` and ``rank_ratio`` accept "auto" (the default): the configured values for the nearest
of those T (ties to the smaller T), or a number.

Tables: ``spectra`` (top-64 σ per matrix of each centred τ̄t, labelled "<task> (centred)", and of the merged Δ).
"""
from __future__ import annotations

import torch

from ..layers import Spectra, is_attn_mlp_weight, iterate, mean_delta, svd, top_singular_values, write
from ..params import Param, ParameterError
from ..registry import MergeMethod, MergeResult, register
from .tsvm import tables_param

OFFICIAL = {8: (2.0, 0.12), 14: (1.5, 0.16), 20: (1.9, 0.32)}  # T → (λ, ρ), configs/CART/ViT-b-32_T_CART.yaml


class AutoFloat(Param):
    """A float parameter that also takes "auto" (a default that depends on the number of tasks)."""

    def _scalar(self, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name}: expected a number or 'auto', got {value!r}") from None
        if number != number or isinstance(value, bool):
            raise ParameterError(f"{self.name}: expected a number or 'auto', got {value!r}")
        if self.low is not None and number < self.low:
            raise ParameterError(f"{self.name}: {number} is below the minimum {self.low}")
        if self.high is not None and number > self.high:
            raise ParameterError(f"{self.name}: {number} is above the maximum {self.high}")
        return number


def official_defaults(T: int) -> tuple[float, float]:
    return OFFICIAL[min(OFFICIAL, key=lambda n: (abs(n - T), n))]


def resolved(params: dict, T: int) -> tuple[float, float]:
    lam, rho = official_defaults(T)
    return (lam if params["lam"] == "auto" else params["lam"],
            rho if params["rank_ratio"] == "auto" else params["rank_ratio"])


def rank(rho: float, r: int) -> int:
    if rho == 0.0:
        return 0
    if rho == 1.0:
        return r
    return max(1, int(rho * r))


def run(space, params, progress, context=None) -> MergeResult:
    lam, rho = resolved(params, space.T)
    delta = mean_delta(space)
    spectra = Spectra()
    centred_names = [f"{t} (centred)" for t in space.task_names]
    for entries, x in iterate(space, is_attn_mlp_weight, progress, "centre and truncate"):
        x = x.to(torch.float64)
        mean = x.mean(1)
        k = rank(rho, min(x.shape[-2:]))
        u, s, vh = svd(x - mean[:, None], k)
        low = ((u * s[..., None, :k]) @ vh).sum(1)
        merged = mean + lam * low
        write(delta, entries, merged)
        if params["tables"]:
            spectra.add(entries, centred_names, s)
            spectra.add(entries, ["merged"], top_singular_values(merged[:, None]))
    info = {"lam": lam, "rank_ratio": rho}
    return MergeResult("cart", params, delta, tables={"spectra": spectra.table()} if params["tables"] else {},
                       info=info)


METHOD = register(MergeMethod(
    "cart", "CART (centred, rank-reduced)",
    "Start from the plain average of the fine-tunes, keep only the few strongest directions of each model's "
    "difference from that average, and add them back with a coefficient.",
    "Choi et al., Revisiting Weight Averaging for Model Merging, arXiv 2412.12153 (2024)",
    (AutoFloat("lam", str, "auto", "λ: θ = θavg + λ Σt SVD_k(τ̄t); 'auto' = the official value for T "
                                   "(8: 2.0, 14: 1.5, 20: 1.9; nearest T)", low=0.0, high=5.0),
     AutoFloat("rank_ratio", str, "auto", "ρ: keep k = int(ρ·rank) directions of each centred matrix; 'auto' = "
                                          "the official value for T (8: 0.12, 14: 0.16, 20: 0.32; nearest T)",
               low=0.0, high=1.0),
     tables_param()), run))
