"""The per-matrix view of a task-vector space, for methods that act on whole 2-D weights (the SVD family).

The :class:`~merging.param_index.ParamIndex` knows every tensor's shape and offset in the flat (P,) vector; this
module cuts the T task matrices of one weight out of the (T, P) stack, groups same-shape matrices into batches
for batched ``torch.linalg`` calls on the space's device, and writes merged matrices back into a flat Δ.  A
batch holds at most T × (the largest selected matrix) elements, so memory beyond the stack stays
O(T × largest matrix) (a small constant times that, for the SVD factors).

Which tensors are matrices follows the official codes (TSV-M, Iso-C/CTS): every 2-D tensor except keys containing
``text_projection``; every other tensor ("other tensors": biases, norms, embeddings that are not 2-D, convolution
kernels) is merged by the plain task average (1/T) Σt τt.  WUDI and CART restrict the matrix path to the
attention and MLP weights (:func:`is_attn_mlp_weight`).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .param_index import ParamEntry, ParamIndex

EXCLUDED = "text_projection"  # the official codes keep it off the matrix path
ATTN_MLP_KINDS = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
TOP = 64  # singular values per matrix and model kept in the spectra tables
NULL = 1e-6  # σ / σ1 at or below which a singular direction counts as numerically null (see svd)
BUDGET: int | None = None  # elements per batch; None = T × the largest selected matrix (tests change it)

Select = Callable[[ParamEntry], bool]


def is_matrix(entry: ParamEntry) -> bool:
    """A 2-D tensor that is not ``text_projection`` (TSV-M, Iso-C, Iso-CTS; FusionBench's WUDI)."""
    return len(entry.shape) == 2 and EXCLUDED not in entry.name


def is_attn_mlp_weight(entry: ParamEntry) -> bool:
    """An attention or MLP weight matrix.  For open_clip keys these are exactly WUDI's official keys
    (``attn.in_proj_weight``, ``attn.out_proj.weight``, ``mlp.c_fc.weight``, ``mlp.c_proj.weight``) and CART's
    filter ("attn" or "mlp" in the key, neither "ln" nor "bias"); Hugging Face CLIP keys map to the same kinds."""
    return is_matrix(entry) and entry.kind in ATTN_MLP_KINDS and "bias" not in entry.name.rsplit(".", 1)[-1]


def batches(index: ParamIndex, select: Select, T: int, budget: int | None = None) -> list[list[ParamEntry]]:
    """Selected entries grouped by shape (in index order) into batches of at most ``budget`` elements over the
    T tasks (default: T × the largest selected matrix, i.e. one largest matrix per batch)."""
    chosen = [e for e in index.entries if select(e)]
    if not chosen:
        return []
    budget = budget or BUDGET or T * max(e.numel for e in chosen)
    groups: dict[tuple[int, ...], list[ParamEntry]] = {}
    for e in chosen:
        groups.setdefault(e.shape, []).append(e)
    out = []
    for shape, entries in groups.items():
        size = max(1, budget // (T * entries[0].numel))
        out.extend(entries[i:i + size] for i in range(0, len(entries), size))
    return out


def task_matrices(space, entries: Sequence[ParamEntry]) -> torch.Tensor:
    """(L, T, m, n) float32: the T task matrices of each entry (a copy; same shape for every entry)."""
    rows = torch.tensor(space.rows, device=space.device)
    m, n = entries[0].shape
    out = torch.empty((len(entries), space.T, m, n), dtype=torch.float32, device=space.device)
    for i, e in enumerate(entries):
        out[i] = space.stack[:, e.slice].index_select(0, rows).reshape(space.T, m, n)
    return out


def write(delta: torch.Tensor, entries: Sequence[ParamEntry], matrices: torch.Tensor) -> None:
    """Store (L, m, n) merged matrices into the flat Δ."""
    for e, matrix in zip(entries, matrices):
        delta[e.slice] = matrix.reshape(-1)


def mean_delta(space) -> torch.Tensor:
    """A new flat Δ = (1/T) Σt τt: the official codes' merge of every tensor off the matrix path (the
    matrix entries are then overwritten by the method)."""
    return space.sum_tau().div_(space.T)


def iterate(space, select: Select, progress, stage: str) -> Iterator[tuple[list[ParamEntry], torch.Tensor]]:
    """(entries, (L, T, m, n) task matrices) per batch, reporting progress and honouring cancellation."""
    todo = batches(space.index, select, space.T)
    for i, entries in enumerate(todo):
        progress(i / len(todo), f"{stage} {entries[0].name}" + (f" (+{len(entries) - 1})" if len(entries) > 1
                                                                    else ""))
        yield entries, task_matrices(space, entries)


def svd(x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leading ``k`` (default all r = min(m, n)) singular triplets of a batch x (..., m, n) in float64:
    U (..., m, k), S (..., r) (all singular values, decreasing), Vh (..., k, n).

    Computed from the eigendecomposition of the smaller Gram matrix in float64 (``torch.linalg.eigh``; U = X V / σ),
    5–8× faster than ``torch.linalg.svd`` on CPU and more accurate than the float32 SVD the official codes run
    for every σ above ~1e-8·σ1.  When the k requested triplets reach the numerical null space
    (σ_k ≤ NULL·σ1: a rank-deficient matrix, where those vectors are arbitrary), the batch falls back to
    ``torch.linalg.svd`` in float64, which completes them orthonormally as the official codes' SVD does."""
    if x.shape[-2] < x.shape[-1]:
        u, s, vh = svd(x.mT, k)
        return vh.mT, s, u.mT
    r = x.shape[-1]
    k = r if k is None else min(k, r)
    x = x.to(torch.float64)
    values, vectors = torch.linalg.eigh(x.mT @ x)
    s = values.flip(-1).clamp_min(0).sqrt()
    if k and bool((s[..., k - 1] <= NULL * s[..., 0]).any()):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return u[..., :k], s, vh[..., :k, :]
    v = vectors.flip(-1)[..., :k]
    return (x @ v) / s[..., None, :k], s, v.mT


def polar(x: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of x = P S Qᵀ (float64; the nearest matrix with orthonormal columns or
    rows, the orthogonal Procrustes solution): x (xᵀx)^(-1/2) from a float64 eigendecomposition, or from the SVD
    when x is numerically rank-deficient."""
    if x.shape[-2] < x.shape[-1]:
        return polar(x.mT).mT
    x = x.to(torch.float64)
    if x.shape[-1] == 0:
        return x
    values, vectors = torch.linalg.eigh(x.mT @ x)
    if bool((values[..., 0] <= NULL ** 2 * values[..., -1]).any()):
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        return u @ vh
    return x @ ((vectors * values.rsqrt()[..., None, :]) @ vectors.mT)


def top_singular_values(x: torch.Tensor, top: int = TOP) -> torch.Tensor:
    """The ``top`` largest singular values of each matrix in (..., m, n), for the figures only: from the
    eigenvalues of the smaller Gram matrix in float64 (accurate to ~1e-8·σ1, far cheaper than an SVD)."""
    x = x.to(torch.float64)
    gram = x.mT @ x if x.shape[-2] >= x.shape[-1] else x @ x.mT
    values = torch.linalg.eigvalsh(gram).flip(-1)[..., :top]
    return values.clamp_min(0).sqrt().to(torch.float32)


class Spectra:
    """Collects the leading singular values per matrix and series into one long table
    (layer = tensor name, block, ``series`` column, index (0-based), sigma)."""

    def __init__(self, series: str = "model", top: int = TOP):
        self.series, self.top, self.parts = series, top, []

    def add(self, entries: Sequence[ParamEntry], names: Sequence[str], sigma: torch.Tensor) -> None:
        """``sigma``: (L, len(names), r) singular values, each row sorted in decreasing order."""
        values = sigma[..., : self.top].detach().cpu().numpy()
        L, M, k = values.shape
        self.parts.append(pd.DataFrame({
            "layer": np.repeat([e.name for e in entries], M * k),
            "block": np.repeat([e.layer for e in entries], M * k),
            self.series: np.tile(np.repeat(list(names), k), L),
            "index": np.tile(np.arange(k), L * M),
            "sigma": values.reshape(-1).astype(np.float64)}))

    def table(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=["layer", "block", self.series, "index", "sigma"])
        return pd.concat(self.parts, ignore_index=True)


def descending(values: torch.Tensor) -> torch.Tensor:
    return values.sort(dim=-1, descending=True).values
