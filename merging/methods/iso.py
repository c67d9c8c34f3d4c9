"""Iso-C and Iso-CTS (Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces, ICML 2025), following the official code (danielm1405/iso-merging, src/utils/iso.py).

Per matrix (2-D, not ``text_projection``), r = min(m, n):
- Iso-C: S = Σt τt = U Σ Vᵀ;  Δ = α · mean(σ) · U Vᵀ (every singular value replaced by their mean over all r).
- Iso-CTS: k_c = int(r · f) (f = common_space_fraction, 0.8), then k_c = r − round((r − k_c)/T) · T so that the
  task-specific part splits evenly, q = (r − k_c)/T per task.  Common subspace: the top k_c triplets of SVD(S);
  task t: the top q triplets of τt − Uc Ucᵀ τt.  The T task blocks then the common block are concatenated
  (r columns in all), U and V orthogonalised by their polar factors, every singular value set to the mean of
  the concatenated σ:  Δ = α · mean(σ) · U⊥ V⊥.
Every other tensor: Δ = α · (1/T) Σt τt (the code averages them and scales the whole vector by α).

Following the code: the mean runs over all r singular values, zeros of a rank-deficient S included (so Iso-C of
one rank-1 τ = σ u vᵀ has every singular value σ/r: Δ v = (σ/r) u, plus σ/r on directions orthogonal to u, v).
Python's ``round`` (half to even) as in the code.  One guard the code lacks: when round() would ask for more
task-specific directions than r (only for T > r with f near 0), q is capped at r // T instead of failing.

Tables: ``spectra`` (top-64 σ per matrix of each τt and of the merge, all equal to α·mean σ) and ``flattening``
(per matrix, the spectrum before flattening — of S for Iso-C, the concatenated σ for Iso-CTS — and after).
"""
from __future__ import annotations

import torch

from ..layers import Spectra, descending, is_matrix, iterate, mean_delta, polar, svd, top_singular_values, write
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from .tsvm import alpha_param, tables_param


def iso_c(x: torch.Tensor):
    """(Δ before α, spectrum before flattening) for task matrices x (L, T, m, n)."""
    u, s, vh = svd(x.sum(1))
    return s.mean(-1)[:, None, None] * (u @ vh), s


def common_space_size(r: int, T: int, fraction: float) -> tuple[int, int]:
    """(k_c, q): common directions and task-specific directions per task, as the official code computes them."""
    common = int(r * fraction)
    per_task = min(round((r - common) / T), r // T)
    return r - per_task * T, per_task


def iso_cts(x: torch.Tensor, fraction: float):
    L, T, m, n = x.shape
    common, per_task = common_space_size(min(m, n), T, fraction)
    x = x.to(torch.float64)
    uc, s, vc = svd(x.sum(1), common)
    us, ss, vs = [], [], []
    if per_task:
        ut, st, vt = svd(x - uc[:, None] @ (uc.mT[:, None] @ x), per_task)
        us.append(ut.permute(0, 2, 1, 3).reshape(L, m, T * per_task))
        ss.append(st[..., :per_task].reshape(L, T * per_task))
        vs.append(vt.reshape(L, T * per_task, n))
    U = torch.cat(us + [uc], -1)
    sigma = torch.cat(ss + [s[..., :common]], -1)
    V = torch.cat(vs + [vc], -2)
    return sigma.mean(-1)[:, None, None] * (polar(U) @ polar(V)), sigma


def runner(name: str, merge):
    def run(space, params, progress, context=None) -> MergeResult:
        alpha, names = params["lam"], space.task_names
        delta = mean_delta(space)
        spectra, flattening = Spectra(), Spectra("stage")
        for entries, x in iterate(space, is_matrix, progress, name):
            merged, before = merge(x, params)
            write(delta, entries, merged)
            if params["tables"]:
                r = before.shape[-1]
                after = (alpha * before.mean(-1))[:, None, None].expand(-1, 1, r)
                spectra.add(entries, names, top_singular_values(x))
                spectra.add(entries, ["merged"], after)
                flattening.add(entries, ["before"], descending(before)[:, None, :])
                flattening.add(entries, ["after"], after)
        delta.mul_(alpha)
        tables = {"spectra": spectra.table(), "flattening": flattening.table()} if params["tables"] else {}
        return MergeResult(name, params, delta, tables=tables)
    return run


PAPER = ("Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces, "
         "ICML 2025")

ISO_C = register(MergeMethod(
    "iso_c", "Iso-C (isotropic merging)",
    "Add the task vectors, then give every direction of each weight matrix the same strength, so that no "
    "task's weaker directions are drowned out by the dominant ones.",
    PAPER, (alpha_param(), tables_param()), runner("iso_c", lambda x, p: iso_c(x))))

ISO_CTS = register(MergeMethod(
    "iso_cts", "Iso-CTS (isotropic, common + task-specific)",
    "Like Iso-C, but keep most directions from the shared sum and reserve the rest for each task's own "
    "directions that the sum misses.",
    PAPER,
    (alpha_param(),
     Param("common_space_fraction", float, 0.8, "fraction of each matrix's rank given to the common subspace "
           "(the rest is split evenly among the tasks)", low=0.0, high=1.0, step=0.05),
     tables_param()),
    runner("iso_cts", lambda x, p: iso_cts(x, p["common_space_fraction"]))))
