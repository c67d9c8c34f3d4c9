"""TSV-M, Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025), following the official code
(AntoAndGar/task_singular_vectors, src/utils/TSVM_utils.py ``compute_and_sum_svd_mem_reduction``).

Per matrix (2-D, not ``text_projection``), τt = Ut Σt Vtᵀ, r = min(m, n), k = int(r · 1/T):
  Û = [U1[:, :k] … UT[:, :k]], σ̂ = [σ1[:k] … σT[:k]], V̂ = [V1ᵀ[:k]; …; VTᵀ[:k]];
  Û⊥ = P Qᵀ for Û = P S Qᵀ (polar factor; likewise V̂⊥);  Δ = α · Û⊥ diag(σ̂) V̂⊥.
Every other tensor: Δ = α · (1/T) Σt τt.  α is chosen on val from linspace(0, 3, 31)[1:] as in the code.

Where the code differs from the paper's description and this follows the code:
- the code lays the T k-blocks into zero (m, r) / (r, n) matrices and orthogonalises those; the polar factor of
  [Û, 0] is [Û⊥, ·] and the extra columns meet zero singular values, so Δ is the same as orthogonalising the
  compact (m, T·k) stack, which is what is computed here (T·k ≤ r, less work).
- k = int(r · (1/T)) in floating point, exactly as the code writes it.
- the code scales the whole merged vector by α, averaged tensors included; so does this.

Tables: ``spectra`` (top-64 σ per matrix of each τt and of the merge: the merge's singular values are exactly
α·σ̂, since Û⊥ and V̂⊥ have orthonormal columns/rows), ``interference`` (per matrix, the T×T pairwise Singular
Task Interference STI({τi, τj}) = ‖(ÛᵀÛ − I) diag(σ̂) (V̂V̂ᵀ − I)‖₁ (entry-wise L1) over the two tasks' k-blocks;
for two tasks it is ‖Uiᵀ Uj Σj Vjᵀ Vi‖₁ + ‖Ujᵀ Ui Σi Viᵀ Vj‖₁, the off-diagonal blocks), and
``interference_by_depth`` (per block: the paper's STI over all T tasks, mean over the block's matrices, and the
mean pairwise STI).  STI is measured on the un-orthogonalised stacks, as in the paper (eq. 3).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..layers import Spectra, descending, is_matrix, iterate, mean_delta, polar, svd, write
from ..params import Param
from ..registry import MergeMethod, MergeResult, lam_param, register

ALPHA_GRID = tuple(round(float(v), 2) for v in np.linspace(0.0, 3.0, 31)[1:])  # the TSV / Iso code's grid


def alpha_param() -> Param:
    return lam_param(1.0, "scaling α: θ = θ0 + α·Δ (chosen on val from linspace(0, 3, 31)[1:] in the official "
                          "code; FusionBench's default 1.0)", grid=ALPHA_GRID)


def tables_param() -> Param:
    return Param("tables", bool, True, "return the per-layer singular value / interference tables for the figures")


def task_singular_vectors(x: torch.Tensor):
    """(Û, σ̂, V̂) of a batch of task matrices x (L, T, m, n): the leading k = int(r/T) triplets of each task,
    concatenated task by task; also the full singular values (L, T, r)."""
    L, T, m, n = x.shape
    k = int(min(m, n) * (1 / T))
    u, s, vh = svd(x, k)
    return u.permute(0, 2, 1, 3).reshape(L, m, T * k), s[..., :k].reshape(L, T * k), vh.reshape(L, T * k, n), s


def interference(U: torch.Tensor, sigma: torch.Tensor, V: torch.Tensor, T: int):
    """(STI over all tasks (L,), pairwise STI (L, T, T)) of the stacks Û (L, m, Tk), σ̂ (L, Tk), V̂ (L, Tk, n)."""
    L, Tk = sigma.shape
    k = Tk // T
    eye = torch.eye(Tk, dtype=U.dtype, device=U.device)
    gu, gv = U.mT @ U - eye, V @ V.mT - eye
    total = ((gu * sigma[:, None, :]) @ gv).abs().sum((-2, -1))
    gu4, gv4 = gu.reshape(L, T, k, T, k), gv.reshape(L, T, k, T, k)
    blocks = torch.einsum("liajb,ljbic->lijac", gu4 * sigma.reshape(L, 1, 1, T, k), gv4)  # Uiᵀ Uj Σj Vjᵀ Vi
    one_way = blocks.abs().sum((-2, -1))
    pair = one_way + one_way.mT
    pair.diagonal(dim1=-2, dim2=-1).zero_()
    return total, pair


def run(space, params, progress, context=None) -> MergeResult:
    alpha, T, names = params["lam"], space.T, space.task_names
    delta = mean_delta(space)
    spectra, pairs, totals = Spectra(), [], []
    for entries, x in iterate(space, is_matrix, progress, "task singular vectors"):
        U, sigma, V, s = task_singular_vectors(x)
        write(delta, entries, (polar(U) * sigma[:, None, :]) @ polar(V))
        if params["tables"]:
            spectra.add(entries, names, s)
            spectra.add(entries, ["merged"], descending(alpha * sigma)[:, None, :])
            if sigma.shape[-1]:
                total, pair = interference(U, sigma, V, T)
            else:  # k = 0 (T > r): nothing is kept, nothing interferes
                total, pair = torch.zeros(len(entries)), torch.zeros(len(entries), T, T)
            totals += [(e.name, e.layer, float(v)) for e, v in zip(entries, total)]
            pairs += [(e, p.cpu().numpy()) for e, p in zip(entries, pair)]
    delta.mul_(alpha)
    tables = {}
    if params["tables"]:
        tables = {"spectra": spectra.table(), **interference_tables(pairs, totals, names, space.index.layer_order())}
    return MergeResult("tsvm", params, delta, tables=tables)


def interference_tables(pairs, totals, names, layer_order) -> dict[str, pd.DataFrame]:
    T = len(names)
    long = pd.DataFrame([{"layer": e.name, "block": e.layer, "task_i": names[i], "task_j": names[j],
                          "sti": float(p[i, j])} for e, p in pairs for i in range(T) for j in range(T)])
    whole = pd.DataFrame(totals, columns=["layer", "block", "sti"])
    off = long[long["task_i"] != long["task_j"]]
    depth = whole.groupby("block", sort=False)["sti"].mean().to_frame("sti")
    depth["pairwise"] = off.groupby("block", sort=False)["sti"].mean() if len(off) else 0.0
    depth = depth.reindex([b for b in layer_order if b in depth.index]).reset_index()
    depth.insert(0, "depth", range(len(depth)))
    return {"interference": long, "interference_by_depth": depth}


METHOD = register(MergeMethod(
    "tsvm", "TSV-M (Task Singular Vectors)",
    "Keep each task's strongest 1/T directions of every weight matrix, make the directions of different tasks "
    "orthogonal so they stop interfering, and add them up.",
    "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, CVPR 2025",
    (alpha_param(), tables_param()), run))
