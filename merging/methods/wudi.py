"""WUDI-Merging (Cheng et al., Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via
Task Vectors, ICML 2025), following the official ViT code (nathanielyvo/WUDI-Merging, vit/wudi_main.py
``get_redundant_task_vector``).

Per weight matrix, τm starts at Σt τt and minimises, with Adam (lr 1e-5, weight decay 0, 300 iterations),
  L(τm) = Σt ‖(τm − τt) τtᵀ‖²_F / ‖τt‖²_F;   θ = θ0 + α Δ with α = 1 (the code's ``scaling_coef``).
Keys (``keys="official"``): only attention and MLP weights (``attn.in_proj_weight``, ``attn.out_proj.weight``,
``mlp.c_fc.weight``, ``mlp.c_proj.weight``); every other tensor stays at θ0 (Δ = 0), since the code's task vector
holds only those keys and loads non-strictly.  ``keys="all_2d"`` is FusionBench's variant: every 2-D tensor (not
``text_projection``) is optimised and the rest averaged; FusionBench runs 400 iterations (set ``iterations``).

The gradient is computed in closed form, ∇L = 2 (τm A − B) with A = Σt τtᵀ τt / ‖τt‖², B = Σt τt τtᵀ τt / ‖τt‖²
(precomputed once per matrix), instead of by autograd through the T products: the same gradient (up to float
rounding) for an (m×n)(n×n) product per step instead of 3·T (m×n)(n×m) ones.  Adam is torch.optim.Adam, as in the
code; being element-wise, it gives the same steps when same-shape matrices share one parameter tensor.  A zero
task matrix (‖τt‖ = 0, where the code divides by zero) contributes nothing.

``solver="exact"`` (not in the official code): L is a convex quadratic, minimised where ∇L = 0, i.e. at
τm* = B A⁺ (float64 pseudo-inverse, numerically null directions cut; unique when A is invertible, as it is for
full-rank task matrices).  Gradient descent from Σt τt converges there, since every τt's rows lie in the range
of A.  The official lr 1e-5 and 300 steps are matched to ViT-B/32's weight scale (on a model whose task vectors
are larger they barely move τm away from Σt τt); the exact minimiser has no lr, no iterations and no scale, and
is what the Adam steps approach.

Tables: ``spectra`` (top-64 σ per matrix of each τt and of the merged τm).
"""
from __future__ import annotations

import torch

from ..layers import (NULL, Spectra, batches, is_attn_mlp_weight, is_matrix, mean_delta, task_matrices,
                      top_singular_values, write)
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from .tsvm import tables_param

KEYS = {"official": is_attn_mlp_weight, "all_2d": is_matrix}


def gradient_terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (L, n, n), B (L, m, n)) for task matrices x (L, T, m, n): ∇L(τm) = 2 (τm A − B); one task at a time."""
    L, T, m, n = x.shape
    A = x.new_zeros((L, n, n))
    B = x.new_zeros((L, m, n))
    for t in range(T):
        xt = x[:, t]
        norms = xt.square().sum((-2, -1))
        weight = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))[:, None, None]
        gram = xt.mT @ xt
        A += weight * gram
        B += weight * (xt @ gram if n <= m else (xt @ xt.mT) @ xt)
    return A, B


def optimise(x: torch.Tensor, iterations: int, lr: float, progress=None) -> torch.Tensor:
    """τm (L, m, n) after ``iterations`` Adam steps from Σt τt; ``progress(fraction)`` every 10 steps."""
    A, B = gradient_terms(x)
    merged = torch.nn.Parameter(x.sum(1))
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    with torch.no_grad():
        for i in range(iterations):
            if progress is not None and i % 10 == 0:
                progress(i / iterations)
            merged.grad = torch.baddbmm(B, merged, A, beta=-2.0, alpha=2.0)
            optimizer.step()
    return merged.detach()


def exact(x: torch.Tensor) -> torch.Tensor:
    """τm* = B A⁺ (L, m, n), the minimiser of L, in float64 (returned as float32).  Eigenvalues of A at or below
    NULL²·λmax (σ / σ1 ≤ NULL: float32 rounding of a rank-deficient τt, see :func:`merging.layers.svd`) count as
    zero, so that rounding noise is not inverted."""
    A, B = gradient_terms(x.to(torch.float64))
    return (B @ torch.linalg.pinv(A, rtol=NULL ** 2, hermitian=True)).to(torch.float32)


def run(space, params, progress, context=None) -> MergeResult:
    select = KEYS[params["keys"]]
    delta = mean_delta(space) if params["keys"] == "all_2d" else torch.zeros_like(space.theta0)
    spectra = Spectra()
    groups = batches(space.index, select, space.T)
    for g, entries in enumerate(groups):
        x = task_matrices(space, entries)
        stage = f"WUDI {entries[0].name}" + (f" (+{len(entries) - 1})" if len(entries) > 1 else "")
        if params["solver"] == "exact":
            progress(g / len(groups), stage)
            merged = exact(x)
        else:
            merged = optimise(x, params["iterations"], params["lr"],
                              lambda f, g=g: progress((g + f) / len(groups), stage))
        write(delta, entries, merged)
        if params["tables"]:
            spectra.add(entries, space.task_names, top_singular_values(x))
            spectra.add(entries, ["merged"], top_singular_values(params["lam"] * merged[:, None]))
    delta.mul_(params["lam"])
    return MergeResult("wudi", params, delta, tables={"spectra": spectra.table()} if params["tables"] else {})


METHOD = register(MergeMethod(
    "wudi", "WUDI-Merging",
    "For every weight matrix, find (data-free: by gradient descent, or exactly) one merged matrix that responds "
    "to each task's own input directions as that task's fine-tune does.",
    "Cheng et al., Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via Task "
    "Vectors, ICML 2025",
    (Param("solver", str, "adam", "adam: the official Adam iterations from Σt τt; exact: the closed-form minimiser "
           "of the same objective (no lr, no iterations; not in the official code)", choices=("adam", "exact")),
     Param("iterations", int, 300, "Adam iterations per matrix (official 300; FusionBench 400)", low=0,
           high=10000, when=("solver", "adam")),
     Param("lr", float, 1e-5, "Adam learning rate (official 1e-5)", low=0.0, high=1.0, when=("solver", "adam")),
     Param("keys", str, "official", "official: attention and MLP weights only, other tensors stay θ0; all_2d: "
           "FusionBench's variant, every 2-D tensor, other tensors averaged", choices=tuple(KEYS)),
     Param("lam", float, 1.0, "scaling α: θ = θ0 + α·Δ (official 1, no search)", low=0.0, high=3.0, step=0.05),
     tables_param()), run))
