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

Sweeps and λ selection over a (λ, ρ) grid (``LAM_GRID`` × ``RANK_GRID``, 30 points; the official code has no
grid) go through :func:`grid`: each matrix is decomposed once for every point.

Tables: ``spectra`` (top-64 σ per matrix of each centred τ̄t, labelled "<task> (centred)", and of the merged Δ).
"""
from __future__ import annotations


import torch

from ..layers import Spectra, batches, is_attn_mlp_weight, iterate, mean_delta, svd, top_singular_values, write
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from .tsvm import tables_param

OFFICIAL = {8: (2.0, 0.12), 14: (1.5, 0.16), 20: (1.9, 0.32)}  # T → (λ, ρ), configs/CART/ViT-b-32_T_CART.yaml
LAM_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # the code ships no search grid: these span its configs
RANK_GRID = (0.04, 0.08, 0.12, 0.16, 0.32)


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


def low_rank_parts(space, rhos, progress, tables: bool = False):
    """(mean, {ρ: low}, spectra): mean = θavg − θ0 = (1/T) Σt τt; low_ρ = Σt SVD_k(τ̄t) with k = rank(ρ, r) on the
    attention / MLP matrices, zero elsewhere; both flat float32.  One SVD per matrix batch at the largest k of
    ``rhos``: SVD_k is its first k triplets, so a grid over ρ decomposes each matrix once.  Spectra (top σ of
    every τ̄t) only with ``tables``."""
    mean_flat = mean_delta(space)
    lows = {rho: torch.zeros_like(mean_flat) for rho in dict.fromkeys(rhos)}
    spectra = Spectra()
    centred_names = [f"{t} (centred)" for t in space.task_names]
    for entries, x in iterate(space, is_attn_mlp_weight, progress, "centre and truncate"):
        x = x.to(torch.float64)
        mean = x.mean(1)
        r = min(x.shape[-2:])
        u, s, vh = svd(x - mean[:, None], max(rank(rho, r) for rho in lows))
        for rho, low in lows.items():
            k = rank(rho, r)
            write(low, entries, ((u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]).sum(1))
        write(mean_flat, entries, mean)
        if tables:
            spectra.add(entries, centred_names, s)
    return mean_flat, lows, spectra


def run(space, params, progress, context=None) -> MergeResult:
    lam, rho = resolved(params, space.T)
    delta, lows, spectra = low_rank_parts(space, [rho], progress, params["tables"])
    delta.add_(lows.pop(rho), alpha=lam)  # θ − θ0 = mean + λ·low, as grid() computes it
    info = {"lam": lam, "rank_ratio": rho}
    if not params["tables"]:
        return MergeResult("cart", params, delta, info=info)
    for entries in batches(space.index, is_attn_mlp_weight, space.T):
        merged = torch.stack([delta[e.slice].reshape(e.shape) for e in entries])[:, None]
        spectra.add(entries, ["merged"], top_singular_values(merged))
    return MergeResult("cart", params, delta, tables={"spectra": spectra.table()}, info=info)


def grid(space, points, progress):
    """:func:`run` for each resolved parameter dict in ``points`` (a sweep or a λ selection), lazily, sharing the
    work: one pass of SVDs for all points (:func:`low_rank_parts` at the largest k), then mean + λ·low_ρ per
    point — the same arithmetic as :func:`run`, so equal to it up to the float rounding of an SVD computed for
    a larger k.  Holds (1 + number of distinct ρ) flat vectors; the results carry no figure tables."""
    chosen = [resolved(p, space.T) for p in points]
    mean, lows, _ = low_rank_parts(space, [rho for _, rho in chosen], progress)
    for params, (lam, rho) in zip(points, chosen):
        yield MergeResult("cart", params, torch.add(mean, lows[rho], alpha=lam),
                          info={"lam": lam, "rank_ratio": rho})


METHOD = register(MergeMethod(
    "cart", "CART (centred, rank-reduced)",
    "Start from the plain average of the fine-tunes, keep only the few strongest directions of each model's "
    "difference from that average, and add them back with a coefficient.",
    "Choi et al., Revisiting Weight Averaging for Model Merging, arXiv 2412.12153 (2024)",
    (Param("lam", float, "auto", "λ: θ = θavg + λ Σt SVD_k(τ̄t); 'auto' = the official value for T "
                                 "(8: 2.0, 14: 1.5, 20: 1.9; nearest T)", low=0.0, high=5.0, auto=True),
     Param("rank_ratio", float, "auto", "ρ: keep k = int(ρ·rank) directions of each centred matrix; 'auto' = "
                                        "the official value for T (8: 0.12, 14: 0.16, 20: 0.32; nearest T)",
           low=0.0, high=1.0, auto=True, grid=RANK_GRID),
     tables_param()), run, grid=grid))
