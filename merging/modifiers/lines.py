"""LiNeS (Wang et al., ICLR 2025, "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model
Merging"), following the official code (github wang-kee/LiNeS, src/eval/eval.py ``LiNeS_scaling`` and
src/eval/aggregation.py).

Every tensor of residual block l (0-based, L blocks, from :class:`merging.param_index.ParamIndex` layers
``block.NN``) is scaled by α + β·l/(L − 1), every tensor outside the blocks (embeddings, ln_pre/ln_post, proj) by
α: δ' = LiNeS(δ).  Parametrisation of the code: β is the *difference* between the last and the first block's
scale (the paper writes the last block's scale, β_paper = α + β_code), so α = 1, β = 0 is the identity.  Modes:

* ``multi-task`` (default): α = (‖Σt τt‖₁ / ‖δ‖₁) / T with L1 norms over the whole flat vector (the code's
  ``norm_summed_tvs / norm_mtv / num_tasks``), β given (the code searches linspace(0, 1, 11)[1:] = 0.1…1.0 on
  validation data, 0.1…1.5 for TIES; 0.5 without a search).  The code applies LiNeS *instead of* the method's λ
  to the unscaled merged vector; α·δ does not depend on the method's λ, but the β term does (it scales with
  λ), so run the method with λ = 1 to reproduce the code exactly.
* ``single-task``: α = λ (the ``alpha`` parameter), β = 1 − λ (the code's grid 1.0, 0.9, …, 0.0).
* ``manual``: α and β as given.

L is the number of blocks in the index (the code hard-codes 12, or 24 for ViT-L/14); with one block its scale
is α.  Per-task results (TALL, EMR): the scaling is applied to the shared delta, which equals scaling every
task's reconstruction θ̂t − θ0 (a per-tensor scale commutes with masks and rescalers).
"""
from __future__ import annotations

import numpy as np
import torch

from ..chunks import CHUNK, map_chunks, map_items, use_numpy
from ..params import Param
from ..registry import Modifier, register_modifier

BETA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TIES_BETA_GRID = BETA_GRID + (1.1, 1.2, 1.3, 1.4, 1.5)  # the code's arange(0.1, 1.6, 0.1) for TIES
SINGLE_TASK_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
PARAMS = (
    Param("mode", str, "multi-task", "multi-task: α = ‖Σt τt‖₁/‖δ‖₁/T, β given; single-task: α = alpha, "
          "β = 1 − alpha; manual: α = alpha, β = beta", choices=("multi-task", "single-task", "manual")),
    Param("alpha", float, 1.0, "α: scale outside the blocks and of block 0 (single-task and manual modes)",
          low=0.0, high=10.0, step=0.05, grid=SINGLE_TASK_GRID, when=("mode", ("single-task", "manual"))),
    Param("beta", float, 0.5, "β: block l of L is scaled by α + β·l/(L − 1) (multi-task and manual modes; "
          "official grid 0.1…1.0, 0.1…1.5 for TIES)", low=-10.0, high=10.0, step=0.05, grid=BETA_GRID,
          when=("mode", ("multi-task", "manual"))),
)


def coefficients(space, delta: torch.Tensor, params) -> tuple[float, float]:
    """(α, β) for a merged vector ``delta`` under ``params`` (see the module docstring)."""
    if params["mode"] == "single-task":
        return params["alpha"], 1.0 - params["alpha"]
    if params["mode"] == "manual":
        return params["alpha"], params["beta"]
    summed, merged = l1_norms(space, delta)
    return (summed / merged / space.T if merged > 0 else 0.0), params["beta"]


def l1_norms(space, delta: torch.Tensor) -> tuple[float, float]:
    """(‖Σt τt‖₁, ‖δ‖₁), accumulated in float64.  On CPU one chunked pass: Σt τt is summed chunk by chunk in
    task order (the bits :meth:`~merging.space.TaskVectorSpace.sum_tau` gives) and never stored; on CUDA
    whole-vector torch ops."""
    if not (use_numpy(space.stack) and use_numpy(delta)):
        return (float(torch.linalg.vector_norm(space.sum_tau(), 1, dtype=torch.float64)),
                float(torch.linalg.vector_norm(delta, 1, dtype=torch.float64)))
    stack, rows, merged = space.stack.numpy(), space.rows, delta.numpy()

    def body(a: int, b: int) -> tuple[float, float]:
        part = stack[rows[0], a:b].copy()
        for r in rows[1:]:
            part += stack[r, a:b]
        return (float(np.abs(part, out=part).sum(dtype=np.float64)),
                float(np.abs(merged[a:b]).sum(dtype=np.float64)))

    parts = map_chunks(space.P, body, CHUNK)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def entry_scales(index, alpha: float, beta: float) -> list[float]:
    """The scale of every index entry: α + β·l/(L − 1) in block l, α elsewhere."""
    blocks = sorted({e.layer for e in index.entries if e.layer.startswith("block.")})
    depth = {layer: (l / (len(blocks) - 1) if len(blocks) > 1 else 0.0) for l, layer in enumerate(blocks)}
    return [alpha + beta * depth[e.layer] if e.layer in depth else alpha for e in index.entries]


def scale_runs(index, scales) -> list[tuple[int, int, float]]:
    """(start, stop, scale) over the flat vector: adjacent entries with the same scale joined (a block's tensors
    are one run)."""
    runs: list[list] = []
    for entry, scale in zip(index.entries, scales):
        if runs and runs[-1][1] == entry.offset and runs[-1][2] == scale:
            runs[-1][1] = entry.offset + entry.numel
        else:
            runs.append([entry.offset, entry.offset + entry.numel, scale])
    return [tuple(run) for run in runs]


def scale_entries(index, delta: torch.Tensor, scales) -> torch.Tensor:
    """A new vector: every entry's slice of ``delta`` times its scale (on CPU over cache-sized chunks in
    threads)."""
    out = torch.empty_like(delta)
    runs = scale_runs(index, scales)
    if use_numpy(delta):
        src, dst = delta.numpy(), out.numpy()
        pieces = [(a, min(a + CHUNK, stop), scale) for start, stop, scale in runs for a in range(start, stop, CHUNK)]
        map_items(pieces, lambda a, b, scale: np.multiply(src[a:b], np.float32(scale), out=dst[a:b]))
    else:
        for start, stop, scale in runs:
            torch.mul(delta[start:stop], scale, out=out[start:stop])
    return out


def apply(space, result, params) -> torch.Tensor:
    alpha, beta = coefficients(space, result.delta, params)
    result.info.update({"lines_alpha": alpha, "lines_beta": beta})
    return scale_entries(space.index, result.delta, entry_scales(space.index, alpha, beta))


MODIFIER = register_modifier(Modifier(
    "lines", "LiNeS",
    "Scale the merged change layer by layer: little in the first blocks (keeps the pretrained model's general "
    "features), more in the last.",
    "Wang et al., LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging, ICLR 2025",
    PARAMS, apply))
